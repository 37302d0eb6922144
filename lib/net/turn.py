"""TURN (RFC 8656) client over the node's shared UDP socket: a relay when hole punching fails.

Like `StunClient`, `TurnClient` never reads a socket: the node gives it `send(data, address)`
and passes it every STUN or ChannelData datagram that comes from the TURN server (`handle`).
`handle` returns `(peer address, payload)` for data relayed from a peer, which the node then
treats as if it had arrived from that peer directly.

One client holds one allocation, driven by an explicit state machine:

    IDLE --allocate()--> ALLOCATING --> ALLOCATED --close()--> CLOSED
                             |              |
                             +--> FAILED <--+  (refused, timed out, refresh failed, expired)

While ALLOCATED, one maintenance greenlet refreshes the allocation before it expires, every
permission (they last 5 minutes) and every channel binding (10 minutes).

Authentication is the long-term credential mechanism: the first Allocate is refused with 401
carrying REALM and NONCE; every later request carries USERNAME, REALM, NONCE and
MESSAGE-INTEGRITY keyed by MD5(username:realm:password); a 438 (stale nonce) is retried with
the new nonce. Success responses must carry a valid MESSAGE-INTEGRITY, so nobody who cannot
see our traffic can forge one.

Overheads, for callers keeping datagrams within 1200 bytes: ChannelData adds 4 bytes, a Send
indication 36 bytes (IPv4 peer). Channels are taken from 0x4000-0x4FFF (RFC 8656), the range
whose first byte (0x40-0x4F) the transport classifies as TURN ChannelData.
"""

from __future__ import annotations

import collections
import enum
import logging
import struct
import time
from typing import Callable, Optional

import gevent
import gevent.event

from ..errors import Busy, Refused
from . import stun
from ..codec import stun as stun_codec
from ..codec.stun import Attr, Class, Message, Method, StunError, format_address
from ..util import Address
from .stun_transaction import Retransmission, SendFunction, Transaction

log = logging.getLogger("chatp2p.turn")

CHANNEL_HEADER = struct.Struct(">HH")  # channel number, payload length
CHANNEL_OVERHEAD = CHANNEL_HEADER.size  # 4
SEND_OVERHEAD = stun_codec.HEADER_LEN + 12 + 4  # header, XOR-PEER-ADDRESS (IPv4), DATA header: 36
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
PROTOCOL_UDP = 17

DEFAULT_LIFETIME = 600  # seconds asked for in Allocate and Refresh
PERMISSION_REFRESH = 240  # permissions last 300 s
CHANNEL_REFRESH = 540  # channel bindings last 600 s
RETRY_AFTER = 10.0  # a failed refresh is tried again this much later (while time remains)
IDLE_EXPIRY = 300.0  # a permission or channel unused this long is not refreshed: it expires
DEFAULT_TIMEOUT = 3.0  # per request, retransmissions included
AUTH_ATTEMPTS = 3  # requests per operation: unauthenticated, authenticated, stale-nonce retry
REQUESTS = stun.DEFAULT_RETRIES + 1  # per transaction, as the Binding client (the timeout usually ends it first)


class TurnError(Busy):
    """A TURN operation failed; the message says which, where and why."""


