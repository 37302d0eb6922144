"""JSON Schema (draft 2020-12) of the whole API, built from the command table and `contract`.

Why: clients in other languages generate their bindings from it (`chatp2pctl schema`), and the
tests validate real answers and events against it, so the declarations cannot drift from what
the daemon sends. One document: every shape is in `$defs`; each action has
`$defs["<command>.<action>.data"]` (the request's data) and `"<command>.<action>.answer"` (a
successful response, `data` included); each event has `$defs["event.<name>"]` (the whole
event object). `status` accepts any action: its names are `status.data` and `status.answer`.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any, Iterable, Literal, NotRequired, Required, Union

from ..contract import EVENTS
from .answers import TopLevel
from .table import Action, Field

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
_KINDS = {"str": "string", "int": "integer", "bool": "boolean", "list": "array", "dict": "object"}


def action_name(action: Action) -> str:
    """`contacts.add`; `status` for the row that accepts any action."""
    return action.command if action.action is None else f"{action.command}.{action.action}"


def is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


def _ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


def type_schema(tp: Any, defs: dict[str, dict]) -> dict:
    """The schema of a Python annotation; named shapes (TypedDicts, enums) go to `defs`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return {}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    if origin in (NotRequired, Required):
        return type_schema(typing.get_args(tp)[0], defs)
    if origin is Literal:
        values = list(typing.get_args(tp))
        return {"const": values[0]} if len(values) == 1 else {"enum": values}
    if origin in (Union, types.UnionType):
        options = [type_schema(arg, defs) for arg in typing.get_args(tp)]
        return {"anyOf": options}
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return {"type": "array", "items": type_schema(item, defs)}
    if origin is dict:
        _, value = typing.get_args(tp) or (str, Any)
        return {"type": "object", "additionalProperties": type_schema(value, defs)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {"type": "string", "enum": [m.value for m in tp],
                                 "description": _doc(tp)}
        return _ref(tp.__name__)
    if is_typeddict(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # reserved first: a shape may refer to itself
            defs[tp.__name__] = typeddict_schema(tp, defs)
        return _ref(tp.__name__)
    raise TypeError(f"no JSON Schema for {tp!r}")


def typeddict_schema(tp: type, defs: dict[str, dict]) -> dict:
    hints = typing.get_type_hints(tp, include_extras=True)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: type_schema(hint, defs) for name, hint in hints.items()},
        "required": [name for name in hints if name in tp.__required_keys__],  # type: ignore[attr-defined]
        "additionalProperties": False,
    }
    if _doc(tp):
        schema["description"] = _doc(tp)
    return schema


def _doc(tp: type) -> str:
    """A class's own docstring (not one inherited from dict, str or a base shape)."""
    doc = tp.__dict__.get("__doc__") or ""
    return " ".join(doc.split())


def field_schema(field: Field) -> dict:
    """One request field, with the limits `table.validate` enforces. Strings are also accepted
    for other kinds (the Windows client sends every value as text): that leniency is the
    server's, not part of what a client should send."""
    schema: dict[str, Any] = {"type": _KINDS[field.kind]} if field.kind in _KINDS else {}
    if field.max_len is not None:
        schema["maxLength" if field.kind == "str" else "maxItems"] = field.max_len
    if field.min_len is not None:
        schema["minLength" if field.kind == "str" else "minItems"] = field.min_len
    if field.minimum is not None:
        schema["minimum"] = field.minimum
    if field.maximum is not None:
        schema["maximum"] = field.maximum
    if field.item_kind:
        schema["items"] = {"type": _KINDS[field.item_kind]}
        if field.item_max_len is not None:
            schema["items"]["maxLength"] = field.item_max_len
    if field.default is not None:
        schema["default"] = field.default
    return schema


def data_schema(action: Action) -> dict:
    """The request's `data`: an object of the action's fields (null or absent when none)."""
    if not action.fields:
        return {"type": ["object", "null"], "additionalProperties": False, "properties": {}}
    return {
        "type": "object",
        "properties": {f.name: field_schema(f) for f in action.fields},
        "required": [f.name for f in action.fields if f.required],
        "description": action.help,
    }


def answer_schema(action: Action, defs: dict[str, dict]) -> dict:
    """A successful response of the action: the seed's envelope around the declared data."""
    declared = action.answer
    extra = None
    if isinstance(declared, TopLevel):
        declared, extra = declared.data, declared.extra
    properties: dict[str, Any] = {
        "success": {"const": True},
        "data": type_schema(declared, defs),
        "timestamp": {"type": "string"},
        "id": {"type": ["string", "number"]},
    }
    required = ["success", "data", "timestamp"]
    if extra is not None:
        for name, hint in typing.get_type_hints(extra).items():
            properties[name] = type_schema(hint, defs)
            required.append(name)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def event_schema(name: str, shape: Any, defs: dict[str, dict]) -> dict:
    return {
        "type": "object",
        "properties": {"event": {"const": name}, "data": type_schema(shape, defs),
                       "timestamp": {"type": "string"}},
        "required": ["event", "data", "timestamp"],
        "additionalProperties": False,
    }


def document(actions: Iterable[Action]) -> dict:
    """The one schema document (see the module's docstring for where each part is)."""
    defs: dict[str, dict] = {}
    entries: dict[str, dict] = {}
    for action in actions:
        name = action_name(action)
        entries[f"{name}.data"] = data_schema(action)
        entries[f"{name}.answer"] = answer_schema(action, defs)
    for event, shape in EVENTS.items():
        entries[f"event.{event}"] = event_schema(event, shape, defs)
    defs.update(entries)
    return {
        "$schema": DIALECT,
        "$id": "urn:chatp2p:api",
        "title": "ChatP2P control API and events",
        "description": __doc__.split("\n\n", 1)[1].strip().replace("\n", " "),
        "$defs": dict(sorted(defs.items())),
    }
