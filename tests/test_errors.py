"""One error hierarchy: every exception class derives from a kind of ChatP2PError, and the
command table answers each kind in one place (texts kept, no traceback ever)."""

import ast
import pathlib

import gevent.event
import pytest

import chatp2p_core
from chatp2p_core import errors
from chatp2p_core.api.table import ApiError, CommandTable
from chatp2p_core.services.p2p import P2P
from chatp2p_core.store import DuplicateError, InvalidValueError, NotFoundError, StoreError

KINDS = {errors.NotFound: "not_found", errors.Invalid: "invalid", errors.Refused: "refused",
         errors.Busy: "busy", errors.Internal: "internal"}
# A BaseException on purpose (see natinfo._Abort): it must escape pystun3's `except Exception`.
NOT_ERRORS = {"_Abort"}


def _exception_classes():
    """(module, class name) of every class defined in lib/ whose name says it is an error."""
    root = pathlib.Path(chatp2p_core.__file__).parent
    for path in sorted(root.rglob("*.py")):
        module = "chatp2p_core." + ".".join(path.relative_to(root).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception")) or b.id in
                                                 {k.__name__ for k in KINDS} | {"ChatP2PError"})
                    or isinstance(b, ast.Attribute) and b.attr.endswith("Error") for b in node.bases):
                yield module.removesuffix(".__init__"), node.name


def test_every_exception_class_has_one_of_the_kinds():
    import importlib
    found = list(_exception_classes())
    assert len(found) > 25
    for module, name in found:
        cls = getattr(importlib.import_module(module), name)
        if name in NOT_ERRORS:
            continue
        assert issubclass(cls, errors.ChatP2PError), f"{module}.{name}"
        assert cls.kind in KINDS.values(), f"{module}.{name}"
        assert isinstance(cls.kind, str)


def test_kinds_of_the_classes_callers_catch():
    assert NotFoundError.kind == "not_found" and isinstance(NotFoundError("x"), StoreError)
    assert DuplicateError.kind == "refused" and isinstance(DuplicateError("x"), StoreError)
    assert InvalidValueError.kind == "invalid" and isinstance(InvalidValueError("x"), ValueError)
    assert StoreError.kind == "internal"
    assert ApiError.kind == "invalid"


def _table_raising(exc):
    def handler(context, data):
        raise exc
    table = CommandTable()
    table.add("x", "go", handler)
    return table


def test_each_kind_is_answered_with_its_text():
    for kind in KINDS:
        reply = _table_raising(kind(f"the {kind.__name__} text")).dispatch(None, {"command": "x", "action": "go"})
        assert reply["success"] is False and "data" not in reply
        assert reply["error"] == f"the {kind.__name__} text"
        assert set(reply) == {"success", "error", "timestamp"}


def test_an_unexpected_exception_is_an_internal_error_without_traceback(caplog):
    reply = _table_raising(KeyError("secret detail")).dispatch(None, {"command": "x", "action": "go", "id": 7})
    assert reply["success"] is False and reply["id"] == 7
    assert reply["error"] == "Internal error (see the daemon log)"
    assert "secret" not in str(reply) and "Traceback" not in str(reply)
    assert "secret detail" in caplog.text  # the log keeps what the answer hides


class _Transport:
    port = 40000


def test_a_duplicate_message_id_is_recognised_by_its_type():
    """The answer's text comes from the DuplicateError's type, not from words in its text."""
    p2p = P2P(_Transport(), None, None, None, None, None, lambda name, data: None)

    class Contact:
        name = "Bob"
    done = gevent.event.AsyncResult()
    done.set_exception(DuplicateError("UNIQUE constraint failed"))
    with pytest.raises(DuplicateError) as info:
        p2p.message_stored(Contact(), "m-1", done)
    assert str(info.value) == "message_id 'm-1' was already used for Bob"
    reply = CommandTable()
    reply.add("p2p", "send_message", lambda context, data: p2p.message_stored(Contact(), "m-1", done))
    answer = reply.dispatch(None, {"command": "p2p", "action": "send_message"})
    assert answer["error"] == "message_id 'm-1' was already used for Bob"
