"""The incremental request scanner: framing, resynchronisation, limits, linear cost."""

import json
import time

from hypothesis import given, settings, strategies as st

from chatp2p_core.codec.jsonstream import BOM, JsonStreamScanner


def objects(items):
    return [i.value for i in items if i.kind == "object"]


def test_back_to_back_objects_without_delimiter():
    scanner = JsonStreamScanner(1 << 20)
    items = scanner.feed(b'{"Command":"status"}{"Command":"contacts","Action":"list"}')
    assert objects(items) == [{"Command": "status"}, {"Command": "contacts", "Action": "list"}]


def test_newline_delimited_and_split_anywhere():
    stream = b'{"a": "x}y{z"}\n{"b": [1, {"c": "\\"}"}]}\r\n  {"d": "\\\\"}'
    expected = [{"a": "x}y{z"}, {"b": [1, {"c": '"}'}]}, {"d": "\\"}]
    for cut in range(len(stream)):
        scanner = JsonStreamScanner(1 << 20)
        items = scanner.feed(stream[:cut]) + scanner.feed(stream[cut:])
        assert objects(items) == expected, cut


def test_lines_holding_several_objects_or_part_of_one():
    """Lines that are not exactly one object take the incremental way, with the same result."""
    scanner = JsonStreamScanner(1 << 20)
    items = scanner.feed(b'{"a":1}{"b":2} {"c":3}\n{\n  "d": [1,\n 2]\n}\n{"e":5}\n')
    assert objects(items) == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": [1, 2]}, {"e": 5}]


def test_invalid_json_is_reported_with_the_parser_error_and_skipped():
    scanner = JsonStreamScanner(1 << 20)
    items = scanner.feed(b'{"a": tru}\n{"b": "x"\x00}\n{"ok": 1}\n')
    assert [i.kind for i in items] == ["invalid", "invalid", "object"]
    assert "Expecting value" in items[0].error and "line 1" in items[0].error
    assert items[2].value == {"ok": 1}


def test_deep_nesting_is_invalid_not_a_crash():
    scanner = JsonStreamScanner(1 << 22)
    deep = b'{"a":' * 100000 + b"1" + b"}" * 100000
    items = scanner.feed(deep + b"\n" + deep + b'{"ok":1}\n')
    assert [i.kind for i in items] == ["invalid", "invalid", "object"]
    assert items[0].error == "nested too deeply"


def test_bom_is_skipped_even_when_split():
    scanner = JsonStreamScanner(1000)
    items = scanner.feed(BOM[:1]) + scanner.feed(BOM[1:] + b'{"x":1}')
    assert [i.kind for i in items] == ["object"]


def test_junk_is_reported_and_skipped_to_newline():
    scanner = JsonStreamScanner(1000)
    items = scanner.feed(b'GET / HTTP/1.1\r\nHost: x\r\n{"ok":1}')
    assert [i.kind for i in items] == ["junk", "junk", "object"]


def test_too_large_object():
    scanner = JsonStreamScanner(100)
    items = scanner.feed(b'{"a":"' + b"x" * 200)
    assert [i.kind for i in items] == ["too_large"]


def test_too_large_object_fed_slowly():
    scanner = JsonStreamScanner(100)
    kinds = []
    for byte in b'{"a":"' + b"x" * 200:
        kinds += [i.kind for i in scanner.feed(bytes([byte]))]
    assert kinds[0] == "too_large"  # the server closes the connection there


def test_byte_at_a_time_megabyte_is_linear():
    payload = json.dumps({"command": "x", "data": {"blob": "a\\\"b" * (1 << 18)}}).encode()
    assert len(payload) > 1 << 20
    scanner = JsonStreamScanner(2 << 20)

    def feed(data, step):
        start = time.process_time()
        found = []
        for i in range(0, len(data), step):
            found += scanner.feed(data[i:i + step])
        return found, time.process_time() - start

    half = payload[: len(payload) // 2]
    _, first = feed(half, 1)
    found, second = feed(payload[len(half):], 1)
    assert [i.kind for i in found] == ["object"]
    assert found[0].value["command"] == "x"
    # Quadratic cost would make the second half several times dearer than the first.
    assert second < first * 2 + 0.5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10), max_size=4), max_size=5), st.lists(st.integers(1, 40), max_size=10),
    st.sampled_from([b"", b"\n", b" \r\n"]))
def test_any_objects_any_split(values, cuts, separator):
    stream = separator.join(json.dumps(v).encode() for v in values)
    scanner = JsonStreamScanner(1 << 20)
    items, position = [], 0
    for cut in cuts:
        items += scanner.feed(stream[position:position + cut])
        position += cut
    items += scanner.feed(stream[position:])
    assert objects(items) == values


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    scanner = JsonStreamScanner(64)
    for item in scanner.feed(data):
        assert item.kind in ("object", "invalid", "junk", "too_large")
