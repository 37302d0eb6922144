"""turn: ChannelData codec, and a TurnClient on a real Transport relaying through a private
coturn to a plain UDP peer on loopback, both ways."""

import socket
import time

import gevent
import gevent.queue
import pytest
from gevent import socket as gsocket
from hypothesis import given, settings, strategies as st

from chatp2p_core.net import turn
from chatp2p_core.codec import stun, wire
from chatp2p_core.codec.stun import Attr, Class, Method
from chatp2p_core.net.transport import Transport
from chatp2p_core.net.turn import TurnClient, TurnError, TurnResponseError, TurnState
from coturn import Coturn, turnserver_path
from poll import wait_for

USER, PASSWORD = "alice", "s3cret"
# Short server-side lifetimes, so that refreshes are exercised within seconds: permissions and
# channels last 3 s, a nonce goes stale after 2 s (438 then a retry with the new nonce).
SHORT_LIFETIMES = ["--stale-nonce=2", "--permission-lifetime=3", "--channel-lifetime=3"]

server: Coturn = None  # the module's coturn, started by setup_module


def setup_module():
    global server
    if turnserver_path() is None:
        return
    server = Coturn(turn=True, user=USER, password=PASSWORD, extra=SHORT_LIFETIMES).start()


def teardown_module():
    if server is not None:
        server.stop()


needs_coturn = pytest.mark.skipif(turnserver_path() is None, reason="turnserver (Debian coturn) not installed")


# ---------------------------------------------------------------- codec


