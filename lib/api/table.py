"""The control API's command table: (command, action) -> data schema + handler.

The IPC server knows nothing about individual commands: it hands each decoded request to
`CommandTable.dispatch`, which validates and coerces the data against the declared schema
(the Windows client sends PascalCase keys and every value as a string) and calls the handler.
Later features add rows to the table; the server never changes for them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import gevent.event

from ..errors import ChatP2PError, Invalid
from ..util import iso_utc, parse_bool

log = logging.getLogger("chatp2p.api")

class ApiError(Invalid):
    """A request the command table cannot accept (unknown action, bad or missing field).

    Handlers raise no error of their own kind: every `errors.ChatP2PError` a use case raises
    is answered by `CommandTable` the same way, with its text as `error`."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One data field: its type, whether it is required, and its limits."""

    name: str
    kind: str = "str"            # str | int | bool | list | dict | any
    required: bool = True
    default: Any = None
    max_len: int | None = None   # characters for str, items for list
    min_len: int | None = None   # characters for str, items for list
    minimum: int | None = None
    maximum: int | None = None
    item_kind: str | None = None  # for lists: kind of each item
    item_max_len: int | None = None  # for lists of str: characters of each item

    @property
    def key(self) -> str:
        return normalize_key(self.name)


@dataclasses.dataclass(frozen=True)
class Reply:
    """A handler result with extra top-level response keys (e.g. message_id)."""

    data: Any
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Deferred(NamedTuple):
    """A handler's answer that is not ready yet: the handler started work shared with other
    requests (a group commit) and returns at once; when `pending` is set, `finish(pending)`
    builds the answer (it may raise any ChatP2PError, like a handler). The server waits for
    `pending` with a callback, so a request in flight costs no greenlet of its own."""

    pending: gevent.event.AsyncResult
    finish: Callable[[gevent.event.AsyncResult], Any]


class Subscription(NamedTuple):
    """A handler's answer that also turns its API connection into an event stream: the server
    calls `subscribe(callback)` (the event bus's; it returns the unsubscribe function) and
    writes each event, `names` only when not empty, as one JSON line after the answer."""

    subscribe: Callable[[Callable[[dict], None]], Callable[[], None]]
    names: frozenset


Handler = Callable[[Any, dict], Any]


@dataclasses.dataclass(frozen=True)
class Action:
    command: str
    action: str | None     # None: accepts any action (the seed's `status`)
    fields: tuple[Field, ...]
    handler: Handler
    help: str
    blocking: bool = True  # may wait on the network or the disk: run in its own greenlet
    # (a handler that returns a Deferred does not wait: declare it blocking=False)
    answer: Any = None
    # The field names as declared: data whose keys are all among them needs no normalising.
    exact_names: frozenset[str] = frozenset()


class Call(NamedTuple):
    """A request checked against the table, ready to run: the action and its clean data, or
    the error to answer (`action` None). A tuple: one is built per request."""

    request_id: Any
    action: Action | None = None
    data: dict | None = None
    error: str = ""

    @property
    def blocking(self) -> bool:
        return self.action is not None and self.action.blocking


# Top-level request keys clients spell canonically: such requests skip key normalising.
_CANONICAL_TOP = frozenset(("command", "action", "data", "id", "token"))


def normalize_key(key: str) -> str:
    """`FilePath`, `file_path` and `file-path` all name the same field."""
    return key.replace("_", "").replace("-", "").lower()