class TurnResponseError(Refused, TurnError):
    """The server refused a request with an error response."""

    def __init__(self, message: str, code: int, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class TurnState(str, enum.Enum):
    IDLE = "idle"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    FAILED = "failed"
    CLOSED = "closed"


_TRANSITIONS: dict[TurnState, tuple[TurnState, ...]] = {
    TurnState.IDLE: (TurnState.ALLOCATING, TurnState.CLOSED),
    TurnState.ALLOCATING: (TurnState.ALLOCATED, TurnState.FAILED, TurnState.CLOSED),
    TurnState.ALLOCATED: (TurnState.FAILED, TurnState.CLOSED),
    TurnState.FAILED: (TurnState.CLOSED,),
    TurnState.CLOSED: (),
}


# ---------------------------------------------------------------- ChannelData (pure)


def is_channel_data(datagram: bytes) -> bool:
    """First byte 0x40-0x4F (channels 0x4000-0x4FFF) and room for the header."""
    return len(datagram) >= CHANNEL_OVERHEAD and 0x40 <= datagram[0] <= 0x4F


def encode_channel_data(channel: int, data: bytes, pad: bool = False) -> bytes:
    """A ChannelData message. Over UDP the padding to 4 bytes is optional (RFC 8656 section
    12.5) and left out by default: it would only cost bytes."""
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise TurnError(f"channel number {channel:#06x} outside {CHANNEL_MIN:#06x}-{CHANNEL_MAX:#06x}")
    if len(data) > 0xFFFF:
        raise TurnError(f"ChannelData payload of {len(data)} bytes")
    padding = bytes(-len(data) % 4) if pad else b""
    return CHANNEL_HEADER.pack(channel, len(data)) + bytes(data) + padding


def decode_channel_data(datagram: bytes) -> tuple[int, bytes]:
    """(channel, payload); TurnError if malformed. Up to 3 bytes of padding are ignored."""
    if not isinstance(datagram, (bytes, bytearray, memoryview)):
        raise TurnError(f"expected bytes, got {type(datagram).__name__}")
    data = bytes(datagram)
    if len(data) < CHANNEL_OVERHEAD:
        raise TurnError(f"ChannelData of {len(data)} bytes: shorter than its header")
    channel, length = CHANNEL_HEADER.unpack_from(data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise TurnError(f"channel number {channel:#06x} outside {CHANNEL_MIN:#06x}-{CHANNEL_MAX:#06x}")
    extra = len(data) - CHANNEL_OVERHEAD - length
    if extra < 0:
        raise TurnError(f"ChannelData claims {length} bytes but carries {len(data) - CHANNEL_OVERHEAD}")
    if extra > 3:
        raise TurnError(f"ChannelData followed by {extra} stray bytes")
    return channel, data[CHANNEL_OVERHEAD:CHANNEL_OVERHEAD + length]


def parse_turn_url(url: str) -> Address:
    """(host, port) of `turn:host[:port][?transport=udp]` (RFC 7065). Only UDP is supported."""
    text = url.strip() if isinstance(url, str) else url
    if isinstance(text, str) and "?" in text:
        text, _, query = text.partition("?")
        if query.lower() != "transport=udp":
            raise TurnError(f"only ?transport=udp is supported, not {query!r} in {url!r}")
    if isinstance(text, str) and text.lower().startswith("turns:"):
        raise TurnError(f"TURN over TLS (turns:) is not supported: {url!r}")
    try:
        return stun_codec.parse_server_url(text, scheme="turn")
    except StunError as exc:
        raise TurnError(str(exc)) from None


# ---------------------------------------------------------------- client


class TurnClient:
    """One allocation on one TURN server, over the node's shared socket (see module docstring).

    `allocate`, `refresh`, `permit`, `bind_channel` and `close` block the calling greenlet
    until the server answers (at most `timeout` seconds per request); `send_to` and `handle`
    never block. `on_lost(reason)` is called once if an ALLOCATED allocation is lost."""

    def __init__(self, send: SendFunction, server: Address, username: str, credential: str, *,
                 lifetime: int = DEFAULT_LIFETIME, timeout: float = DEFAULT_TIMEOUT,
                 permission_refresh: float = PERMISSION_REFRESH,
                 channel_refresh: float = CHANNEL_REFRESH,
                 initial_rto: float = stun.INITIAL_RTO, max_rto: float = stun.MAX_RTO,
                 on_lost: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._clock = clock
        self.server = tuple(server)  # replaced by the resolved address in allocate()
        self.username = username
        self._credential = credential
        self.requested_lifetime = lifetime
        self.timeout = timeout
        self.permission_refresh = permission_refresh
        self.channel_refresh = channel_refresh
        self.initial_rto = initial_rto
        self.max_rto = max_rto
        self.on_lost = on_lost

        self.state = TurnState.IDLE
        self.relayed: Optional[Address] = None  # our relayed transport address
        self.mapped: Optional[Address] = None  # our address as the server sees it
        self.lifetime = 0  # granted by the last Allocate/Refresh
        self.expires_at = 0.0
        self.last_error: Optional[str] = None
        self.counters: collections.Counter[str] = collections.Counter()

        self._realm: Optional[str] = None
        self._nonce: Optional[bytes] = None
        self._key: Optional[bytes] = None
        self._transactions: dict[bytes, Transaction] = {}
        self._permissions: dict[str, float] = {}  # peer IP -> when to refresh
        self._used: dict[str, float] = {}  # peer IP -> last data sent or relayed (or permitted)
        self._channels: dict[Address, int] = {}  # peer -> channel number
        self._peers: dict[int, Address] = {}  # channel number -> peer
        self._channel_due: dict[Address, float] = {}  # peer -> when to refresh its binding
        self._allocation_due = 0.0
        self._next_channel = CHANNEL_MIN
        self._wake = gevent.event.Event()
        self._maintainer: Optional[gevent.Greenlet] = None

    # -- state machine ----------------------------------------------------------------------
    def _set_state(self, new: TurnState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise TurnError(f"TURN client cannot go from {self.state.value} to {new.value}")
        log.debug("TURN %s: %s -> %s", self._where, self.state.value, new.value)
        self.state = new

    def _require(self, state: TurnState, action: str) -> None:
        if self.state is not state:
            raise TurnError(f"cannot {action}: TURN allocation at {self._where} is {self.state.value}")

    @property
    def _where(self) -> str:
        return format_address(self.server)

    # -- receiving --------------------------------------------------------------------------
    def handle(self, datagram: bytes, address: Address) -> Optional[tuple[Address, bytes]]:
        """Take a STUN or ChannelData datagram; (peer, payload) if it relays data from a peer.
        Datagrams not from the server, malformed, or answering nothing of ours are dropped."""
        if tuple(address[:2]) != self.server:
            self.counters["not_from_server"] += 1
            return None
        if is_channel_data(datagram):
            if self.state is not TurnState.ALLOCATED:
                return None
            try:
                channel, payload = decode_channel_data(datagram)
            except TurnError:
                self.counters["malformed"] += 1
                return None
            peer = self._peers.get(channel)
            if peer is None:
                self.counters["unknown_channel"] += 1
                return None
            self._used[peer[0]] = self._clock()
            return peer, payload
        try:
            message = stun_codec.decode(datagram)
        except StunError:
            self.counters["malformed"] += 1
            return None
        if message.cls in (Class.SUCCESS, Class.ERROR):
            transaction = self._transactions.get(message.transaction_id)
            if transaction is None:
                self.counters["stray_response"] += 1
            elif (message.cls is Class.SUCCESS and transaction.key is not None
                  and not stun_codec.check_integrity(datagram, transaction.key)):
                self.counters["bad_integrity"] += 1
            else:
                transaction.answer(message)
            return None
        if (message.cls is Class.INDICATION and message.method == Method.DATA
                and self.state is TurnState.ALLOCATED):
            peer, payload = message.get(Attr.XOR_PEER_ADDRESS), message.get(Attr.DATA)
            if peer is not None and payload is not None:
                if not self.permits(peer):
                    # The server relays only from permitted peers: this one is forged (a
                    # spoofed source claiming to be the server).
                    self.counters["no_permission"] += 1
                    return None
                self._used[peer[0]] = self._clock()
                return peer, payload
        self.counters["ignored"] += 1
        return None

    # -- requests ---------------------------------------------------------------------------
    def _transact(self, message: Message, key: Optional[bytes], what: str) -> Message:
        """Send one request with retransmissions; its response, or TurnError on timeout."""
        timing = Retransmission(self.initial_rto, requests=REQUESTS, max_rto=self.max_rto)
        transaction = Transaction(stun_codec.encode(message, key, add_fingerprint=True), self.server, timing, key=key)
        self._transactions[message.transaction_id] = transaction
        try:
            response = transaction.run(self._send, self.timeout)
        finally:
            del self._transactions[message.transaction_id]
        if response is None:
            raise TurnError(f"no answer from TURN server {self._where} to {what} within {self.timeout:g} s")
        return response

    def _request(self, method: Method, attributes: dict, what: str) -> Message:
        """One authenticated request: learns realm and nonce from a 401, retries a 438."""
        sent_credentials = False
        for _ in range(AUTH_ATTEMPTS):
            message = Message(method, Class.REQUEST, attributes=dict(attributes))
            key = self._key
            if key is not None:
                message.attributes[Attr.USERNAME] = self.username
                message.attributes[Attr.REALM] = self._realm
                message.attributes[Attr.NONCE] = self._nonce
                sent_credentials = True
            response = self._transact(message, key, what)
            if response.cls is Class.SUCCESS:
                return response
            code, reason = response.error or (0, "no ERROR-CODE")
            if code == 401 and not sent_credentials:
                self._learn_realm(response)
                continue
            if code == 401:
                raise TurnResponseError(f"TURN authentication failed for user {self.username} at {self._where}",
                                        code, reason)
            if code == 438 and key is not None:
                nonce = response.get(Attr.NONCE)
                if nonce is None:
                    break
                self._nonce = nonce
                continue
            hint = ""
            if code == 437 and method == Method.ALLOCATE:
                # coturn keeps a deleted allocation's 5-tuple for about a second, and a crashed
                # run's allocation for its whole lifetime.
                hint = " (an allocation from this address and port still exists; it expires with its lifetime)"
            raise TurnResponseError(f"TURN server {self._where} refused {what}: {code} {reason}".rstrip() + hint,
                                    code, reason)
        raise TurnError(f"TURN server {self._where} kept refusing the credentials of {self.username} for {what}")

    def _learn_realm(self, response: Message) -> None:
        realm, nonce = response.get(Attr.REALM), response.get(Attr.NONCE)
        if realm is None or nonce is None:
            raise TurnError(f"TURN server {self._where} asked for authentication without REALM and NONCE")
        self._realm, self._nonce = realm, nonce
        self._key = stun_codec.long_term_key(self.username, realm, self._credential)

    # -- operations -------------------------------------------------------------------------
    def allocate(self) -> Address:
        """Create the allocation; our relayed (host, port). TurnError on refusal or timeout."""
        self._require(TurnState.IDLE, "allocate")
        self._set_state(TurnState.ALLOCATING)
        try:
            self.server = stun.resolve(self.server)
            response = self._request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: PROTOCOL_UDP,
                                                       Attr.LIFETIME: self.requested_lifetime}, "Allocate")
            relayed = response.get(Attr.XOR_RELAYED_ADDRESS)
            if relayed is None:
                raise TurnError(f"TURN server {self._where} allocated without XOR-RELAYED-ADDRESS")
        except (TurnError, StunError) as exc:
            self.last_error = str(exc)
            if self.state is TurnState.ALLOCATING:
                self._set_state(TurnState.FAILED)
            if isinstance(exc, TurnError):
                raise
            raise TurnError(f"TURN server {self._where}: {exc}") from None
        self.relayed = relayed
        self.mapped = response.get(Attr.XOR_MAPPED_ADDRESS)
        self._granted(response.get(Attr.LIFETIME, self.requested_lifetime))
        self._set_state(TurnState.ALLOCATED)
        self._maintainer = gevent.spawn(self._maintain)
        log.info("TURN allocation at %s: relayed %s for %d s", self._where, relayed, self.lifetime)
        return relayed

    def _granted(self, lifetime: int) -> None:
        now = self._clock()
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        self._allocation_due = now + max(lifetime - 60, lifetime / 2)
        self._wake.set()

    def refresh(self, lifetime: Optional[int] = None) -> int:
        """Extend the allocation; the lifetime granted (seconds)."""
        self._require(TurnState.ALLOCATED, "refresh")
        requested = self.requested_lifetime if lifetime is None else lifetime
        try:
            response = self._request(Method.REFRESH, {Attr.LIFETIME: requested}, "Refresh")
        except TurnResponseError as exc:
            if exc.code == 437:  # allocation mismatch: the server no longer has it
                self._lose(f"TURN allocation at {self._where} no longer exists (437)")
            raise
        self._granted(response.get(Attr.LIFETIME, requested))
        return self.lifetime

    def permit(self, peer: Address) -> None:
        """Allow `peer`'s IP address to send to us through the relay (refreshed every 4 min)."""
        self._require(TurnState.ALLOCATED, "create a permission")
        self._request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: tuple(peer)},
                      f"CreatePermission for {format_address(peer)}")
        now = self._clock()
        self._permissions[peer[0]] = now + self.permission_refresh
        self._used.setdefault(peer[0], now)
        self._wake.set()

    def permits(self, peer: Address) -> bool:
        """The relay has a permission (or a channel) for `peer`: its data may come through the
        relay and ours may go. The set shrinks as unused permissions expire."""
        return peer[0] in self._permissions or tuple(peer) in self._channels

    def bind_channel(self, peer: Address) -> int:
        """Bind a channel to `peer` (which also permits its IP); the channel number."""
        self._require(TurnState.ALLOCATED, "bind a channel")
        peer = tuple(peer)
        channel = self._channels.get(peer)
        if channel is None:
            if self._next_channel > CHANNEL_MAX:
                raise TurnError(f"no TURN channel numbers left at {self._where}")
            channel = self._next_channel
        self._channel_bind(peer, channel)
        if peer not in self._channels:
            self._next_channel += 1
            self._channels[peer] = channel
            self._peers[channel] = peer
        return channel

    def _channel_bind(self, peer: Address, channel: int) -> None:
        self._request(Method.CHANNEL_BIND, {Attr.CHANNEL_NUMBER: channel, Attr.XOR_PEER_ADDRESS: peer},
                      f"ChannelBind {channel:#06x} to {format_address(peer)}")
        now = self._clock()
        self._channel_due[peer] = now + self.channel_refresh
        self._permissions[peer[0]] = now + self.permission_refresh
        self._used.setdefault(peer[0], now)
        self._wake.set()

    def send_to(self, peer: Address, data: bytes) -> None:
        """Relay `data` to `peer`: ChannelData when a channel is bound, else a Send indication.
        Never blocks; TurnError if there is no allocation or no permission for `peer`."""
        self._require(TurnState.ALLOCATED, "send")
        peer = tuple(peer)
        channel = self._channels.get(peer)
        if channel is not None:
            self._used[peer[0]] = self._clock()
            self._send(encode_channel_data(channel, data), self.server)
            return
        if peer[0] not in self._permissions:
            raise TurnError(f"no TURN permission for {format_address(peer)}: call permit() first")
        self._used[peer[0]] = self._clock()
        indication = Message(Method.SEND, Class.INDICATION,
                             attributes={Attr.XOR_PEER_ADDRESS: peer, Attr.DATA: bytes(data)})
        self._send(stun_codec.encode(indication), self.server)

    def close(self) -> None:
        """Delete the allocation (Refresh with LIFETIME 0) and stop refreshing. Never raises on
        a server that does not answer: the allocation then simply expires there."""
        if self.state is TurnState.CLOSED:
            return
        was_allocated = self.state is TurnState.ALLOCATED
        self._stop_maintainer()
        if was_allocated:
            try:
                self._request(Method.REFRESH, {Attr.LIFETIME: 0}, "Refresh (delete)")
            except TurnError as exc:
                log.info("TURN close at %s: %s", self._where, exc)
                self.last_error = str(exc)
        self._set_state(TurnState.CLOSED)
        self._forget()

    # -- maintenance ------------------------------------------------------------------------
    def _stop_maintainer(self) -> None:
        maintainer, self._maintainer = self._maintainer, None
        if maintainer is not None and maintainer is not gevent.getcurrent():
            maintainer.kill(block=True)

    def _forget(self) -> None:
        self._permissions.clear()
        self._used.clear()
        self._channels.clear()
        self._peers.clear()
        self._channel_due.clear()

    def _lose(self, reason: str) -> None:
        """The allocation is gone (refused refresh, expiry): FAILED, and tell the owner once."""
        if self.state is not TurnState.ALLOCATED:
            return
        self.last_error = reason
        self._set_state(TurnState.FAILED)
        self._forget()
        self._wake.set()
        log.warning("%s", reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    def _prune_idle(self, what: str, which: object, now: float) -> bool:
        """A permission or channel due for refresh that carried nothing for IDLE_EXPIRY is let
        go instead (the server forgets it): the set of permitted peers does not only grow."""
        ip = which if what == "permission" else which[0]  # type: ignore[index]
        if now - self._used.get(ip, now) < IDLE_EXPIRY:
            return False
        if what == "permission":
            if any(peer[0] == ip for peer in self._channels):
                self._permissions[ip] = now + self.permission_refresh  # its channel refreshes it
                return True
            del self._permissions[ip]
            self._used.pop(ip, None)
        else:
            channel = self._channels.pop(which)  # type: ignore[arg-type]
            self._peers.pop(channel, None)
            self._channel_due.pop(which, None)  # type: ignore[arg-type]
        self.counters[f"expired_{what}"] += 1
        return True

    def _earliest(self) -> tuple[float, str, object]:
        """(when, what, which) of the next refresh due."""
        jobs: list[tuple[float, str, object]] = [(self._allocation_due, "allocation", None)]
        jobs += [(due, "permission", ip) for ip, due in self._permissions.items()]
        jobs += [(due, "channel", peer) for peer, due in self._channel_due.items()]
        return min(jobs, key=lambda job: job[0])

    def _maintain(self) -> None:
        """Refresh the allocation, permissions and channels before they expire."""
        while self.state is TurnState.ALLOCATED:
            self._wake.clear()
            now = self._clock()
            if now >= self.expires_at:
                self._lose(f"TURN allocation at {self._where} expired: {self.last_error or 'not refreshed'}")
                return
            due, what, which = self._earliest()
            if due > now:
                self._wake.wait(min(due, self.expires_at) - now)
                continue
            if what != "allocation" and self._prune_idle(what, which, now):
                continue
            try:
                if what == "allocation":
                    self.refresh()
                elif what == "permission":
                    self._request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: (which, 0)},
                                  f"CreatePermission for {which}")
                    self._permissions[which] = self._clock() + self.permission_refresh
                else:
                    self._channel_bind(which, self._channels[which])
                self.counters[f"refreshed_{what}"] += 1
            except TurnError as exc:
                self.last_error = str(exc)
                self.counters[f"refresh_failed_{what}"] += 1
                log.warning("TURN refresh failed: %s", exc)
                retry = self._clock() + RETRY_AFTER
                if what == "allocation":
                    self._allocation_due = retry
                elif what == "permission" and which in self._permissions:
                    self._permissions[which] = retry
                elif which in self._channel_due:
                    self._channel_due[which] = retry
