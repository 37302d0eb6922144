"""The command table: lookup errors, key matching, string coercion, response shape."""

import json
import re

from chatp2p_core.api.table import ApiError, CommandTable, Field, Reply, coerce, response, validate

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def make_table():
    table = CommandTable()
    table.add("p2p", "send_file", lambda ctx, d: Reply("File transfer started", {"transfer_id": "t1"}),
              (Field("peer"), Field("file_path"), Field("chunk_size", "int", required=False, default=8192,
                                                            minimum=1, maximum=1 << 20)))
    table.add("p2p", "start", lambda ctx, d: d, (Field("stun_urls", "list", required=False, default=[],
                                                        item_kind="str"),))
    table.add("status", None, lambda ctx, d: {"ok": True})
    table.add("x", "boom", lambda ctx, d: 1 / 0)
    table.add("x", "flag", lambda ctx, d: d, (Field("on", "bool"),))
    return table


def test_windows_client_shape_is_accepted():
    reply = make_table().dispatch(None, {"Command": "p2p", "Action": "send_file",
                                         "Data": {"Peer": "Bob", "FilePath": "/tmp/a", "ChunkSize": "4096"}})
    assert reply["success"] is True and reply["transfer_id"] == "t1"
    assert "error" not in reply and TIMESTAMP.match(reply["timestamp"])


def test_strings_are_coerced_to_declared_types():
    table = make_table()
    assert table.dispatch(None, {"command": "p2p", "action": "start",
                                 "data": {"stun_urls": '["stun:127.0.0.1:3478"]'}})["data"] == \
        {"stun_urls": ["stun:127.0.0.1:3478"]}
    assert table.dispatch(None, {"command": "x", "action": "flag", "data": {"on": "true"}})["data"] == {"on": True}
    assert table.dispatch(None, {"command": "x", "action": "flag", "data": '{"on": "0"}'})["data"] == {"on": False}


def test_windows_client_action_names_ignore_case_and_underscores():
    table = make_table()
    for action in ("SendFile", "sendfile", "SEND_FILE", "send-file", " Send_File "):
        reply = table.dispatch(None, {"Command": "P2P", "Action": action,
                                      "Data": {"Peer": "Bob", "FilePath": "/tmp/a"}})
        assert reply["success"] is True and reply["transfer_id"] == "t1", (action, reply)
    reply = table.dispatch(None, {"command": "p2p", "action": "send_files"})
    assert reply["success"] is False and "Unknown action 'send_files'" in reply["error"]
    assert "send_file" in reply["error"]


def test_a_bare_string_where_a_list_is_declared_is_a_list_of_one():
    table = make_table()
    for value, expected in (("stun:a.example:3478", ["stun:a.example:3478"]), ("5", ["5"]),
                            ('["stun:b.example:3478"]', ["stun:b.example:3478"]), ("null", ["null"])):
        reply = table.dispatch(None, {"command": "p2p", "action": "start", "data": {"StunUrls": value}})
        assert reply["success"] is True and reply["data"] == {"stun_urls": expected}, (value, reply)
    reply = table.dispatch(None, {"command": "p2p", "action": "start", "data": {"stun_urls": {"a": 1}}})
    assert reply["success"] is False and reply["error"] == "Field 'stun_urls' must be a list"


def test_an_error_answer_carries_no_data_key():
    reply = make_table().dispatch(None, {"command": "p2p", "action": "fly"})
    assert set(reply) == {"success", "error", "timestamp"} and reply["success"] is False


def test_status_accepts_any_action():
    table = make_table()
    for request in ({"command": "status"}, {"command": "status", "action": None},
                    {"command": "STATUS", "action": "whatever"}):
        assert table.dispatch(None, request)["data"] == {"ok": True}


def test_errors_name_the_valid_choices_and_fields():
    table = make_table()
    reply = table.dispatch(None, {"command": "nope"})
    assert reply["success"] is False and "p2p" in reply["error"] and "status" in reply["error"]
    assert "data" not in reply  # the seed's error answer has no data
    reply = table.dispatch(None, {"command": "p2p", "action": "fly"})
    assert "send_file" in reply["error"] and "start" in reply["error"]
    reply = table.dispatch(None, {"command": "p2p", "action": "send_file", "data": {"peer": "Bob"}})
    assert reply["error"] == "Missing field 'file_path'"
    reply = table.dispatch(None, {"command": "p2p", "action": "send_file",
                                  "data": {"peer": "Bob", "file_path": "/x", "chunk_size": "big"}})
    assert reply["error"] == "Field 'chunk_size' must be an integer"
    reply = table.dispatch(None, {"command": "p2p", "action": "send_file",
                                  "data": {"peer": "Bob", "file_path": "/x", "chunk_size": 0}})
    assert reply["error"] == "Field 'chunk_size' must be at least 1"
    reply = table.dispatch(None, {"command": "p2p", "action": "send_file", "data": [1]})
    assert reply["error"] == "Field 'data' must be an object"


