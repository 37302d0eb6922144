"""The address book and its use cases: contacts are identity keys (or just their IDs); names
are local labels. Every change is stored, published, and passed on to the running P2P
network (a removed or blocked contact is disconnected, a renamed one shows its new name)."""

from __future__ import annotations

from typing import Any, Callable

from ..crypto import identity as ident
from ..errors import Invalid, Refused
from ..store import Contact, NotFoundError, Store
from ..util import iso_utc
from .p2p import P2P

Publish = Callable[[str, Any], Any]
RunningP2P = Callable[[], "P2P | None"]   # the P2P network while it runs, None when stopped


def parse_public_key(text: str) -> tuple[bytes, str | None]:
    """A contact's key as given by a user: a full bundle (base64) or just its ID.

    Returns (fingerprint, bundle or None). An ID alone is enough: the bundle is learned at
    the first handshake and checked against the ID then.
    """
    text = text.strip()
    if not text:
        raise Invalid("Field 'public_key' is empty: give an ID or a public key bundle")
    if ident.looks_like_id(text):
        return ident.parse_id(text), None
    try:
        bundle = ident.Bundle.from_base64(text)
    except ident.IdentityError as exc:
        raise ident.IdentityError(f"Invalid public key: {exc}") from None
    return bundle.fingerprint(), bundle.to_base64()


class ContactBook:
    """Add, remove, rename, block, verify contacts; see the module docstring."""

    def __init__(self, store: Store, own_fingerprint: bytes, publish: Publish,
                 is_online: Callable[[int], bool] = lambda contact_id: False,
                 running_p2p: RunningP2P = lambda: None) -> None:
        self.store = store
        self.own_fingerprint = own_fingerprint
        self.publish = publish
        self.is_online = is_online
        self.running_p2p = running_p2p

    def view(self, contact: Contact, unread: int | None = None) -> dict:
        """The JSON form of a contact used by `contacts list` and the contact events."""
        if unread is None:
            unread = self.store.messages.unread_counts().get(contact.id, 0)
        return {
            "name": contact.name,
            "fingerprint": ident.format_id(contact.fingerprint),
            "public_key": contact.bundle,
            "verified": contact.verified,
            "blocked": contact.blocked,
            "online": self.is_online(contact.id),
            "last_seen": iso_utc(contact.last_seen) if contact.last_seen else None,
            "unread": unread,
        }

    def list(self) -> list[dict]:
        unread = self.store.messages.unread_counts()
        return [self.view(c, unread.get(c.id, 0)) for c in self.store.contacts.all()]

    def get(self, name: str) -> Contact:
        """The contact called `name` (NotFoundError: `Peer not found: NAME`)."""
        return self.store.contacts.get(name)

    def get_by_name_or_id(self, name_or_id: str) -> Contact:
        """The contact called `name_or_id`, else the contact with that ID (NotFoundError:
        `Peer not found: ...`): group members are given either way."""
        try:
            return self.store.contacts.get(name_or_id)
        except NotFoundError:
            if not ident.looks_like_id(name_or_id):
                raise
        contact = self.store.contacts.find_by_fingerprint(ident.parse_id(name_or_id))
        if contact is None:
            raise NotFoundError(f"Peer not found: {name_or_id.strip()}")
        return contact

    def add(self, name: str, public_key: str) -> dict:
        """Store a new contact; a stranger we already talked with gets its held messages."""
        contact, view = self._store_new(name, public_key)
        p2p = self.running_p2p()
        if p2p is not None:
            p2p.messenger.release_held(contact)
        return view

    def _store_new(self, name: str, public_key: str) -> tuple[Contact, dict]:
        fingerprint, bundle = parse_public_key(public_key)
        if fingerprint == self.own_fingerprint:
            raise Refused("That key is your own identity")
        contact = self.store.contacts.add(name, fingerprint, bundle)
        view = self.view(contact, 0)
        self.publish("contact_added", view)
        return contact, view

    def remove(self, name: str) -> dict:
        """Forget a contact and its history; its session is closed."""
        contact = self.store.contacts.remove(name)
        view = self.view(contact, 0)
        self.publish("contact_removed", {"name": view["name"], "fingerprint": view["fingerprint"]})
        self._disconnect(contact.fingerprint)
        return view

    def _disconnect(self, fingerprint: bytes) -> None:
        p2p = self.running_p2p()
        if p2p is not None:
            p2p.connector.disconnect(fingerprint)

    def _update(self, change: Callable[[], Contact], previous_name: str | None = None) -> tuple[Contact, dict]:
        contact = change()
        view = self.view(contact)
        event = dict(view)
        if previous_name is not None:
            event["previous_name"] = previous_name
        self.publish("contact_updated", event)
        return contact, view

    def rename(self, name: str, new_name: str) -> dict:
        old = self.get(name)
        contact, view = self._update(lambda: self.store.contacts.rename(name, new_name), previous_name=old.name)
        p2p = self.running_p2p()
        if p2p is not None:
            p2p.network.rename_link(contact.fingerprint, contact.name)
        return view

    def block(self, name_or_id: str) -> dict:
        """Block a contact by name, or a stranger by its ID (it becomes a blocked contact):
        its session is closed and the messages it left while a stranger are dropped."""
        contact = self._contact_or_stranger(name_or_id)
        _, view = self._update(lambda: self.store.contacts.set_blocked(contact.name, True))
        self.store.held.drop(contact.fingerprint)
        self._disconnect(contact.fingerprint)
        return view

    def _contact_or_stranger(self, name_or_id: str) -> Contact:
        try:
            return self.store.contacts.get(name_or_id)
        except NotFoundError:
            if not ident.looks_like_id(name_or_id):
                raise
        fingerprint = ident.parse_id(name_or_id)
        contact = self.store.contacts.find_by_fingerprint(fingerprint)
        if contact is None:  # its held messages are dropped, not released
            contact, _ = self._store_new("blocked-" + ident.short_id(fingerprint), name_or_id)
        return contact

    def unblock(self, name: str) -> dict:
        return self._update(lambda: self.store.contacts.set_blocked(name, False))[1]

    def set_verified(self, name: str, verified: bool) -> dict:
        """After the users compared safety numbers (or to undo that)."""
        return self._update(lambda: self.store.contacts.set_verified(name, verified))[1]

    def delete_messages(self, name: str, message_id: str | None) -> tuple[Contact, int, int]:
        """Delete one message, or the whole conversation (None), from this node only:
        (contact, deleted, kept in flight); `messages_deleted` tells the other clients."""
        contact = self.get(name)
        deleted, kept = self.store.messages.delete(contact.id, message_id)
        if deleted:
            self.publish("messages_deleted", {"peer": contact.name, "message_id": message_id})
            self.publish("contact_updated", self.view(self.store.contacts.get_by_id(contact.id)))
        return contact, deleted, kept

    def mark_read(self, name: str) -> tuple[Contact, int]:
        """Mark a conversation read: (contact, messages marked); the contact's unread count
        is published."""
        contact = self.get(name)
        count = self.store.messages.mark_read(contact.id)
        self.publish("contact_updated", self.view(self.store.contacts.get_by_id(contact.id)))
        return contact, count
