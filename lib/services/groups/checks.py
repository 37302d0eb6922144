"""What a group request names, checked: the group (by id or name), a member (by contact name
or ID), a contact's bundle, a group name, a message. Pure: errors say what was wrong, nothing
is stored. `GroupError` and `GroupRefused` are the service's errors (the API maps them)."""

from __future__ import annotations

from typing import Optional

from ...crypto import identity as ident
from ...errors import Invalid, NotFound, Refused
from ...store import Contact, ContactRepository
from ..messaging import check_message as check_one_to_one
from .live import Live


class GroupError(Invalid):
    """A group request that cannot be done as asked."""


class GroupRefused(Refused):
    """Not allowed: not an admin, not a member, the group was left."""


def find(groups: dict[bytes, Live], group: str) -> Live:
    """The group named by its id (32 hex digits) or its name (case-insensitive, unique)."""
    if not isinstance(group, str) or not group:
        raise GroupError("Field 'group' must be a group id or name")
    text = group.strip().lower()
    if len(text) == 32:
        try:
            live = groups.get(bytes.fromhex(text))
        except ValueError:
            live = None
        if live is not None:
            return live
    wanted = group.strip().casefold()
    found = [live for live in groups.values() if live.membership.name.casefold() == wanted]
    if len(found) > 1:
        raise GroupError(f"Several groups are named {group!r}: use the group id")
    if not found:
        raise NotFound(f"No group {group!r}")
    return found[0]


def writable(live: Live, me: bytes, admin: bool = False) -> Live:
    """`live` when we may write to it (as an admin when `admin`)."""
    if live.state != "active" or not live.membership.is_member(me):
        raise GroupRefused(f"You are no longer a member of {live.membership.name}")
    if admin and not live.membership.is_admin(me):
        raise GroupRefused(f"Only an admin of {live.membership.name} can do that")
    return live


def member_fp(live: Live, peer: str, contacts: ContactRepository) -> bytes:
    """The fingerprint of the member `peer` names (a contact's name or an ID)."""
    if not isinstance(peer, str) or not peer:
        raise GroupError("Field 'peer' must be a contact name or an ID")
    contact = _contact_named(contacts, peer)
    if contact is not None:
        fp = contact.fingerprint
    else:
        try:
            fp = ident.parse_id(peer)
        except ident.IdentityError:
            raise NotFound(f"No contact or ID {peer!r}") from None
    if fp not in live.membership.members:
        raise NotFound(f"{peer} is not a member of {live.membership.name}")
    return fp


def _contact_named(contacts: ContactRepository, name: str) -> Optional[Contact]:
    try:
        return contacts.get(name)
    except Exception:
        return None


def contact_bundle(contact: Contact) -> bytes:
    """The bundle a contact is added to a group with: known, and not blocked."""
    if contact.blocked:
        raise GroupRefused(f"{contact.name} is blocked")
    if not contact.bundle:
        raise GroupError(f"The key of {contact.name} is not known yet: connect to it once "
                         f"(p2p connect or contacts negotiate_keys) before adding it to a group")
    return ident.Bundle.from_base64(contact.bundle).encode()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name.encode("utf-8")) <= 64:
        raise GroupError("A group name is 1 to 64 bytes of UTF-8")
    return name


def check_message(body: str, message_id: Optional[str]) -> str:
    """The one-to-one rules (size, message_id), from a caller that may not have checked types."""
    if not isinstance(body, str):
        raise GroupError("Field 'message' must be text")
    return check_one_to_one(body, message_id)
