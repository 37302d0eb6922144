"""The address book: contacts are identity keys (or just their IDs); names are local labels."""

from __future__ import annotations

from typing import Any, Callable

from ..crypto import identity as ident
from ..api.table import ApiError
from ..store import Contact, DuplicateError, NotFoundError, Store, StoreError
from ..util import iso_utc

Publish = Callable[[str, Any], Any]


def parse_public_key(text: str) -> tuple[bytes, str | None]:
    """A contact's key as given by a user: a full bundle (base64) or just its ID.

    Returns (fingerprint, bundle or None). An ID alone is enough: the bundle is learned at
    the first handshake and checked against the ID then.
    """
    text = text.strip()
    if not text:
        raise ApiError("Field 'public_key' is empty: give an ID or a public key bundle")
    if ident.looks_like_id(text):
        try:
            return ident.parse_id(text), None
        except ident.IdentityError as exc:
            raise ApiError(str(exc)) from None
    try:
        bundle = ident.Bundle.from_base64(text)
    except ident.IdentityError as exc:
        raise ApiError(f"Invalid public key: {exc}") from None
    return bundle.fingerprint(), bundle.to_base64()


class ContactBook:
    """Add, remove, rename, block contacts; every change is stored, then published."""

    def __init__(self, store: Store, own_fingerprint: bytes, publish: Publish,
                 is_online: Callable[[int], bool] = lambda contact_id: False) -> None:
        self.store = store
        self.own_fingerprint = own_fingerprint
        self.publish = publish
        self.is_online = is_online

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
        try:
            return self.store.contacts.get(name)
        except NotFoundError as exc:
            raise ApiError(str(exc)) from None

    def add(self, name: str, public_key: str) -> dict:
        fingerprint, bundle = parse_public_key(public_key)
        if fingerprint == self.own_fingerprint:
            raise ApiError("That key is your own identity")
        try:
            contact = self.store.contacts.add(name, fingerprint, bundle)
        except (DuplicateError, StoreError) as exc:
            raise ApiError(str(exc)) from None
        view = self.view(contact, 0)
        self.publish("contact_added", view)
        return view

    def remove(self, name: str) -> dict:
        try:
            contact = self.store.contacts.remove(name)
        except (NotFoundError, StoreError) as exc:
            raise ApiError(str(exc)) from None
        view = self.view(contact, 0)
        self.publish("contact_removed", {"name": view["name"], "fingerprint": view["fingerprint"]})
        return view

    def _update(self, change: Callable[[], Contact], previous_name: str | None = None) -> dict:
        try:
            contact = change()
        except (NotFoundError, DuplicateError, StoreError) as exc:
            raise ApiError(str(exc)) from None
        view = self.view(contact)
        event = dict(view)
        if previous_name is not None:
            event["previous_name"] = previous_name
        self.publish("contact_updated", event)
        return view

    def rename(self, name: str, new_name: str) -> dict:
        old = self.get(name)
        return self._update(lambda: self.store.contacts.rename(name, new_name), previous_name=old.name)

    def set_blocked(self, name: str, blocked: bool) -> dict:
        return self._update(lambda: self.store.contacts.set_blocked(name, blocked))

    def set_verified(self, name: str, verified: bool) -> dict:
        return self._update(lambda: self.store.contacts.set_verified(name, verified))
