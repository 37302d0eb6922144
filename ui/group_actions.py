"""What the group commands and the group conversation do: loading groups, their members and
history, sending, marking read, /group create, /invite, /kick, /leave, /members, /rename in a
group, and /sendfile in a group. Everything goes through the API's `group` command (docs/API.md);
a group is always named to it by its 32-hex ID, which no rename changes.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any, Mapping, Optional

from .groups import Group
from .usage import UsageError
from .views import group_dialogs

if TYPE_CHECKING:
    from .app import App

Args = Mapping[str, Any]
HISTORY_PAGE = 200


# -- loading ----------------------------------------------------------------------------------
def load(app: "App", then: Optional[Any] = None) -> None:
    """`group list` into the model (quiet: a daemon without groups answers an error)."""
    def listed(data: Any) -> None:
        if isinstance(data, list):
            app.model.groups.set_groups(data)
            group = app.model.open_group
            if app.model.open_chat and group is None and app.model.open_chat not in app.model.contacts:
                app.model.open_chat = None    # the open group is gone
        if then is not None:
            then()
    app.request("group", "list", on_ok=listed, quiet=True)


def load_info(app: "App", group: Group) -> None:
    app.request("group", "info", {"group": group.group_id}, on_ok=app.model.groups.set_info, quiet=True)


def load_history(app: "App", group: Group, quiet: bool = False) -> None:
    app.request("group", "history", {"group": group.group_id, "limit": HISTORY_PAGE},
                on_ok=lambda data: app.model.groups.set_history(group.key, data, app.clock()), quiet=quiet)


def mark_read(app: "App", group: Group) -> None:
    group.unread = 0
    app.request("group", "mark_read", {"group": group.group_id}, quiet=True)


def opened(app: "App", group: Group) -> None:
    """A group conversation was opened: its members (online, verified) and its history."""
    load_info(app, group)
    load_history(app, group)
    mark_read(app, group)


def on_alert(app: "App", kind: str, data: dict) -> None:
    """The group model's alerts: reload what an event changed."""
    group = app.model.groups.get(data.get("group"))
    if kind == "group_refresh":
        load(app)
        if group is not None and group.key == app.model.open_chat:
            load_info(app, group)
            load_history(app, group, quiet=True)
    elif kind == "group_history" and group is not None:
        load_history(app, group, quiet=True)
    elif kind == "group_mark_read" and group is not None:
        mark_read(app, group)


# -- the conversation ---------------------------------------------------------------------------
def _open_group(app: "App") -> Group:
    group = app.model.open_group
    if group is None:
        raise UsageError("Open a group first (it is in the contact list; /group create NAME MEMBER… makes one)")
    return group


def _active_group(app: "App") -> Group:
    group = _open_group(app)
    if group.state != "active":
        raise UsageError(f"You are no longer a member of {group.name} ({'removed' if group.state == 'removed' else 'left'})")
    return group


def send_message(app: "App", body: str) -> None:
    """A line typed in an open group: shown at once (·), then ✓ / ✓✓ as members get it."""
    try:
        group = _active_group(app)
    except UsageError as exc:
        app.notice(str(exc), error=True)
        return
    message_id = uuid.uuid4().hex
    app.model.groups.add_outgoing(group.key, body, message_id, app.clock())
    app.follow_conversation()

    def done(reply: dict) -> None:
        app.model.groups.outgoing_result(group.key, message_id, reply)
        if not reply.get("success"):
            app.notice(f"Not sent: {reply.get('error')}", error=True)
        app.refresh()

    app.client.request("group", "send_message", {"group": group.group_id, "message": body,
                                                  "message_id": message_id}, on_done=done)


def send_file(app: "App", path: str) -> None:
    """/sendfile in a group: offered to every member, each accepting on their own."""
    group = _active_group(app)
    app.request("group", "send_file", {"group": group.group_id, "file_path": path},
                on_ok=lambda _data: (app.notice(f"Offered {os.path.basename(path)} to {group.name}"),
                                     load_history(app, group, quiet=True), app.load_transfers()))


# -- commands -----------------------------------------------------------------------------------
def _member_name(app: "App", text: str) -> str:
    """A contact's name as the API takes it; an ID (a group peer) as typed."""
    contact = app.model.by_name(text)
    return contact.name if contact is not None else text


def create(app: "App", args: Args) -> None:
    """/group create NAME MEMBER…: the members are contacts (names, completed by Tab)."""
    if (args.get("create") or "").lower() != "create":
        raise UsageError("Usage: /group create NAME MEMBER… — a new group with these contacts")
    name = args.get("NAME") or ""
    members = [m for m in (args.get("MEMBER") or ()) if m]
    unknown = [m for m in members if app.model.by_name(m) is None]
    if unknown:
        raise UsageError(f"No contact named {unknown[0]!r}: members of a new group are contacts")

    def created(data: Any) -> None:
        group = app.model.groups.set_info(data)
        app.notice(f"Created the group {name} with {', '.join(members)}")
        if group is not None:
            app.open_chat(group.key)
        load(app)

    app.request("group", "create", {"name": name, "members": [_member_name(app, m) for m in members]},
                on_ok=created)


def invite(app: "App", args: Args) -> None:
    group = _active_group(app)
    member = args.get("MEMBER") or ""
    if app.model.by_name(member) is None:
        raise UsageError(f"No contact named {member!r}: you invite your contacts")
    app.request("group", "invite", {"group": group.group_id, "peer": _member_name(app, member)},
                on_ok=lambda data: (app.model.groups.set_info(data), app.notice(f"Added {member} to {group.name}")))


def _find_member(app: "App", group: Group, text: str) -> str:
    """A member's ID from a contact name, a member's ID, or an unambiguous start of one."""
    contact = app.model.by_name(text)
    if contact is not None and contact.fingerprint in group.members:
        return contact.fingerprint
    matches = [m for m in group.members if m == text or m.startswith(text)]
    if len(matches) != 1:
        raise UsageError(f"{text!r} is not a member of {group.name} (/members lists them)")
    return matches[0]


def kick(app: "App", args: Args) -> None:
    group = _active_group(app)
    member_id = _find_member(app, group, args.get("MEMBER") or "")
    label = args.get("MEMBER")
    app.request("group", "remove", {"group": group.group_id, "peer": member_id},
                on_ok=lambda data: (app.model.groups.set_info(data), app.notice(f"Removed {label} from {group.name}")))


def leave(app: "App", args: Args) -> None:
    group = _active_group(app)

    def left() -> None:
        app.request("group", "leave", {"group": group.group_id},
                    on_ok=lambda _data: (setattr(group, "state", "left"), app.notice(f"You left {group.name}")))

    app.show_dialog(group_dialogs.leave(group.name, app.closing(left), app.closing()))


def members(app: "App", args: Args) -> None:
    group = _open_group(app)

    def show(data: Any) -> None:
        app.model.groups.set_info(data)
        app.show_dialog(group_dialogs.members(group, app.model, app.closing()))

    app.request("group", "info", {"group": group.group_id}, on_ok=show)


def rename(app: "App", group: Group, name: str) -> None:
    """/rename NAME in an open group (admins only: the daemon says so otherwise)."""
    if group.state != "active":
        raise UsageError(f"You are no longer a member of {group.name}")
    old = group.name
    app.request("group", "rename", {"group": group.group_id, "name": name},
                on_ok=lambda data: (app.model.groups.set_info(data) if isinstance(data, dict) else None,
                                    setattr(group, "name", name), app.notice(f"Renamed the group {old} to {name}")))
