"""The group dialogs: the member list (who, admin, online, verified or not a contact) and
leaving. The controller decides when; these decide what is said."""

from __future__ import annotations

from ..groups import Group
from ..model import Model
from . import dialogs
from .contacts import OFFLINE, ONLINE, VERIFIED
from .dialogs import Callback, Dialog
from .group_view import member_label


def member_lines(group: Group, model: Model) -> list:
    """One line per member, me first, then by name: online dot, name, role, verification state."""
    me = model.me.get("id") or ""

    def order(member_id: str) -> tuple:
        return (member_id != me, member_label(model, member_id, group.members[member_id].name).casefold())

    lines: list = []
    for member_id in sorted(group.members, key=order):
        member = group.members[member_id]
        contact = model.contacts.get(member_id)
        online = member_id == me or (contact.online if contact is not None else bool(member.online))
        lines.append(("online", ONLINE + " ") if online else ("offline", OFFLINE + " "))
        lines.append(("contact", "me" if member_id == me else member_label(model, member_id, member.name)))
        if member.admin:
            lines.append(("title_dim", " (admin)"))
        if member_id == me:
            pass
        elif contact is None:
            lines.append(("title_dim", f"  not a contact (group peer)\n    {member_id}"))
        elif contact.verified:
            lines.append(("verified", f"  {VERIFIED} verified"))
        else:
            lines.append(("title_dim", f"  not verified: /verify {contact.name}"))
        lines.append("\n")
    return lines


def members(group: Group, model: Model, on_close: Callback) -> Dialog:
    count = len(group.members)
    text = [f"{count} member{'s' if count != 1 else ''} of {group.name}:\n\n", *member_lines(group, model),
            "\nAdmins add with /invite NAME and remove with /kick NAME; anyone can /leave."]
    return dialogs.message(f"Members of {group.name}", text, on_close)


def leave(name: str, on_yes: Callback, on_no: Callback) -> Dialog:
    return dialogs.confirm("Leave group", f"Leave {name}? You will get nothing sent to it after this; "
                           "an admin has to add you again to come back.", "Leave", on_yes, on_no)