def normalized(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    """The mapping with its keys normalised, built once per request (first spelling wins)."""
    result: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(key, str):
            result.setdefault(normalize_key(key), value)
    return result


def _kind_name(kind: str) -> str:
    return {"str": "a string", "int": "an integer", "bool": "a boolean", "list": "a list",
            "dict": "an object", "any": "a value"}[kind]


def _check_text(text: str, label: str) -> None:
    """JSON can carry lone surrogates ("\\ud800"), which are not text: no name, message or
    path may hold one (SQLite, the disk and the peer all want UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(f"Field '{label}' is not valid Unicode text (lone surrogate)") from None


def _too_short(field: Field, label: str) -> None:
    if field.min_len == 1:
        raise ApiError(f"Field '{label}' is empty")
    unit = "characters" if field.kind == "str" else "items"
    raise ApiError(f"Field '{label}' is too short (at least {field.min_len} {unit})")


def coerce(field: Field, value: Any, label: str | None = None) -> Any:
    """Convert `value` to the field's kind, accepting the string forms old clients send."""
    kind = field.kind
    if kind == "any":
        return value
    if kind == "str" and type(value) is str:  # the common case, first
        if field.max_len is not None and len(value) > field.max_len:
            raise ApiError(f"Field '{label or field.name}' is too long (at most {field.max_len} characters)")
        if field.min_len is not None and len(value) < field.min_len:
            _too_short(field, label or field.name)
        if not value.isascii():
            _check_text(value, label or field.name)
        return value
    label = label or field.name
    bad = ApiError(f"Field '{label}' must be {_kind_name(kind)}")
    if kind == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad
        text = value if isinstance(value, str) else json.dumps(value)
        _check_text(text, label)
        if field.max_len is not None and len(text) > field.max_len:
            raise ApiError(f"Field '{label}' is too long (at most {field.max_len} characters)")
        if field.min_len is not None and len(text) < field.min_len:
            _too_short(field, label)
        return text
    if kind == "int":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            text = value.strip()
            if not text.lstrip("+-").isdigit() or len(text) > 30:
                raise bad
            value = int(text)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise bad
        if field.minimum is not None and value < field.minimum:
            raise ApiError(f"Field '{label}' must be at least {field.minimum}")
        if field.maximum is not None and value > field.maximum:
            raise ApiError(f"Field '{label}' must be at most {field.maximum}")
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        flag = parse_bool(value) if isinstance(value, str) else None
        if flag is None:
            raise bad
        return flag
    if kind in ("list", "dict"):
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError):
                parsed = None
            if kind == "list" and not isinstance(parsed, list):
                parsed = [value]  # a bare "stun:a:3478" where a list is declared: one item
            if parsed is None:
                raise bad from None
            value = parsed
        expected = list if kind == "list" else dict
        if not isinstance(value, expected):
            raise bad
        if kind == "list":
            if field.max_len is not None and len(value) > field.max_len:
                raise ApiError(f"Field '{label}' has too many items (at most {field.max_len})")
            if field.min_len is not None and len(value) < field.min_len:
                _too_short(field, label)
            if field.item_kind:
                item_field = Field(field.name, field.item_kind, max_len=field.item_max_len)
                value = [coerce(item_field, item, f"{label}[{i}]") for i, item in enumerate(value)]
        return value
    raise AssertionError(kind)


def validate(fields: Iterable[Field], data: Any, exact_names: frozenset[str] = frozenset()) -> dict:
    """Check `data` against the schema; returns a dict keyed by canonical field names.

    `exact_names` (the fields' own names): when every key of `data` is one of them, as the
    project's own clients send, the keys are used as they are."""
    if isinstance(data, str) and data.strip():
        try:
            data = json.loads(data)  # the Windows client sends Data as JSON text, even "null"
        except (ValueError, RecursionError):
            raise ApiError("Field 'data' must be an object") from None
    if data is None or data == "":
        data = {}
    if not isinstance(data, dict):
        raise ApiError("Field 'data' must be an object")
    clean: dict[str, Any] = {}
    if data.keys() <= exact_names:
        for field in fields:
            value = data.get(field.name)
            if value is None or (value == "" and field.kind != "str"):
                if field.required:
                    raise ApiError(f"Missing field '{field.name}'")
                clean[field.name] = field.default
            else:
                clean[field.name] = coerce(field, value)
        return clean
    keys = normalized(data)
    for field in fields:
        present = field.key in keys
        value = keys.get(field.key)
        if not present or value is None or (value == "" and field.kind not in ("str",)):
            if field.required:
                raise ApiError(f"Missing field '{field.name}'")
            clean[field.name] = field.default
            continue
        clean[field.name] = coerce(field, value)
    return clean


def response(success: bool, data: Any = None, error: str | None = None,
             extra: Mapping[str, Any] | None = None, request_id: Any = None) -> dict:
    """Build a response object in the seed's shape (error only on failure)."""
    reply: dict[str, Any] = {"success": success}
    if success:
        reply["data"] = data
    else:  # as the seed shows it: an error answer carries no `data`
        reply["error"] = error
    reply["timestamp"] = iso_utc(time.time())
    if extra:
        reply.update(extra)
    if request_id is not None:
        reply["id"] = request_id
    return reply