@settings(max_examples=200, deadline=None)
@given(st.integers(turn.CHANNEL_MIN, turn.CHANNEL_MAX), st.binary(max_size=1300), st.booleans())
def test_channel_data_round_trip(channel, data, pad):
    encoded = turn.encode_channel_data(channel, data, pad=pad)
    assert len(encoded) == 4 + len(data) + ((-len(data) % 4) if pad else 0)
    assert turn.is_channel_data(encoded) and wire.classify(encoded) is wire.Kind.TURN_CHANNEL
    assert turn.decode_channel_data(encoded) == (channel, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_channel_data_decode_raises_only_turn_error(data):
    try:
        channel, payload = turn.decode_channel_data(data)
    except TurnError:
        return
    assert turn.CHANNEL_MIN <= channel <= turn.CHANNEL_MAX and len(payload) <= len(data) - 4


def test_channel_data_errors():
    cases = {b"\x40\x00\x00": "shorter than its header",
             b"\x3f\xff\x00\x00": "outside",
             b"\x50\x00\x00\x00": "outside",
             b"\x40\x00\x00\x05abcd": "claims 5 bytes but carries 4",
             b"\x40\x00\x00\x01abcde": "4 stray bytes"}
    for data, reason in cases.items():
        with pytest.raises(TurnError, match=reason):
            turn.decode_channel_data(data)
    assert turn.decode_channel_data(b"\x40\x01\x00\x01a\0\0\0") == (0x4001, b"a")  # padded
    with pytest.raises(TurnError, match="outside"):
        turn.encode_channel_data(0x5000, b"x")


def test_parse_turn_url():
    assert turn.parse_turn_url("turn:127.0.0.1") == ("127.0.0.1", 3478)
    assert turn.parse_turn_url("turn:relay.example:3479?transport=udp") == ("relay.example", 3479)
    for url, reason in {"turn:h?transport=tcp": "only", "turns:h": "TLS", "stun:h": "must start",
                        "turn:h:x": "bad port"}.items():
        with pytest.raises(TurnError, match=reason):
            turn.parse_turn_url(url)


# ---------------------------------------------------------------- against coturn


class Node:
    """The node's side, wired as the daemon should: one Transport; STUN and ChannelData
    datagrams go to the TurnClient, and what it returns is data from a peer."""

    def __init__(self, address=None, **options):
        self.transport = Transport("127.0.0.1", 0)
        self.transport.start()
        self.received = gevent.queue.Queue()
        self.kinds = []  # wire.Kind of each datagram from the server
        self.errors = []  # error codes the server answered
        self.sent = []  # every datagram the client sent
        self.client = self.new_client(address, **options)
        self.transport.register("turn", lambda d: wire.classify(d) in (wire.Kind.STUN, wire.Kind.TURN_CHANNEL),
                                self._on_datagram)

    def new_client(self, address=None, password=PASSWORD, **options):
        self.client = TurnClient(self._send, address or server.address(), USER, password, **options)
        return self.client

    def _send(self, data, address):
        self.sent.append(data)
        self.transport.send(data, address)

    def _on_datagram(self, data, address):
        self.kinds.append(wire.classify(data))
        if data[0] < 0x40:
            message = stun.decode(data)
            if message.error:
                self.errors.append(message.error[0])
        relayed = self.client.handle(data, address)
        if relayed is not None:
            self.received.put(relayed)

    def close(self):
        if self.client.state is not TurnState.CLOSED:
            self.client.close()
        self.transport.stop()


class Peer:
    """A plain UDP socket on loopback: the far end of the relay."""

    def __init__(self, host="127.0.0.1"):
        self.sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(2.0)
        self.address = self.sock.getsockname()

    def receive(self):
        return self.sock.recvfrom(2048)

    def close(self):
        self.sock.close()


@pytest.fixture
def node():
    node = Node()
    yield node
    node.close()


@pytest.fixture
def peer():
    peer = Peer()
    yield peer
    peer.close()


def _port_free(address) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(address)
        return True
    except OSError:
        return False
    finally:
        probe.close()


@needs_coturn
def test_allocate_with_long_term_credentials(node):
    relayed = node.client.allocate()
    assert node.client.state is TurnState.ALLOCATED
    assert relayed[0] == "127.0.0.1" and relayed == node.client.relayed
    assert node.client.mapped == ("127.0.0.1", node.transport.port)
    assert node.client.lifetime == turn.DEFAULT_LIFETIME
    assert node.errors == [401]  # the unauthenticated first try, as the mechanism wants
    assert not _port_free(relayed)  # coturn holds the relay socket
    with pytest.raises(TurnError, match="cannot allocate: TURN allocation at .* is allocated"):
        node.client.allocate()


@needs_coturn
def test_wrong_password_is_a_clear_error(node):
    node.new_client(password="wrong")
    started = time.monotonic()
    with pytest.raises(TurnResponseError) as caught:
        node.client.allocate()
    assert time.monotonic() - started < 1.0
    assert str(caught.value) == "TURN authentication failed for user alice at 127.0.0.1:%d" % server.port
    assert caught.value.code == 401
    assert node.client.state is TurnState.FAILED
    with pytest.raises(TurnError, match="is failed"):
        node.client.permit(("127.0.0.1", 9))


@needs_coturn
def test_relay_both_ways_with_send_indications_then_a_channel(node, peer):
    relayed = node.client.allocate()
    with pytest.raises(TurnError, match="no TURN permission for 127.0.0.1:%d" % peer.address[1]):
        node.client.send_to(peer.address, b"too early")
    stranger = Peer("127.0.0.2")  # permissions are per IP address: a stranger needs another one
    try:
        node.client.permit(peer.address)
        # Send indication out, Data indication back.
        node.client.send_to(peer.address, b"x" * 1100)
        assert len(node.sent[-1]) == 1100 + turn.SEND_OVERHEAD <= wire.MAX_DATAGRAM
        assert peer.receive() == (b"x" * 1100, relayed)
        peer.sock.sendto(b"hello from the peer", relayed)
        assert node.received.get(timeout=2) == (peer.address, b"hello from the peer")
        assert node.kinds[-1] is wire.Kind.STUN
        # An address without permission cannot reach us through the relay.
        stranger.sock.sendto(b"let me in", relayed)
        # A channel: ChannelData both ways.
        channel = node.client.bind_channel(peer.address)
        assert channel == turn.CHANNEL_MIN and node.client.bind_channel(peer.address) == channel
        node.client.send_to(peer.address, b"over the channel")
        assert node.sent[-1] == turn.encode_channel_data(channel, b"over the channel")
        assert peer.receive() == (b"over the channel", relayed)
        peer.sock.sendto(b"channel reply", relayed)
        assert node.received.get(timeout=2) == (peer.address, b"channel reply")
        assert node.kinds[-1] is wire.Kind.TURN_CHANNEL
        assert node.received.empty()  # the stranger's datagram never arrived
    finally:
        stranger.close()
    # A forged ChannelData from the peer's own address (not via the server) is not relayed data.
    assert node.client.handle(turn.encode_channel_data(channel, b"forged"), peer.address) is None
    assert node.client.counters["not_from_server"] == 1


@needs_coturn
def test_refreshes_keep_permissions_channels_and_nonce_alive(peer):
    # Two clients: one refreshes every second, one keeps the default 4/9-minute schedule.
    # coturn's permissions and channels here last 3 s and nonces go stale after 2 s.
    fresh, lazy = Node(permission_refresh=1.0, channel_refresh=1.0), Node()
    lazy_peer = Peer()
    try:
        fresh_relayed, lazy_relayed = fresh.client.allocate(), lazy.client.allocate()
        fresh.client.bind_channel(peer.address)
        lazy.client.bind_channel(lazy_peer.address)
        lazy_bound = time.monotonic()
        counters = fresh.client.counters
        wait_for(lambda: counters["refreshed_channel"] >= 2 and counters["refreshed_permission"] >= 2
                 and 438 in fresh.errors, 10, "two refreshes of each kind and a stale nonce", sleep=gevent.sleep)
        assert not any(key.startswith("refresh_failed") for key in fresh.client.counters)
        assert fresh.client.last_error is None
        assert 438 in fresh.errors  # a stale nonce was met and retried transparently
        # The lazy client's channel and permission (3 s at this server) must have run out: the
        # server's own lifetime is the condition here, there is nothing to observe before.
        wait_for(lambda: time.monotonic() - lazy_bound >= 3.6, 10, "3.6 s since the lazy client bound",
                 sleep=gevent.sleep)
        peer.sock.sendto(b"still there?", fresh_relayed)
        assert fresh.received.get(timeout=2) == (peer.address, b"still there?")
        fresh.client.send_to(peer.address, b"yes")
        assert peer.receive() == (b"yes", fresh_relayed)
        lazy_peer.sock.sendto(b"still there?", lazy_relayed)
        # A marker through the same server after it: the lazy peer (same IP, so within the
        # fresh client's permission) writes to the fresh relay. Once that arrives, the server
        # has had its chance to relay the datagram before it.
        lazy_peer.sock.sendto(b"marker", fresh_relayed)
        assert fresh.received.get(timeout=2) == (lazy_peer.address, b"marker")
        gevent.sleep(0)  # let the lazy node's receiving greenlet run, were anything there
        assert lazy.received.empty()  # its channel and permission expired at the server
        assert fresh.client.refresh() == turn.DEFAULT_LIFETIME
        assert fresh.client.refresh(lifetime=1200) == 1200
    finally:
        lazy_peer.close()
        fresh.close()
        lazy.close()


@needs_coturn
def test_close_frees_the_allocation(node, peer):
    relayed = node.client.allocate()
    node.client.bind_channel(peer.address)
    node.client.close()
    assert node.client.state is TurnState.CLOSED and node.client.last_error is None
    with pytest.raises(TurnError, match="is closed"):
        node.client.send_to(peer.address, b"after close")
    peer.sock.sendto(b"anyone?", relayed)
    deadline = time.monotonic() + 5
    while not _port_free(relayed):  # coturn releases the relay port about a second later
        assert time.monotonic() < deadline, "coturn kept the relay port after close()"
        gevent.sleep(0.05)
    assert node.received.empty()
    # The same 5-tuple can allocate again once coturn has let the old allocation go.
    node.new_client()
    assert node.client.allocate()[0] == "127.0.0.1"


@needs_coturn
def test_losing_the_allocation_is_reported_once(node):
    lost = []
    node.new_client(on_lost=lost.append)
    relayed = node.client.allocate()
    # Delete it behind the client's back, then let the client try to refresh it. coturn only
    # frees it about a second later, and a Refresh before that brings it back: wait.
    node.client._request(Method.REFRESH, {Attr.LIFETIME: 0}, "Refresh (test)")
    deadline = time.monotonic() + 5
    while not _port_free(relayed):
        assert time.monotonic() < deadline, "coturn kept the deleted allocation"
        gevent.sleep(0.05)
    with pytest.raises(TurnResponseError, match="437") as caught:
        node.client.refresh()
    assert caught.value.code == 437
    assert node.client.state is TurnState.FAILED
    assert len(lost) == 1 and "no longer exists" in lost[0]
    node.client.close()
    assert node.client.state is TurnState.CLOSED


def test_silent_server_fails_within_the_timeout():
    silent = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    node = Node(silent.getsockname(), timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(TurnError, match=r"no answer from TURN server 127\.0\.0\.1:\d+ to Allocate within 1 s"):
            node.client.allocate()
        assert time.monotonic() - started < 1.3
        assert node.client.state is TurnState.FAILED
        node.client.close()  # nothing to delete, nothing raised
        assert node.client.state is TurnState.CLOSED
    finally:
        node.transport.stop()
        silent.close()


def test_refusals_without_credentials_are_clear():
    refuser = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    refuser.bind(("127.0.0.1", 0))

    def serve():
        while True:
            data, source = refuser.recvfrom(2048)
            request = stun.decode(data)
            answer = stun.Message(request.method, Class.ERROR, request.transaction_id,
                                  {Attr.ERROR_CODE: (401, "Unauthorized")})  # but no REALM/NONCE
            refuser.sendto(stun.encode(answer), source)
    loop = gevent.spawn(serve)
    node = Node(refuser.getsockname(), timeout=1.0)
    try:
        with pytest.raises(TurnError, match="asked for authentication without REALM and NONCE"):
            node.client.allocate()
    finally:
        loop.kill()
        node.transport.stop()
        refuser.close()


def test_success_without_valid_integrity_is_ignored():
    # A server (or forger) that asks for credentials, then "accepts" without proving it knows
    # the key: the client must not believe it.
    fake = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fake.bind(("127.0.0.1", 0))

    def serve():
        while True:
            data, source = fake.recvfrom(2048)
            request = stun.decode(data)
            if Attr.USERNAME not in request.attributes:
                attributes = {Attr.ERROR_CODE: (401, "Unauthorized"), Attr.REALM: "r", Attr.NONCE: b"n"}
                answer = stun.Message(request.method, Class.ERROR, request.transaction_id, attributes)
                fake.sendto(stun.encode(answer), source)
            else:
                attributes = {Attr.XOR_RELAYED_ADDRESS: ("192.0.2.1", 5000), Attr.LIFETIME: 600}
                answer = stun.Message(request.method, Class.SUCCESS, request.transaction_id, attributes)
                fake.sendto(stun.encode(answer, b"not the key"), source)
    loop = gevent.spawn(serve)
    node = Node(fake.getsockname(), timeout=0.5)
    try:
        with pytest.raises(TurnError, match="no answer from TURN server"):
            node.client.allocate()
        assert node.client.counters["bad_integrity"] >= 1
    finally:
        loop.kill()
        node.transport.stop()
        fake.close()


def test_send_before_allocate_is_refused():
    client = TurnClient(lambda data, address: None, ("127.0.0.1", 3478), USER, PASSWORD)
    with pytest.raises(TurnError, match="cannot send: TURN allocation at 127.0.0.1:3478 is idle"):
        client.send_to(("127.0.0.1", 9), b"x")
    assert client.handle(turn.encode_channel_data(0x4000, b"x"), ("127.0.0.1", 3478)) is None


@needs_coturn
def test_only_permitted_peers_count_and_idle_permissions_expire(node, peer):
    """A Data indication naming a peer the relay does not permit is forged (coturn relays only
    from permitted peers): dropped and counted, never routed to. A permission that carried
    nothing for IDLE_EXPIRY is not refreshed: the permitted set does not only grow."""
    node.client.allocate()
    node.client.permit(peer.address)
    assert node.client.permits(peer.address) and not node.client.permits(("192.0.2.99", 5))
    forged = stun.encode(stun.Message(Method.DATA, Class.INDICATION, attributes={
        Attr.XOR_PEER_ADDRESS: ("192.0.2.99", 5), Attr.DATA: b"\xc1 route me"}))
    assert node.client.handle(forged, server.address()) is None
    assert node.client.counters["no_permission"] == 1
    genuine = stun.encode(stun.Message(Method.DATA, Class.INDICATION, attributes={
        Attr.XOR_PEER_ADDRESS: peer.address, Attr.DATA: b"hi"}))
    assert node.client.handle(genuine, server.address()) == (peer.address, b"hi")
    ip = peer.address[0]
    now = node.client._clock()
    assert not node.client._prune_idle("permission", ip, now + turn.IDLE_EXPIRY - 1)
    assert node.client._prune_idle("permission", ip, now + turn.IDLE_EXPIRY + 1)
    assert not node.client.permits(peer.address) and node.client.counters["expired_permission"] == 1

