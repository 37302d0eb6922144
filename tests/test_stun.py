"""stun: the RFC 8489 codec, the Binding client against coturn and hostile fake servers, and
pystun3 NAT typing (natinfo). Everything stays on loopback; no public server is ever asked."""

import socket
import struct
import time

import gevent
import pytest
from gevent import socket as gsocket
from hypothesis import HealthCheck, given, settings, strategies as st

from chatp2p_core.net import natinfo, stun as stun_client
from chatp2p_core.codec import stun, wire
from chatp2p_core.codec.stun import Attr, Class, Message, Method, StunError
from chatp2p_core.net.stun import StunResponseError, StunTimeout
from chatp2p_core.net.transport import Transport
from coturn import Coturn, turnserver_path
from netproxy import ImpairmentProxy

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
needs_coturn = pytest.mark.skipif(turnserver_path() is None, reason="turnserver (Debian coturn) not installed")

# RFC 5769 test vectors (short-term password, then the long-term one).
RFC5769_KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff"
    "80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249"
    "c1b571a280280004e57a3bcf")
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96")
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9fa"
    "a5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c")
RFC5769_LONG_TERM = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b900000015001c"
    "662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f72670000080014"
    "f67024656dd64a3e02b8e0712e85c9a28ca89666")


# ---------------------------------------------------------------- codec


def test_rfc5769_request_vector():
    message = stun.decode(RFC5769_REQUEST)
    assert (message.method, message.cls) == (Method.BINDING, Class.REQUEST)
    assert message.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert message.get(Attr.SOFTWARE) == "STUN test client"
    assert message.get(Attr.USERNAME) == "evtj:h6vY"
    assert message.unknown == (0x0024,)  # PRIORITY: ICE, comprehension-required, not ours
    assert Attr.FINGERPRINT in message.attributes  # decode checked it
    assert stun.check_integrity(RFC5769_REQUEST, RFC5769_KEY)
    assert not stun.check_integrity(RFC5769_REQUEST, b"wrong")
    assert stun.is_stun(RFC5769_REQUEST)


def test_rfc5769_response_vectors_xor_addresses():
    v4 = stun.decode(RFC5769_IPV4_RESPONSE)
    assert (v4.method, v4.cls) == (Method.BINDING, Class.SUCCESS)
    assert v4.get(Attr.XOR_MAPPED_ADDRESS) == ("192.0.2.1", 32853)
    v6 = stun.decode(RFC5769_IPV6_RESPONSE)
    assert v6.get(Attr.XOR_MAPPED_ADDRESS) == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    for vector in (RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE):
        assert stun.check_integrity(vector, RFC5769_KEY)


def test_rfc5769_long_term_credentials():
    message = stun.decode(RFC5769_LONG_TERM)
    assert message.get(Attr.REALM) == "example.org"
    assert message.get(Attr.NONCE) == b"f//499k954d6OL34oL9FSTvy64sA"
    # The RFC's password "The\u00adM\u00aatr\u2168" is "TheMatrIX" after SASLprep.
    key = stun.long_term_key(message.get(Attr.USERNAME), "example.org", "TheMatrIX")
    assert stun.check_integrity(RFC5769_LONG_TERM, key)


def test_encode_matches_the_vector_up_to_padding_bytes():
    # RFC 5769 pads with spaces; we pad with zeros, so rebuild the vector with zero padding.
    message = Message(Method.BINDING, Class.SUCCESS, bytes.fromhex("b7e7a701bc34d686fa87dfae"),
                      {Attr.SOFTWARE: "test vector", Attr.XOR_MAPPED_ADDRESS: ("192.0.2.1", 32853)})
    data = stun.encode(message, RFC5769_KEY, add_fingerprint=True)
    assert len(data) == len(RFC5769_IPV4_RESPONSE)
    assert data[:20 + 4 + 11] == RFC5769_IPV4_RESPONSE[:20 + 4 + 11]
    assert data[36:48] == RFC5769_IPV4_RESPONSE[36:48]  # XOR-MAPPED-ADDRESS bytes
    assert stun.check_integrity(data, RFC5769_KEY)
    assert stun.decode(data).attributes[Attr.XOR_MAPPED_ADDRESS] == ("192.0.2.1", 32853)