class CommandTable:
    """All API actions, each declared once with its schema and handler."""

    def __init__(self) -> None:
        self._actions: dict[str, dict[str | None, Action]] = {}
        # normalize_key(command) -> normalize_key(action) -> row: `SendMessage`, `send-message`
        # and `send_message` name one action, as they name one field (the Windows client)
        self._lookup: dict[str, dict[str | None, Action]] = {}

    def add(self, command: str, action: str | None, handler: Handler,
            fields: Iterable[Field] = (), help: str = "", blocking: bool = True,
            answer: Any = None) -> None:
        """`blocking=False` declares a handler that never waits on I/O: the server runs it
        inline, without a greenlet of its own (most of the API: reads and writes of the store)."""
        actions = self._actions.setdefault(command, {})
        if action in actions:
            raise ValueError(f"duplicate action {command} {action}")
        fields = tuple(fields)
        row = Action(command, action, fields, handler, help, blocking, answer, frozenset(f.name for f in fields))
        actions[action] = row
        self._lookup.setdefault(normalize_key(command), {})[None if action is None else normalize_key(action)] = row

    def actions(self) -> list[Action]:
        return [a for by_action in self._actions.values() for a in by_action.values()]

    def lookup(self, command: Any, action: Any) -> Action:
        if not isinstance(command, str) or not command:
            raise ApiError("Missing field 'command' (valid commands: " + ", ".join(sorted(self._actions)) + ")")
        by_action = self._lookup.get(normalize_key(command.strip()))
        if by_action is None:
            raise ApiError(f"Unknown command '{command}' (valid commands: {', '.join(sorted(self._actions))})")
        if None in by_action:
            return by_action[None]
        found = by_action.get(normalize_key(action.strip())) if isinstance(action, str) else None
        if found is not None:
            return found
        valid = ", ".join(sorted(row.action for row in by_action.values() if row.action))
        if not isinstance(action, str) or not action:
            raise ApiError(f"Missing field 'action' for command '{command}' (valid actions: {valid})")
        raise ApiError(f"Unknown action '{action}' for command '{command}' (valid actions: {valid})")

    def prepare(self, request: Any) -> Call:
        """Find the request's action and validate its data (no handler runs yet): the server
        learns whether it may run inline, and a bad request costs no greenlet."""
        if not isinstance(request, dict):
            return Call(None, error="Invalid request: expected a JSON object")
        top = request if request.keys() <= _CANONICAL_TOP else normalized(request)
        request_id = top.get("id")
        if request_id is not None and not isinstance(request_id, (str, int, float)):
            request_id = None
        try:
            entry = self.lookup(top.get("command"), top.get("action"))
            return Call(request_id, entry, validate(entry.fields, top.get("data"), entry.exact_names))
        except ApiError as exc:
            return Call(request_id, error=str(exc))

    def run(self, context: Any, call: Call) -> dict | Deferred:
        """Run a prepared request; returns a response dict (never raises), or the handler's
        Deferred, to be given to `finish` once its `pending` is set."""
        entry = call.action
        if entry is None:
            return response(False, error=call.error, request_id=call.request_id)
        return self._answer(call, entry.handler, context, call.data)

    def finish(self, call: Call, deferred: Deferred) -> dict:
        """The response of a deferred request (its `pending` set, else this waits for it)."""
        answer = self._answer(call, deferred.finish, deferred.pending)
        if isinstance(answer, Deferred):
            return self.finish(call, answer)
        return answer

    def _answer(self, call: Call, function: Callable, *args: Any) -> dict | Deferred:
        try:
            result = function(*args)
        except ChatP2PError as exc:  # every kind: its text is written for the user
            if exc.kind == "internal":
                assert call.action is not None
                log.error("%s %s failed: %s", call.action.command, call.action.action, exc)
            return response(False, error=str(exc), request_id=call.request_id)
        except Exception:  # a bug must not reach the client as a traceback
            assert call.action is not None
            log.exception("handler failed for %s %s", call.action.command, call.action.action)
            return response(False, error="Internal error (see the daemon log)", request_id=call.request_id)
        if isinstance(result, (Deferred, Subscription)):
            return result
        if isinstance(result, Reply):
            return response(True, result.data, extra=result.extra, request_id=call.request_id)
        return response(True, result, request_id=call.request_id)

    def dispatch(self, context: Any, request: Mapping[str, Any]) -> dict:
        """Validate and run one decoded request, waiting for a deferred answer (the embedded
        UI's way in)."""
        call = self.prepare(request)
        answer = self.run(context, call)
        if isinstance(answer, Subscription):
            return response(False, error="events subscribe streams on an API connection only",
                            request_id=call.request_id)
        return self.finish(call, answer) if isinstance(answer, Deferred) else answer
