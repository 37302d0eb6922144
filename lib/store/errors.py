"""The store's errors: one family, so a caller catches StoreError for any failure below it,
each also of the project's error kinds (errors.py), which the API maps to answers.

Their messages are meant for the user (the API answers with them)."""

from ..errors import Internal, Invalid, NotFound, Refused


class StoreError(Internal):
    """Base of the store's errors, SQLite's own included (wrapped by the transaction)."""


class DuplicateError(Refused, StoreError):
    """A name, key or message id that must be unique is already taken."""


class NotFoundError(NotFound, StoreError):
    """The contact or message asked for does not exist."""


class InvalidValueError(Invalid, StoreError):
    """A value the store refuses to hold (a contact name, a fingerprint, a limit)."""