@given(st.integers(0, 0xFFF), st.sampled_from(list(Class)))
def test_message_type_interleaves_class_bits(method, cls):
    value = stun.message_type(method, cls)
    assert value < 0x4000
    assert stun.split_message_type(value) == (method, cls)


def test_known_message_types():
    assert stun.message_type(Method.BINDING, Class.REQUEST) == 0x0001
    assert stun.message_type(Method.BINDING, Class.SUCCESS) == 0x0101
    assert stun.message_type(Method.BINDING, Class.ERROR) == 0x0111
    assert stun.message_type(Method.SEND, Class.INDICATION) == 0x0016
    assert stun.message_type(Method.DATA, Class.INDICATION) == 0x0017
    assert stun.message_type(Method.CHANNEL_BIND, Class.SUCCESS) == 0x0109


addresses = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535)))
text = st.text(max_size=60)
u32 = st.integers(0, 2**32 - 1)
attribute_values = st.fixed_dictionaries({}, optional={
    Attr.MAPPED_ADDRESS: addresses,
    Attr.XOR_MAPPED_ADDRESS: addresses,
    Attr.XOR_PEER_ADDRESS: addresses,
    Attr.XOR_RELAYED_ADDRESS: addresses,
    Attr.OTHER_ADDRESS: addresses,
    Attr.CHANGED_ADDRESS: addresses,
    Attr.RESPONSE_ORIGIN: addresses,
    Attr.USERNAME: text,
    Attr.REALM: text,
    Attr.SOFTWARE: text,
    Attr.NONCE: st.binary(max_size=40),
    Attr.DATA: st.binary(max_size=300),
    Attr.LIFETIME: u32,
    Attr.CHANGE_REQUEST: st.sampled_from([0, stun.CHANGE_PORT, stun.CHANGE_IP, 6]),
    Attr.CHANNEL_NUMBER: st.integers(0x4000, 0x4FFF),
    Attr.REQUESTED_TRANSPORT: st.just(17),
    Attr.DONT_FRAGMENT: st.just(True),
    Attr.ERROR_CODE: st.tuples(st.integers(300, 699), st.text(max_size=40).map(lambda s: s.rstrip("\x00"))),
    Attr.UNKNOWN_ATTRIBUTES: st.lists(st.integers(0, 0xFFFF), max_size=5).map(tuple),
})


@FAST
@given(st.sampled_from(list(Method)), st.sampled_from(list(Class)), st.binary(min_size=12, max_size=12),
       attribute_values, st.one_of(st.none(), st.binary(min_size=1, max_size=32)), st.booleans(), st.booleans())
def test_encode_decode_round_trip(method, cls, txid, attributes, key, sha256, add_fingerprint):
    message = Message(method, cls, txid, dict(attributes))
    data = stun.encode(message, key, sha256=sha256, add_fingerprint=add_fingerprint)
    assert stun.is_stun(data) and wire.classify(data) is wire.Kind.STUN
    decoded = stun.decode(data)
    assert (decoded.method, decoded.cls, decoded.transaction_id) == (method, cls, txid)
    for attr, value in attributes.items():
        assert decoded.attributes[attr] == value
    if key is not None:
        assert stun.check_integrity(data, key)
        assert not stun.check_integrity(data, key + b"x")
        integrity = Attr.MESSAGE_INTEGRITY_SHA256 if sha256 else Attr.MESSAGE_INTEGRITY
        assert integrity in decoded.attributes
    else:
        assert not stun.check_integrity(data, b"any")
    assert (Attr.FINGERPRINT in decoded.attributes) == add_fingerprint


@FAST
@given(st.binary(max_size=200))
def test_decode_raises_only_stun_error_on_garbage(data):
    try:
        stun.decode(data)
    except StunError:
        pass
    stun.is_stun(data)
    stun.check_integrity(data, b"k")


def _header_then(body: bytes, txid: bytes = b"t" * 12, mtype: int = 0x0101) -> bytes:
    return struct.pack(">HHI12s", mtype, len(body), stun.MAGIC_COOKIE, txid) + body


