"""The one root of the project's exceptions, and the few kinds a caller can act on.

Every exception class in chatp2p_core derives from one kind (keeping its own name), so the
API answers each failure the same way from one place (`api.table`) and no layer wraps another
layer's errors by hand. `kind` names the kind in logs and tests; a class picks its kind by
listing it first among its bases.
"""

from __future__ import annotations


class ChatP2PError(Exception):
    """Root of every ChatP2P error; its text is written for the user to read."""

    kind = "internal"


class NotFound(ChatP2PError):
    """The named thing (contact, transfer, message, host) does not exist."""

    kind = "not_found"


class Invalid(ChatP2PError, ValueError):
    """The input is malformed or out of range: the same request will never succeed."""

    kind = "invalid"


class Refused(ChatP2PError):
    """Well-formed, but the current state or a policy refuses it (blocked, already used,
    stopped, wrong key)."""

    kind = "refused"


class Busy(ChatP2PError):
    """Cannot be done now (no answer in time, resource in use): the same request may
    succeed later."""

    kind = "busy"


class Internal(ChatP2PError):
    """Our own fault or the machine's (database, disk): the user can only report it."""

    kind = "internal"