def test_handler_bug_is_an_error_without_traceback():
    reply = make_table().dispatch(None, {"command": "x", "action": "boom", "id": 7})
    assert reply["success"] is False and reply["id"] == 7
    assert "Traceback" not in reply["error"] and "ZeroDivision" not in reply["error"]


def test_id_is_echoed():
    assert make_table().dispatch(None, {"command": "status", "id": "abc"})["id"] == "abc"


def test_coerce_rejects_wrong_types():
    for field, value in ((Field("n", "int"), True), (Field("n", "int"), "1.5"), (Field("s"), {"a": 1}),
                         (Field("b", "bool"), "maybe"), (Field("d", "dict"), "not json"),
                         (Field("s", max_len=3), "abcd")):
        try:
            coerce(field, value)
        except ApiError:
            continue
        raise AssertionError(f"{field} accepted {value!r}")


def test_optional_fields_get_defaults():
    assert validate((Field("a", "int", required=False, default=5),), None) == {"a": 5}


def test_an_unencodable_answer_becomes_an_internal_error_with_its_id():
    """A handler bug (a value JSON cannot hold, a cycle) costs an error answer, not the connection."""
    from chatp2p_core.api.server import _encode
    cycle: list = []
    cycle.append(cycle)
    for data in (object(), b"bytes", cycle):
        reply = json.loads(_encode(response(True, data, request_id=3)))
        assert reply["success"] is False and reply["error"] == "Internal error (see the daemon log)"
        assert reply["id"] == 3
    assert json.loads(_encode(response(True, {"text": "a\udfffb"})))["data"]["text"] == "a\udfffb"


def test_timestamps_are_utc_milliseconds_across_second_boundaries():
    from chatp2p_core.util import iso_utc
    stamps = [iso_utc(1764158399.0 + i / 1000) for i in range(995, 1006)] * 2  # cached the 2nd time
    assert stamps[0] == "2025-11-26T11:59:59.995Z" and stamps[4] == "2025-11-26T11:59:59.999Z"
    assert stamps[5] == "2025-11-26T12:00:00.000Z" and stamps[10] == "2025-11-26T12:00:00.005Z"
    assert stamps[:11] == stamps[11:] and iso_utc(0) == "1970-01-01T00:00:00.000Z"


def test_deferred_answers_are_built_when_their_work_is_done():
    """A handler may return a Deferred (work shared with other requests, e.g. a group
    commit); `finish` builds the answer, with the handler's error handling."""
    import gevent
    import gevent.event

    from chatp2p_core.api.table import Deferred

    table = CommandTable()
    results = {}

    def start(_context, data):
        pending = results[data["key"]] = gevent.event.AsyncResult()
        return Deferred(pending, lambda done: Reply(done.get() * 2, {"extra": 1}))

    table.add("work", "start", start, (Field("key"),), blocking=False)
    call = table.prepare({"command": "work", "action": "start", "data": {"key": "a"}, "id": 9})
    deferred = table.run(None, call)
    assert isinstance(deferred, Deferred) and not deferred.pending.ready()
    results["a"].set(21)
    answer = table.finish(call, deferred)     # one answer: two would carry two timestamps
    assert answer == {"success": True, "data": 42, "extra": 1, "id": 9, "timestamp": answer["timestamp"]}
    assert TIMESTAMP.match(answer["timestamp"])
    # dispatch (the embedded UI) waits for the work
    gevent.spawn_later(0.05, lambda: results["b"].set(5))
    assert table.dispatch(None, {"command": "work", "action": "start", "data": {"key": "b"}})["data"] == 10
    # errors of the work reach the client like a handler's
    call = table.prepare({"command": "work", "action": "start", "data": {"key": "c"}})
    deferred = table.run(None, call)
    results["c"].set_exception(ApiError("no such thing"))
    assert table.finish(call, deferred)["error"] == "no such thing"
    deferred = table.run(None, call)
    results["c"].set_exception(KeyError("bug"))
    assert table.finish(call, deferred)["error"] == "Internal error (see the daemon log)"