@FAST
@given(st.binary(max_size=120), st.integers(0, 0x3FFF))
def test_decode_with_a_valid_header_raises_only_stun_error(body, mtype):
    body = body + bytes(-len(body) % 4)
    try:
        stun.decode(_header_then(body, mtype=mtype))
    except StunError:
        pass


@FAST
@given(st.data())
def test_mutated_messages_raise_only_stun_error(data):
    message = Message(Method.ALLOCATE, Class.SUCCESS, attributes={
        Attr.XOR_RELAYED_ADDRESS: ("203.0.113.5", 50000), Attr.XOR_MAPPED_ADDRESS: ("2001:db8::1", 7),
        Attr.LIFETIME: 600, Attr.SOFTWARE: "x", Attr.ERROR_CODE: (438, "Stale nonce")})
    encoded = bytearray(stun.encode(message, b"key", add_fingerprint=data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    for candidate in (bytes(encoded), bytes(encoded[:cut])):
        try:
            stun.decode(candidate)
        except StunError:
            pass


def test_malformed_messages_are_refused_with_reasons():
    good = stun.encode(Message(Method.BINDING, Class.REQUEST), add_fingerprint=True)
    cases = {
        "shorter than a STUN header": good[:19],
        "first two bits": b"\x40" + good[1:],
        "does not match": good + b"\0\0\0\0",
        "not a multiple of 4": good[:2] + b"\x00\x09" + good[4:] + b"\0",
        "no magic cookie": good[:4] + b"\0\0\0\0" + good[8:],
        "FINGERPRINT does not match": good[:-1] + bytes([good[-1] ^ 1]),
        "overruns": _header_then(struct.pack(">HH", 0x0006, 8) + b"abcd"),
        "not UTF-8": _header_then(struct.pack(">HH", 0x0006, 4) + b"\xff\xfe\xfd\xfc"),
        "family": _header_then(struct.pack(">HHBBH", 0x0001, 8, 0, 3, 1) + b"\1\2\3\4"),
        "ERROR-CODE with class": _header_then(struct.pack(">HHHBB", 0x0009, 4, 0, 7, 0)),
        "FINGERPRINT is not the last": _header_then(struct.pack(">HHI", 0x8028, 4, 0)
                                                     + struct.pack(">HHI", 0x000D, 4, 1)),
        "must be bytes": "not bytes",
    }
    for reason, data in cases.items():
        with pytest.raises(StunError, match=reason):
            stun.decode(data)


def test_attributes_after_integrity_are_ignored_and_first_instance_wins():
    txid = b"x" * 12
    body = (struct.pack(">HHI", 0x000D, 4, 5) + struct.pack(">HHI", 0x000D, 4, 9)
            + struct.pack(">HH", 0x0008, 20) + bytes(20) + struct.pack(">HH", 0x0006, 4) + b"late")
    message = stun.decode(_header_then(body, txid))
    assert message.get(Attr.LIFETIME) == 5
    assert Attr.USERNAME not in message.attributes


def test_rfc3489_messages_only_on_request():
    classic = bytes.fromhex("0101000c") + b"0123456789abcdef" + bytes.fromhex("000100080001a14f7f000001")
    with pytest.raises(StunError, match="magic cookie"):
        stun.decode(classic)
    message = stun.decode(classic, rfc3489=True)
    assert message.transaction_id == b"0123456789abcdef"
    assert message.get(Attr.MAPPED_ADDRESS) == ("127.0.0.1", 0xA14F)
    assert not stun.is_stun(classic)


def test_is_stun_quick_check():
    data = stun.encode(Message(Method.BINDING, Class.REQUEST))
    assert stun.is_stun(data)
    assert not stun.is_stun(data[:-4] if len(data) > 20 else data + b"\0")
    assert not stun.is_stun(b"\xc1" + data[1:])
    assert not stun.is_stun(b"")


def test_encode_refuses_bad_values():
    for attributes in ({Attr.XOR_MAPPED_ADDRESS: ("not-an-ip", 1)}, {Attr.LIFETIME: -1},
                       {Attr.ERROR_CODE: (200, "ok")}, {Attr.USERNAME: "u" * 600}):
        with pytest.raises(StunError):
            stun.encode(Message(Method.BINDING, Class.REQUEST, attributes=attributes))
    with pytest.raises(StunError):
        stun.encode(Message(Method.BINDING, Class.REQUEST, transaction_id=b"short"))


def test_parse_server_urls():
    assert stun.parse_server_url("stun:127.0.0.1") == ("127.0.0.1", 3478)
    assert stun.parse_server_url("stun:example.org:19302") == ("example.org", 19302)
    assert stun.parse_server_url(" STUN:[2001:db8::1]:3479 ") == ("2001:db8::1", 3479)
    assert stun.parse_server_url("stun:[2001:db8::1]") == ("2001:db8::1", 3478)
    bad = {"": "empty", "127.0.0.1:3478": "must start with 'stun:'", "stun://h:1": "no '//'",
           "stun:": "no host", "stun::3478": "no host", "stun:h:0": "bad port", "stun:h:99999": "bad port",
           "stun:h:x": "bad port", "stun:h:": "bad port", "stun:2001:db8::1": "brackets",
           "stun:[::1": "unterminated", "stun:h?transport=udp": "unexpected", "turn:h": "must start"}
    for url, reason in bad.items():
        with pytest.raises(StunError, match=reason):
            stun.parse_server_url(url)


def test_infer_mapping():
    me, other = ("198.51.100.7", 40000), ("198.51.100.7", 40001)
    a, a2, b = ("192.0.2.1", 3478), ("192.0.2.1", 3479), ("203.0.113.9", 3478)
    assert stun_client.infer_mapping([]) == stun_client.MAPPING_UNKNOWN
    assert stun_client.infer_mapping([(a, me)]) == stun_client.MAPPING_UNKNOWN
    assert stun_client.infer_mapping([(a, me), (b, me)]) == stun_client.MAPPING_INDEPENDENT
    assert stun_client.infer_mapping([(a, me), (b, other)]) == stun_client.MAPPING_DEPENDENT
    assert stun_client.infer_mapping([(a, me), (a2, other)]) == stun_client.MAPPING_PORT_DEPENDENT
    assert stun_client.infer_mapping([(a, me), (a2, me)]) == stun_client.MAPPING_UNKNOWN  # address-dependent agrees too
    assert stun_client.infer_mapping([(a, me), (a2, me), (b, other)]) == stun_client.MAPPING_DEPENDENT


# ---------------------------------------------------------------- Binding client on a real Transport


class Node:
    """The node's side: one Transport, STUN datagrams handed to a StunClient."""

    def __init__(self):
        self.transport = Transport("127.0.0.1", 0)
        self.client = stun_client.StunClient(self.transport.send)
        self.transport.register("stun", lambda d: wire.classify(d) is wire.Kind.STUN, self.client.handle)
        self.transport.start()

    def close(self):
        self.transport.stop()


class FakeServer:
    """A UDP 'STUN server' on loopback whose answer to each request is `reply(request)`
    (None: stay silent). Counts the requests it got."""

    def __init__(self, reply, host="127.0.0.1"):
        self.reply = reply
        self.requests = []
        self.sock = gsocket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.address = self.sock.getsockname()[:2]
        self.loop = gevent.spawn(self._serve)

    def _serve(self):
        while True:
            data, source = self.sock.recvfrom(2048)
            self.requests.append((time.monotonic(), data))
            for answer in self.reply(data, source) or ():
                self.sock.sendto(answer, source)

    def close(self):
        self.loop.kill()
        self.sock.close()


def _answer(request: bytes, cls=Class.SUCCESS, **attributes) -> bytes:
    txid = request[8:20]
    return stun.encode(Message(Method.BINDING, cls, txid, {Attr[k]: v for k, v in attributes.items()}))


@pytest.fixture
def node():
    node = Node()
    yield node
    node.close()


@pytest.fixture
def fake():
    servers = []

    def make(reply, host="127.0.0.1"):
        servers.append(FakeServer(reply, host))
        return servers[-1]
    yield make
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def coturn2():
    """STUN-only coturn on 127.0.0.1 and 127.0.0.2 (RFC 5780: CHANGE-REQUEST works)."""
    if turnserver_path() is None:
        pytest.skip("turnserver (Debian coturn) not installed")
    with Coturn(addresses=("127.0.0.1", "127.0.0.2")) as server:
        yield server


@pytest.fixture(scope="module")
def coturn1():
    """STUN-only coturn on 127.0.0.1 alone: it answers CHANGE-REQUEST with 420."""
    if turnserver_path() is None:
        pytest.skip("turnserver (Debian coturn) not installed")
    with Coturn(addresses=("127.0.0.1",)) as server:
        yield server


@needs_coturn
def test_binding_through_coturn_gives_our_loopback_address(node, coturn2):
    assert node.client.binding(coturn2.address()) == ("127.0.0.1", node.transport.port)
    assert node.client.binding(coturn2.address("127.0.0.2")) == ("127.0.0.1", node.transport.port)
    assert node.transport.counters["stun_errors"] == 0


@needs_coturn
def test_discover_two_server_addresses_is_endpoint_independent(node, coturn2):
    started = time.monotonic()
    result = node.client.discover([coturn2.url("127.0.0.1"), coturn2.url("127.0.0.2")])
    assert time.monotonic() - started < 1.0  # parallel, and coturn answers at once
    assert result.mapping == stun_client.MAPPING_INDEPENDENT
    assert result.mapped == ("127.0.0.1", node.transport.port)
    assert result.errors == {}
    # Two ports of one IP agreeing do not tell endpoint-independent from address-dependent.
    same_ip = node.client.discover([coturn2.url(), "stun:127.0.0.1:%d" % (coturn2.port + 1)])
    assert len(same_ip.answers) == 2 and same_ip.mapping == stun_client.MAPPING_UNKNOWN


@needs_coturn
def test_discover_sees_a_nat_like_proxy_as_dependent_mapping(node, coturn2):
    # The proxy forwards from its own upstream socket, like a NAT mapping per destination.
    with ImpairmentProxy(coturn2.address("127.0.0.2"), listen=("127.0.0.2", 0)) as other_ip, \
            ImpairmentProxy(coturn2.address(), listen=("127.0.0.1", 0)) as same_ip:
        direct = coturn2.url()
        result = node.client.discover([direct, "stun:%s:%d" % other_ip.address])
        assert result.mapping == stun_client.MAPPING_DEPENDENT
        assert result.answers[direct] == ("127.0.0.1", node.transport.port)
        result = node.client.discover([direct, "stun:%s:%d" % same_ip.address])
        assert result.mapping == stun_client.MAPPING_PORT_DEPENDENT


def test_silent_server_times_out_with_bounded_retransmissions(node, fake):
    silent = fake(lambda data, source: None)
    started = time.monotonic()
    with pytest.raises(StunTimeout, match=r"no STUN answer from 127\.0\.0\.1:\d+ within 3 s \(8 requests sent\)"):
        node.client.binding(silent.address)
    elapsed = time.monotonic() - started
    assert 2.9 <= elapsed <= 3.5
    times = [t for t, _ in silent.requests]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # RTO 100, 200, 400 ms, then capped at 500 ms (timers may fire late on a busy machine).
    for gap, rto in zip(gaps, [0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5]):
        assert rto - 0.01 <= gap <= rto + 0.15, gaps
    assert len({data for _, data in silent.requests}) == 1  # retransmissions are identical


def test_error_response_ends_at_once(node, fake):
    refusing = fake(lambda data, source: [_answer(data, Class.ERROR, ERROR_CODE=(400, "Bad Request"))])
    started = time.monotonic()
    with pytest.raises(StunResponseError, match=r"answered error 400 \(Bad Request\)") as caught:
        node.client.binding(refusing.address)
    assert caught.value.code == 400
    assert time.monotonic() - started < 0.5


def test_garbage_answers_end_in_a_clear_timeout(node, fake):
    def garbage(data, source):
        return [b"\x01\x01\x00\x08" + data[4:20] + b"\xff" * 3,  # classified STUN, length lies
                b"\x01\x01\x00\x0c" + bytes(28),  # no magic cookie
                b"\xde\xad\xbe\xef"]  # not STUN at all: the transport drops it
    noisy = fake(garbage)
    started = time.monotonic()
    with pytest.raises(StunTimeout, match="unusable replies ignored, last: no magic cookie"):
        node.client.binding(noisy.address, timeout=1.0)
    assert time.monotonic() - started < 1.3
    assert node.transport.counters["dropped_unknown"] >= 1
    assert node.transport.counters["stun_errors"] == 0


def test_answer_without_mapped_address_is_an_error(node, fake):
    empty = fake(lambda data, source: [_answer(data)])
    with pytest.raises(StunError, match="without a mapped address"):
        node.client.binding(empty.address, timeout=1.0)


def test_strays_and_spoofed_sources_are_ignored(node, fake):
    # The real server answers late; meanwhile another address sends a forged answer with the
    # right transaction id and a wrong mapping, and the server a stray with a wrong id.
    decoy = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    decoy.bind(("127.0.0.1", 0))

    def reply(data, source):
        decoy.sendto(_answer(data, XOR_MAPPED_ADDRESS=("192.0.2.66", 666)), source)
        stray = _answer(b"\0" * 8 + b"z" * 12, XOR_MAPPED_ADDRESS=("192.0.2.77", 777))
        gevent.sleep(0.05)
        return [stray, _answer(data, XOR_MAPPED_ADDRESS=source)]
    server = fake(reply)
    try:
        assert node.client.binding(server.address, timeout=1.0) == ("127.0.0.1", node.transport.port)
    finally:
        decoy.close()
    assert not node.client.handle(_answer(b"\0" * 20, XOR_MAPPED_ADDRESS=("192.0.2.1", 1)), server.address)


def test_discover_reports_each_failure_and_rejects_bad_urls(node, fake):
    good = fake(lambda data, source: [_answer(data, XOR_MAPPED_ADDRESS=source)])
    bad = fake(lambda data, source: [_answer(data, Class.ERROR, ERROR_CODE=(500, "Server Error"))])
    silent = fake(lambda data, source: None)
    urls = ["stun:%s:%d" % server.address for server in (good, bad, silent)]
    started = time.monotonic()
    result = node.client.discover(urls, timeout=1.0)
    assert time.monotonic() - started < 1.3
    assert result.answers == {urls[0]: ("127.0.0.1", node.transport.port)}
    assert "error 500" in result.errors[urls[1]] and "no STUN answer" in result.errors[urls[2]]
    assert result.mapping == stun_client.MAPPING_UNKNOWN and result.mapped == ("127.0.0.1", node.transport.port)
    sent_before = node.transport.counters["sent"]
    with pytest.raises(StunError, match="bad port"):
        node.client.discover([urls[0], "stun:127.0.0.1:http"])
    assert node.transport.counters["sent"] == sent_before  # nothing sent for a bad list


# ---------------------------------------------------------------- natinfo (pystun3)


@needs_coturn
def test_natinfo_open_internet_on_loopback(coturn2):
    started = time.monotonic()
    info = natinfo.classify_nat(coturn2.address(), timeout=5.0)
    assert time.monotonic() - started < 5.5
    assert info.nat_type == natinfo.OPEN_INTERNET, info.detail
    assert info.mapped is not None and info.mapped[0] == "127.0.0.1"


@needs_coturn
def test_natinfo_one_address_server_is_unknown(coturn1):
    started = time.monotonic()
    info = natinfo.classify_nat(coturn1.address(), timeout=5.0)
    assert time.monotonic() - started < 1.0  # the guard aborts; pystun3 alone would loop forever
    assert info.nat_type == natinfo.UNKNOWN
    assert "cannot answer change requests" in info.detail
    assert info.mapped is not None


def test_natinfo_error_answers_are_unknown_not_a_hang(fake):
    refusing = fake(lambda data, source: [_classic_error(data)])
    started = time.monotonic()
    info = natinfo.classify_nat(refusing.address, timeout=3.0, per_try=0.2)
    assert time.monotonic() - started < 1.0
    assert info.nat_type == natinfo.UNKNOWN and "answered error 420" in info.detail


def test_natinfo_garbage_and_silence_are_bounded(fake):
    noisy = fake(lambda data, source: [b"\x7f\xff" + data[2:20], b"\x01\x01\x00\x00" + data[4:20] + b"junk"])
    started = time.monotonic()
    info = natinfo.classify_nat(noisy.address, timeout=3.0, per_try=0.2)
    assert time.monotonic() - started < 1.5
    assert info.nat_type == natinfo.UNKNOWN and "unusable answers" in info.detail  # pystun3: KeyError
    silent = fake(lambda data, source: None)
    started = time.monotonic()
    info = natinfo.classify_nat(silent.address, timeout=3.0, per_try=0.2)
    assert time.monotonic() - started < 1.5
    assert info.nat_type == natinfo.BLOCKED and "no answer" in info.detail
    assert len(silent.requests) == 4  # pystun3's own tries, to the given server only


def test_natinfo_overall_timeout_wins(fake):
    # An answer to Test 1 (with a usable CHANGED-ADDRESS), then silence, with a tiny budget.
    def first_only(data, source):
        if len(first_only.seen) == 0:
            first_only.seen.append(data)
            return [_classic_answer(data, source, changed=("127.0.0.2", 9))]
        return None
    first_only.seen = []
    server = fake(first_only)
    started = time.monotonic()
    info = natinfo.classify_nat(server.address, timeout=0.5, per_try=0.2)
    assert time.monotonic() - started < 0.8
    assert info.nat_type == natinfo.UNKNOWN and "no verdict within 0.5 s" in info.detail
    assert info.mapped == ("127.0.0.1", 4242)


def _classic_error(request: bytes) -> bytes:
    """An RFC 3489-style error answer (pystun3 sends no magic cookie)."""
    body = struct.pack(">HHHBB", 0x0009, 4 + 8, 0, 4, 20) + b"Unknown!"
    return struct.pack(">HH", 0x0111, len(body)) + request[4:20] + body


def _classic_answer(request: bytes, source, changed) -> bytes:
    body = (struct.pack(">HHBBH4s", 0x0001, 8, 0, 1, 4242, socket.inet_aton("127.0.0.1"))
            + struct.pack(">HHBBH4s", 0x0005, 8, 0, 1, changed[1], socket.inet_aton(changed[0])))
    return struct.pack(">HH", 0x0101, len(body)) + request[4:20] + body


def test_discover_asks_over_both_families_on_a_dual_stack_socket(fake):
    """A dual-stack socket ("::") asks an IPv4 and an IPv6 server from one port, and keeps
    a public address per family; the IPv4 server sees a plain IPv4 source (the transport
    maps it to ::ffff:127.0.0.1 on the way out) and the client matches its answer."""
    answer = lambda data, source: [_answer(data, XOR_MAPPED_ADDRESS=tuple(source[:2]))]  # noqa: E731
    v4, v6 = fake(answer, "127.0.0.1"), fake(answer, "::1")
    transport = Transport("::", 0)
    client = stun_client.StunClient(transport.send)
    transport.register("stun", lambda d: wire.classify(d) is wire.Kind.STUN, client.handle)
    transport.start()
    try:
        assert transport.dual_stack and transport.families == (socket.AF_INET, socket.AF_INET6)
        assert transport.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert transport.sock.getsockopt(socket.IPPROTO_IP, 10) == 3      # IP_MTU_DISCOVER: probe
        assert transport.sock.getsockopt(socket.IPPROTO_IPV6, 23) == 3    # IPV6_MTU_DISCOVER: probe
        urls = [f"stun:127.0.0.1:{v4.address[1]}", f"stun:[::1]:{v6.address[1]}"]
        found = client.discover(urls, families=transport.families)
        assert found.mapped == ("127.0.0.1", transport.port), found
        assert found.mapped6 == ("::1", transport.port), found
        assert found.answers == {urls[0]: found.mapped} and found.answers6 == {urls[1]: found.mapped6}
        assert not found.errors and not found.errors6
        only4 = client.discover(urls, families=(socket.AF_INET,))
        assert only4.mapped == ("127.0.0.1", transport.port) and only4.mapped6 is None
        assert "not an IPv4 address" in only4.errors[urls[1]]
    finally:
        transport.stop()


def test_a_specific_host_keeps_its_family():
    for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
        transport = Transport(host, 0)
        transport.start()
        try:
            assert not transport.dual_stack and transport.families == (family,)
            assert transport.sock.getsockname()[0] == host
        finally:
            transport.stop()
