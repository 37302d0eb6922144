"""The store's errors: one family, so a caller catches StoreError for any failure below it.

Their messages are meant for the user (the API answers with them)."""


class StoreError(Exception):
    """Base of the store's errors, SQLite's own included (wrapped by the transaction)."""


class DuplicateError(StoreError):
    """A name, key or message id that must be unique is already taken."""


class NotFoundError(StoreError):
    """The contact or message asked for does not exist."""
