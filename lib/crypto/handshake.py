"""The ChatP2P handshake: stateless cookie, then a 4-message hybrid post-quantum key exchange.

    I -> R  HELLO    conn_id_I, nonce_I (padded to 64 bytes)
    R -> I  COOKIE   conn_id_I, nonce_I, cookie           (stateless: no memory, no crypto)
    I -> R  INIT     M1 fragments, each with the cookie: version, suite, nonce_I, e_I
    R -> I  RESP     M2 fragments: conn_id_R, ct_e, AEAD_k1(bundle_R, sig_R[, rollover_R])
    I -> R  AUTH     M3 fragments: ct_s, AEAD_k1,k2(bundle_I, sig_I[, rollover_I], confirm_I)
    R -> I  DONE     confirm_R

Pure state machines: inputs are received datagrams and the caller's clock, outputs are
datagrams to send (to the address the input came from) and events. No sockets, no timers:
the caller retransmits ``pending`` on timeout and routes datagrams by connection id
(``wire.parse_prefix``). Hostile input never raises: it is dropped and counted in ``stats``.

- ``Initiator``: one outgoing handshake. ``start(now)`` gives the HELLO; feed it every COOKIE,
  RESP and DONE datagram carrying its ``conn_id``; ``Established`` ends it.
- ``Listener``: the responder side of every incoming handshake (HELLO, INIT, AUTH). It answers
  HELLO statelessly, checks the cookie of every INIT fragment before buffering anything, and
  creates a ``Responder`` once M1 is complete. When M3 authenticates the initiator, the
  ``Authenticated`` event hands that Responder to the caller, who must ``accept()`` or
  ``reject()`` it (known contact, stranger, blocked: the node's decision).
- Key rollover: each side may add its own rollover statement (``identity.Rollover``, signed by
  its previous key) to its sealed payload. An Initiator given the contact's ``expected_bundle``
  accepts a responder with another fingerprint only if M2 carries a valid statement from the
  expected identity to the presented bundle; the responder side just reports the initiator's
  statement (``Authenticated.rollover``, not verified: only the node knows the old bundle).

Byte layouts, KDF labels and the security argument: docs/PROTOCOL.md, section "Handshake".
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import ipaddress
import secrets
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from cryptography.exceptions import InvalidTag

from . import pqc
from ..codec import wire
from ..codec.fields import encode_prefixed, read_prefixed
from .identity import MAX_ROLLOVER_LEN, Bundle, Identity, IdentityError, Rollover, verify_rollover
from .session import LABEL_I2R, LABEL_R2I, SECRET_LEN, Role, SessionKeys, Suite, hkdf, hkdf_expand, make_aead
from ..codec.wire import (
    AEAD_TAG_LEN,
    CONFIRM_LEN,
    CONN_ID_LEN,
    COOKIE_LEN,
    MAX_DATAGRAM,
    NONCE_LEN,
    Address,
    CookiePacket,
    Done,
    Fragment,
    Hello,
    HandshakeFragment,
    PacketType,
    Reassembler,
    WireError,
)

PROTOCOL_LABEL = b"chatp2p v1 handshake"
LABEL_M2 = b"chatp2p v1 m2"
LABEL_M3 = b"chatp2p v1 m3"
LABEL_CONFIRM_I = b"chatp2p v1 confirm i"
LABEL_CONFIRM_R = b"chatp2p v1 confirm r"
SIG_CONTEXT_R = b"chatp2p v1 responder signature\x00"
SIG_CONTEXT_I = b"chatp2p v1 initiator signature\x00"
COOKIE_LABEL = b"chatp2p v1 cookie"

M1 = struct.Struct(f">BB{NONCE_LEN}s{pqc.KEM_PUBLIC_LEN}s")  # version, suite, nonce_I, e_I
M1_LEN = M1.size  # 1234
M2_PREFIX_LEN = CONN_ID_LEN + pqc.KEM_CT_LEN  # conn_id_R, ct_e
M3_PREFIX_LEN = pqc.KEM_CT_LEN  # ct_s
MAX_HANDSHAKE_MESSAGE = 16384  # M2 and M3 are ~7.7 KB in v1, ~14.4 KB with a rollover statement
ZERO_NONCE = bytes(12)  # each handshake AEAD key encrypts exactly one message

DEFAULT_SUITE = Suite.AES_256_GCM
RandomBytes = Callable[[int], bytes]


# ---------------------------------------------------------------- transcript and keys


class Transcript:
    """Running hash of the handshake: h = SHA-256(h || u32 len(x) || x) for each item x."""

    def __init__(self, value: Optional[bytes] = None) -> None:
        self.hash = value if value is not None else hashlib.sha256(PROTOCOL_LABEL).digest()

    def mix(self, data: bytes) -> bytes:
        self.hash = hashlib.sha256(self.hash + len(data).to_bytes(4, "big") + data).digest()
        return self.hash

    def copy(self) -> "Transcript":
        return Transcript(self.hash)


@dataclass(frozen=True)
class _Final:
    """Secrets derived from the final transcript hash h5 and k1 || k2."""

    i2r: bytes
    r2i: bytes
    confirm_i: bytes
    confirm_r: bytes


def _final_secrets(h5: bytes, k1: bytes, k2: bytes) -> _Final:
    prk = hmac.new(h5, k1 + k2, hashlib.sha256).digest()  # HKDF-Extract(salt=h5, IKM=k1||k2)
    return _Final(
        i2r=hkdf_expand(prk, LABEL_I2R, SECRET_LEN),
        r2i=hkdf_expand(prk, LABEL_R2I, SECRET_LEN),
        confirm_i=hkdf_expand(prk, LABEL_CONFIRM_I, CONFIRM_LEN),
        confirm_r=hkdf_expand(prk, LABEL_CONFIRM_R, CONFIRM_LEN),
    )


def _encode_sealed(bundle: bytes, signature: bytes, confirm: bytes = b"", rollover: Optional[bytes] = None) -> bytes:
    """Plaintext of M2 (confirm empty) and M3: u16 length + bundle, u16 length + signature,
    [u16 length + rollover statement], confirm. Without a statement the field is left out, so
    the message is byte for byte what nodes without rollover support send and expect."""
    out = encode_prefixed(bundle) + encode_prefixed(signature)
    if rollover:
        out += encode_prefixed(rollover)
    return out + confirm


def _decode_sealed(data: bytes, confirm_len: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(bundle, signature, rollover statement or b"" when absent or empty, confirm)."""
    bundle, pos = read_prefixed(data, 0, WireError, "sealed identity truncated")
    signature, pos = read_prefixed(data, pos, WireError, "sealed identity truncated")
    rest = len(data) - pos - confirm_len
    rollover = b""
    if rest != 0:
        if rest < 2:
            raise WireError("sealed identity has a wrong length")
        (size,) = struct.unpack_from(">H", data, pos)
        if size != rest - 2:
            raise WireError("sealed identity has a wrong length")
        rollover = data[pos + 2 : pos + 2 + size]
        pos += 2 + size
    return bundle, signature, rollover, data[pos:]


def _check_rollover_arg(rollover: Optional[bytes]) -> Optional[bytes]:
    """A node's own statement as given to Initiator/Listener: encoded bytes (or a Rollover)."""
    if rollover is None:
        return None
    if isinstance(rollover, Rollover):
        rollover = rollover.encode()
    if not isinstance(rollover, (bytes, bytearray)) or len(rollover) > MAX_ROLLOVER_LEN:
        raise ValueError(f"a rollover statement is bytes, at most {MAX_ROLLOVER_LEN} of them")
    return bytes(rollover) or None


def keep_outgoing(local_fingerprint: bytes, peer_fingerprint: bytes) -> bool:
    """Simultaneous open: True when this node's own outgoing handshake to the peer wins,
    i.e. the handshake initiated by the lower fingerprint survives (compared as bytes)."""
    return bytes(local_fingerprint) < bytes(peer_fingerprint)


def accept_incoming(
    local_fingerprint: bytes,
    peer_fingerprint: bytes,
    outgoing: Optional["Initiator"],
    now: float,
    window: float = 30.0,
) -> bool:
    """Simultaneous open: may an incoming handshake just authenticated from ``peer_fingerprint``
    be accepted, given this node's own ``outgoing`` handshake to that peer (or None)?

    The node with the lower fingerprint refuses the peer's handshake while its own is in
    progress, or established less than ``window`` seconds ago (the peer's abandoned handshake
    may still be in flight then; ``window`` = the listener's handshake_timeout, the longest a
    Responder lives). The other node always accepts, and must then ``abandon()`` its own
    outgoing handshake if still in progress. Both then converge on the handshake initiated by
    the lower fingerprint. A newly established session replaces any older one with the peer."""
    if outgoing is None or not keep_outgoing(local_fingerprint, peer_fingerprint):
        return True
    if outgoing.state == InitiatorState.FAILED:
        return True
    if outgoing.state == InitiatorState.ESTABLISHED:
        return outgoing.established_at is None or now - outgoing.established_at >= window
    return False


# ---------------------------------------------------------------- cookies


class CookieJar:
    """Stateless cookies: truncated HMAC-SHA256 over the client's address and connection id.

    The secret changes every ``rotation`` seconds (the caller's clock) and the previous one is
    still accepted, so a cookie lives between one and two rotations. Making or checking one
    costs an HMAC, and nothing is stored per client."""

    def __init__(self, random_bytes: RandomBytes = secrets.token_bytes, rotation: float = 120.0) -> None:
        self._random = random_bytes
        self.rotation = rotation
        self._epoch: Optional[int] = None
        self._secret = b""
        self._previous: Optional[bytes] = None

    def _secrets(self, now: float) -> list[tuple[int, bytes]]:
        epoch = int(now // self.rotation)
        if self._epoch is None or epoch > self._epoch:
            self._previous = self._secret if self._epoch is not None and epoch == self._epoch + 1 else None
            self._epoch, self._secret = epoch, self._random(32)
        out = [(self._epoch, self._secret)]
        if self._previous is not None:
            out.append((self._epoch - 1, self._previous))
        return out

    @staticmethod
    def _mac(secret: bytes, epoch: int, address: Address, conn_id: bytes) -> bytes:
        msg = COOKIE_LABEL + epoch.to_bytes(8, "big") + wire.address_bytes(address) + conn_id
        return hmac.new(secret, msg, hashlib.sha256).digest()[:COOKIE_LEN]

    def make(self, address: Address, conn_id: bytes, now: float) -> bytes:
        epoch, secret = self._secrets(now)[0]
        return self._mac(secret, epoch, address, conn_id)

    def check(self, address: Address, conn_id: bytes, cookie: bytes, now: float) -> bool:
        try:
            candidates = [self._mac(s, e, address, conn_id) for e, s in self._secrets(now)]
        except WireError:
            return False
        return any(hmac.compare_digest(c, cookie) for c in candidates)


# ---------------------------------------------------------------- events and outputs


class FailReason(str, enum.Enum):
    KEY_MISMATCH = "key_mismatch"  # the responder is not the expected identity: abort, send nothing
    BAD_SIGNATURE = "bad_signature"
    BAD_BUNDLE = "bad_bundle"
    BAD_MESSAGE = "bad_message"  # decrypted, yet malformed or wrong key confirmation


@dataclass(frozen=True)
class Authenticated:
    """Responder side: the initiator proved its identity; call ``responder.accept()`` or ``.reject()``.

    ``rollover``: the initiator's statement, if it sent one that parses and names ``bundle`` as
    the new key. Its signature is NOT checked here: only the node knows the old contact's bundle
    to check it with (``identity.verify_rollover``)."""

    responder: "Responder"
    bundle: Bundle
    fingerprint: bytes
    rollover: Optional[Rollover] = None


@dataclass(frozen=True)
class Established:
    """The handshake is complete: build a ``Session(keys, now)``.

    ``rollover`` (initiator side only): the verified statement by which the expected identity
    handed over to ``bundle``; the caller should now store the new key for that contact."""

    keys: SessionKeys
    bundle: Bundle
    fingerprint: bytes
    rollover: Optional[Rollover] = None


@dataclass(frozen=True)
class Failed:
    """The handshake is over without a session. ``bundle``: what the peer presented, if anything."""

    reason: FailReason
    bundle: Optional[Bundle] = None
    detail: str = ""


Event = Union[Authenticated, Established, Failed]


@dataclass
class Output:
    """Result of feeding one datagram: datagrams to send back, at most one event, or why the
    input was ignored (``dropped``; None when it was used, even if nothing is sent yet)."""

    send: list[bytes] = field(default_factory=list)
    event: Optional[Event] = None
    dropped: Optional[str] = None


def _dropped(stats: collections.Counter[str], reason: str) -> Output:
    stats["dropped_" + reason] += 1
    return Output(dropped=reason)


# ---------------------------------------------------------------- initiator


class InitiatorState(enum.Enum):
    START = "start"
    WAIT_COOKIE = "wait_cookie"
    WAIT_RESP = "wait_resp"
    WAIT_DONE = "wait_done"
    ESTABLISHED = "established"
    FAILED = "failed"


class Initiator:
    """One outgoing handshake.

    ``start(now)`` returns the HELLO; then every COOKIE, RESP or DONE datagram whose connection
    id is ``conn_id`` goes to ``receive(datagram, now)``, whose ``send`` goes to the responder.
    On timeout the caller resends ``pending`` (the last flight); if the responder stays silent
    after a few tries (cookie expired, peer gone), it starts a new Initiator. ``expected_fingerprint``
    (the contact's, when known) makes any other responder identity fail with KEY_MISMATCH
    before anything about this node is sent, unless M2 carries a rollover statement signed by
    ``expected_bundle`` (the contact's stored bundle; without it no rollover can be checked)
    that hands over to the presented bundle. ``rollover``: this node's own statement, sent in M3."""

    def __init__(
        self,
        identity: Identity,
        backend: pqc.Backend,
        *,
        expected_fingerprint: Optional[bytes] = None,
        expected_bundle: Optional[Bundle] = None,
        rollover: Optional[bytes] = None,
        suite: Suite = DEFAULT_SUITE,
        max_datagram: int = MAX_DATAGRAM,
        random_bytes: RandomBytes = secrets.token_bytes,
        reassembly_timeout: float = 30.0,
    ) -> None:
        self.identity = identity
        self.backend = backend
        if expected_bundle is not None:
            if expected_fingerprint is None:
                expected_fingerprint = expected_bundle.fingerprint()
            elif expected_bundle.fingerprint() != expected_fingerprint:
                raise ValueError("expected_bundle does not match expected_fingerprint")
        self.expected_fingerprint = expected_fingerprint
        self.expected_bundle = expected_bundle
        self.rollover = _check_rollover_arg(rollover)
        self.suite = Suite(suite)
        self.max_datagram = wire.check_max_datagram(max_datagram)
        self.conn_id = random_bytes(CONN_ID_LEN)
        self.nonce = random_bytes(NONCE_LEN)
        self.state = InitiatorState.START
        self.pending: list[bytes] = []
        self.stats: collections.Counter[str] = collections.Counter()
        self.keys: Optional[SessionKeys] = None
        self.peer_bundle: Optional[Bundle] = None
        self.peer_fingerprint: Optional[bytes] = None
        self.peer_rollover: Optional[Rollover] = None  # the statement that made a new key acceptable
        self.established_at: Optional[float] = None
        self._transcript = Transcript()
        self._e_key: Optional[pqc.EphemeralKem] = None  # held here only: never cached
        self._confirm_r = b""
        self._parts = Reassembler(
            max_fragments=32,
            max_message_bytes=MAX_HANDSHAKE_MESSAGE,
            max_peer_bytes=MAX_HANDSHAKE_MESSAGE,
            max_peer_messages=1,
            max_messages=1,
            timeout=reassembly_timeout,
        )

    @property
    def done(self) -> bool:
        return self.state in (InitiatorState.ESTABLISHED, InitiatorState.FAILED)

    def start(self, now: float) -> list[bytes]:
        """The HELLO to send (also kept in ``pending``)."""
        if self.state != InitiatorState.START:
            raise RuntimeError("Initiator.start() called twice")
        self.state = InitiatorState.WAIT_COOKIE
        self.pending = [Hello(self.conn_id, self.nonce).encode()]
        return list(self.pending)

    def abandon(self) -> None:
        """Stop (lost a simultaneous open, or the caller gave up): nothing more is sent."""
        self._fail_state()

    def _fail_state(self) -> None:
        self.state = InitiatorState.FAILED
        self.pending = []
        self._e_key = None

    def _fail(self, reason: FailReason, bundle: Optional[Bundle] = None, detail: str = "") -> Output:
        self._fail_state()
        self.stats["failed_" + reason.value] += 1
        return Output(event=Failed(reason, bundle, detail))

    def receive(self, datagram: bytes, now: float) -> Output:
        try:
            ptype, conn_id = wire.parse_prefix(datagram)
        except WireError:
            return _dropped(self.stats, "malformed")
        if conn_id != self.conn_id:
            return _dropped(self.stats, "wrong_conn")
        if ptype == PacketType.COOKIE:
            return self._on_cookie(datagram)
        if ptype == PacketType.RESP:
            return self._on_resp(datagram, now)
        if ptype == PacketType.DONE:
            return self._on_done(datagram, now)
        return _dropped(self.stats, "unexpected")

    def _on_cookie(self, datagram: bytes) -> Output:
        if self.state != InitiatorState.WAIT_COOKIE:
            return _dropped(self.stats, "duplicate")
        try:
            packet = CookiePacket.decode(datagram)
        except WireError:
            return _dropped(self.stats, "malformed")
        if not hmac.compare_digest(packet.nonce, self.nonce):
            return _dropped(self.stats, "wrong_nonce")
        self._e_key, e_public = self.backend.kem_generate_ephemeral()
        m1 = M1.pack(wire.VERSION, self.suite, self.nonce, e_public)
        self._transcript.mix(self.conn_id)
        self._transcript.mix(m1)
        self.pending = wire.fragment_message(PacketType.INIT, self.conn_id, m1, self.max_datagram, packet.cookie)
        self.state = InitiatorState.WAIT_RESP
        return Output(send=list(self.pending))

    def _on_resp(self, datagram: bytes, now: float) -> Output:
        if self.state != InitiatorState.WAIT_RESP:
            return _dropped(self.stats, "duplicate")
        try:
            frag = HandshakeFragment.decode(datagram)
            body = self._parts.add(b"", PacketType.RESP, frag.fragment, now)
        except WireError:
            return _dropped(self.stats, "malformed")
        if body is None:
            return Output()
        return self._on_m2(body)

    def _on_m2(self, body: bytes) -> Output:
        """M2 complete. Undecryptable garbage is dropped (a resend may follow); a message that
        decrypts but does not authenticate the expected responder ends the handshake."""
        if len(body) < M2_PREFIX_LEN + AEAD_TAG_LEN or self._e_key is None:
            return _dropped(self.stats, "malformed")
        conn_id_r, ct_e, sealed = body[:CONN_ID_LEN], body[CONN_ID_LEN:M2_PREFIX_LEN], body[M2_PREFIX_LEN:]
        try:
            k1 = self.backend.kem_decaps_ephemeral(self._e_key, ct_e)
        except pqc.CryptoError:
            return _dropped(self.stats, "bad_ciphertext")
        t = self._transcript.copy()
        t.mix(conn_id_r)
        h2 = t.mix(ct_e)
        try:
            plain = make_aead(self.suite, hkdf(h2, k1, LABEL_M2, 32)).decrypt(ZERO_NONCE, sealed, h2)
        except InvalidTag:
            return _dropped(self.stats, "auth")
        try:
            bundle_bytes, sig_r, rollover_bytes, _ = _decode_sealed(plain, 0)
        except WireError as exc:
            return self._fail(FailReason.BAD_MESSAGE, detail=str(exc))
        try:
            bundle = Bundle.decode(bundle_bytes)
        except IdentityError as exc:
            return self._fail(FailReason.BAD_BUNDLE, detail=str(exc))
        hb = t.mix(bundle_bytes)
        if not self.backend.verify(bundle.sig_public, SIG_CONTEXT_R + hb, sig_r):
            return self._fail(FailReason.BAD_SIGNATURE, bundle)
        fingerprint = bundle.fingerprint()
        rollover: Optional[Rollover] = None
        if self.expected_fingerprint is not None and not hmac.compare_digest(fingerprint, self.expected_fingerprint):
            rollover = self._check_rollover(rollover_bytes, bundle)
            if rollover is None:
                return self._fail(FailReason.KEY_MISMATCH, bundle)
        t.mix(sig_r)
        try:
            k2, ct_s = self.backend.kem_encaps(bundle.kem_public)
        except pqc.CryptoError as exc:
            return self._fail(FailReason.BAD_BUNDLE, bundle, str(exc))
        h4 = t.mix(ct_s)
        own_bundle = self.identity.bundle.encode()
        hc = t.mix(own_bundle)
        sig_i = self.identity.sign(self.backend, SIG_CONTEXT_I + hc)
        h5 = t.mix(sig_i)
        final = _final_secrets(h5, k1, k2)
        sealed3 = make_aead(self.suite, hkdf(h4, k1 + k2, LABEL_M3, 32)).encrypt(
            ZERO_NONCE, _encode_sealed(own_bundle, sig_i, final.confirm_i, self.rollover), h4
        )
        self.pending = wire.fragment_message(PacketType.AUTH, conn_id_r, ct_s + sealed3, self.max_datagram)
        self._transcript = t
        self._e_key = None  # forward secrecy: the ephemeral key is not needed any more
        self._confirm_r = final.confirm_r
        self.peer_bundle, self.peer_fingerprint, self.peer_rollover = bundle, fingerprint, rollover
        self.keys = SessionKeys(
            role=Role.INITIATOR,
            suite=self.suite,
            local_conn_id=self.conn_id,
            peer_conn_id=conn_id_r,
            send_secret=final.i2r,
            recv_secret=final.r2i,
            peer_fingerprint=fingerprint,
            transcript_hash=h5,
        )
        self.state = InitiatorState.WAIT_DONE
        return Output(send=list(self.pending))

    def _check_rollover(self, data: bytes, bundle: Bundle) -> Optional[Rollover]:
        """The statement of M2 if it hands the expected identity over to ``bundle`` and is signed
        by the expected bundle's key; None otherwise (the caller then fails with KEY_MISMATCH)."""
        expected = self.expected_bundle
        if not data or expected is None:
            return None
        try:
            statement = Rollover.decode(data)
        except IdentityError:
            self.stats["rollover_malformed"] += 1
            return None
        if statement.new_bundle != bundle or statement.old_fingerprint != self.expected_fingerprint:
            self.stats["rollover_other_key"] += 1
            return None
        if not verify_rollover(statement, expected, self.backend):
            self.stats["rollover_bad_signature"] += 1
            return None
        self.stats["rollover_accepted"] += 1
        return statement

    def _on_done(self, datagram: bytes, now: float) -> Output:
        if self.state != InitiatorState.WAIT_DONE:
            return _dropped(self.stats, "duplicate")
        try:
            done = Done.decode(datagram)
        except WireError:
            return _dropped(self.stats, "malformed")
        if not hmac.compare_digest(done.confirm, self._confirm_r):
            return _dropped(self.stats, "bad_confirm")
        assert self.keys is not None and self.peer_bundle is not None and self.peer_fingerprint is not None
        self.state = InitiatorState.ESTABLISHED
        self.established_at = now
        self.pending = []
        return Output(event=Established(self.keys, self.peer_bundle, self.peer_fingerprint, self.peer_rollover))


# ---------------------------------------------------------------- responder


class ResponderState(enum.Enum):
    WAIT_AUTH = "wait_auth"  # M2 sent
    AUTHENTICATED = "authenticated"  # M3 verified: waiting for accept() or reject()
    ESTABLISHED = "established"  # DONE sent
    REJECTED = "rejected"  # silent from now on
    FAILED = "failed"


@dataclass(frozen=True)
class ListenerConfig:
    """Bounds of the responder side (defaults fit one node with a few hundred contacts)."""

    max_datagram: int = MAX_DATAGRAM
    suites: tuple[Suite, ...] = (Suite.AES_256_GCM, Suite.CHACHA20_POLY1305)
    handshake_timeout: float = 30.0  # lifetime of a Responder and of its reassembly buffers
    # Limits are per host (an IPv4 address, an IPv6 /64), not per (address, port): one host
    # has 65535 ports. A share is reserved for known hosts (where a contact's session was in
    # the last 30 days), so contacts still connect while unknown hosts use all the rest.
    max_responders: int = 256  # handshakes in progress (an established one no longer counts)...
    max_responders_per_host: int = 8  # ...from one unknown host
    max_responders_per_known_host: int = 32  # ...from a known one (contacts behind one CGNAT address)
    reserved_responders: int = 64  # of max_responders, only for known hosts
    max_established: int = 256  # established responders kept to answer a lost DONE (one per peer)
    max_init_buffers: int = 64  # M1 reassemblies in progress, all cookie-verified...
    reserved_init_buffers: int = 16  # ...of which these only for known hosts
    resend_interval: float = 0.1  # a duplicate flight is answered at most this often
    max_resends: int = 8  # and at most this many times per responder (bounds amplification)
    cookie_rotation: float = 120.0


def host_key(address: Address) -> str:
    """What per-host limits count by: the IPv4 address, or the /64 of an IPv6 address (one
    subscriber gets a whole /64)."""
    host = address[0]
    text = host.decode() if isinstance(host, bytes) else str(host)
    if ":" not in text:
        return text
    try:
        return str(ipaddress.IPv6Network((text.split("%", 1)[0], 64), strict=False).network_address) + "/64"
    except ValueError:
        return text


class Responder:
    """One incoming handshake, from M1 on. Created by ``Listener``; the caller only sees it in
    the ``Authenticated`` event, to ``accept()`` or ``reject()`` it."""

    def __init__(
        self,
        listener: "Listener",
        address: Address,
        initiator_conn_id: bytes,
        conn_id: bytes,
        suite: Suite,
        now: float,
    ) -> None:
        self._listener = listener
        self.address = address
        self.initiator_conn_id = initiator_conn_id
        self.conn_id = conn_id
        self.suite = suite
        self.created = now
        self.state = ResponderState.WAIT_AUTH
        self.flight: list[bytes] = []  # M2 fragments, then [DONE]
        self.peer_bundle: Optional[Bundle] = None
        self.peer_fingerprint: Optional[bytes] = None
        self.keys: Optional[SessionKeys] = None
        self.established_at: Optional[float] = None
        self.counted = True  # in the listener's limits (until established)
        self.host = host_key(address)  # what the limits count by
        self.known_host = False        # a contact's session was at this host lately
        self._transcript = Transcript()
        self._k1 = b""
        self._confirm_r = b""
        self._last_sent = now
        self._resends = 0
        self._m1_digest = b""                       # the INIT this M2 answers...
        self._m1_count = 0                           # ...and its number of fragments
        self._repeat: dict[int, bytes] = {}          # fragments of a repeated INIT, by index

    @property
    def pending(self) -> list[bytes]:
        """What this responder would resend on a duplicate: M2 while waiting for M3, then DONE."""
        if self.state in (ResponderState.WAIT_AUTH, ResponderState.ESTABLISHED):
            return list(self.flight)
        return []

    def _respond(self, m1: bytes, e_public: bytes) -> list[bytes]:
        """Compute M2 (one encapsulation, one signature). CryptoError if e_I is unusable."""
        listener = self._listener
        k1, ct_e = listener.backend.kem_encaps(e_public)
        t = self._transcript
        t.mix(self.initiator_conn_id)
        t.mix(m1)
        t.mix(self.conn_id)
        h2 = t.mix(ct_e)
        bundle_bytes = listener.identity.bundle.encode()
        hb = t.mix(bundle_bytes)
        sig_r = listener.identity.sign(listener.backend, SIG_CONTEXT_R + hb)
        t.mix(sig_r)
        sealed = make_aead(self.suite, hkdf(h2, k1, LABEL_M2, 32)).encrypt(
            ZERO_NONCE, _encode_sealed(bundle_bytes, sig_r, rollover=listener.rollover), h2
        )
        self._k1 = k1
        self._m1_digest = hashlib.sha256(m1).digest()
        body = self.conn_id + ct_e + sealed
        self.flight = wire.fragment_message(
            PacketType.RESP, self.initiator_conn_id, body, listener.config.max_datagram
        )
        return list(self.flight)

    def _on_repeated_init(self, fragment: Fragment, now: float) -> Output:
        """A fragment of an INIT that already got its M2. M2 goes again only when the whole INIT
        came again, byte for byte: a 31-byte fragment (its cookie is visible on the path, so
        anyone there can replay it) must not buy a 7-14 KB flight."""
        if fragment.total != M1_LEN or fragment.count != self._m1_count:
            return _dropped(self._listener.stats, "duplicate_mismatch")
        self._repeat.setdefault(fragment.index, bytes(fragment.data))
        if len(self._repeat) < fragment.count:
            return _dropped(self._listener.stats, "duplicate_partial")
        parts, self._repeat = self._repeat, {}
        if set(parts) != set(range(fragment.count)) or \
                hashlib.sha256(b"".join(parts[i] for i in range(fragment.count))).digest() != self._m1_digest:
            return _dropped(self._listener.stats, "duplicate_mismatch")
        return self._resend(now)

    def _resend(self, now: float) -> Output:
        """Answer a duplicate INIT or AUTH with the last flight: at most once per resend_interval
        and max_resends times in all, so replayed INITs cannot turn this node into an amplifier."""
        stats = self._listener.stats
        config = self._listener.config
        if now - self._last_sent < config.resend_interval:
            return _dropped(stats, "duplicate")
        if self._resends >= config.max_resends:
            return _dropped(stats, "resend_limit")
        self._last_sent = now
        self._resends += 1
        stats["resent"] += 1
        return Output(send=list(self.flight))

    def _fail(self, reason: FailReason, bundle: Optional[Bundle] = None, detail: str = "") -> Output:
        self.state = ResponderState.FAILED
        self._k1 = b""
        self._listener.stats["failed_" + reason.value] += 1
        return Output(event=Failed(reason, bundle, detail))

    def _on_m3(self, body: bytes, now: float) -> Output:
        """M3 complete: undecryptable garbage is dropped (the initiator resends), an authentic
        but invalid M3 ends the handshake."""
        listener = self._listener
        stats = listener.stats
        if len(body) < M3_PREFIX_LEN + AEAD_TAG_LEN:
            return _dropped(stats, "malformed")
        ct_s, sealed = body[:M3_PREFIX_LEN], body[M3_PREFIX_LEN:]
        try:
            k2 = listener.backend.kem_decaps(listener.identity.kem_seed, ct_s)
        except pqc.CryptoError:
            return _dropped(stats, "bad_ciphertext")
        t = self._transcript.copy()
        h4 = t.mix(ct_s)
        k1 = self._k1
        try:
            plain = make_aead(self.suite, hkdf(h4, k1 + k2, LABEL_M3, 32)).decrypt(ZERO_NONCE, sealed, h4)
        except InvalidTag:
            return _dropped(stats, "auth")
        try:
            bundle_bytes, sig_i, rollover_bytes, confirm_i = _decode_sealed(plain, CONFIRM_LEN)
        except WireError as exc:
            return self._fail(FailReason.BAD_MESSAGE, detail=str(exc))
        try:
            bundle = Bundle.decode(bundle_bytes)
        except IdentityError as exc:
            return self._fail(FailReason.BAD_BUNDLE, detail=str(exc))
        hc = t.mix(bundle_bytes)
        if not listener.backend.verify(bundle.sig_public, SIG_CONTEXT_I + hc, sig_i):
            return self._fail(FailReason.BAD_SIGNATURE, bundle)
        h5 = t.mix(sig_i)
        final = _final_secrets(h5, k1, k2)
        if not hmac.compare_digest(confirm_i, final.confirm_i):
            return self._fail(FailReason.BAD_MESSAGE, bundle, "key confirmation mismatch")
        fingerprint = bundle.fingerprint()
        self._transcript = t
        self._k1 = b""
        self._confirm_r = final.confirm_r
        self.peer_bundle, self.peer_fingerprint = bundle, fingerprint
        self.keys = SessionKeys(
            role=Role.RESPONDER,
            suite=self.suite,
            local_conn_id=self.conn_id,
            peer_conn_id=self.initiator_conn_id,
            send_secret=final.r2i,
            recv_secret=final.i2r,
            peer_fingerprint=fingerprint,
            transcript_hash=h5,
        )
        rollover: Optional[Rollover] = None
        if rollover_bytes:
            try:
                rollover = Rollover.decode(rollover_bytes)
            except IdentityError:
                stats["rollover_malformed"] += 1
            if rollover is not None and rollover.new_bundle != bundle:
                stats["rollover_other_key"] += 1
                rollover = None
        self.state = ResponderState.AUTHENTICATED
        return Output(event=Authenticated(self, bundle, fingerprint, rollover))

    def accept(self, now: float) -> Output:
        """Complete the handshake: DONE to send, and the Established event with the keys."""
        if self.state != ResponderState.AUTHENTICATED:
            raise RuntimeError(f"accept() in state {self.state.value}")
        assert self.keys is not None and self.peer_bundle is not None and self.peer_fingerprint is not None
        self.state = ResponderState.ESTABLISHED
        self.established_at = now
        self.flight = [Done(self.initiator_conn_id, self._confirm_r).encode()]
        self._last_sent = now
        self._listener._established(self)
        return Output(send=list(self.flight), event=Established(self.keys, self.peer_bundle, self.peer_fingerprint))

    def reject(self) -> None:
        """Refuse the initiator (blocked, or lost a simultaneous open): nothing is ever sent again."""
        if self.state in (ResponderState.WAIT_AUTH, ResponderState.AUTHENTICATED):
            self.state = ResponderState.REJECTED
            self.flight = []
            self._k1 = b""


class Listener:
    """The responder side of every incoming handshake on one socket.

    Feed it each HELLO, INIT and AUTH datagram with the address it came from; send ``send`` back
    to that address. Nothing is stored and no public-key operation runs before a client echoes
    a valid cookie: a HELLO gets a 42-byte COOKIE (the HELLO is at least 64 bytes), and an INIT
    fragment without a valid cookie is dropped before any buffer is allocated. ``rollover``:
    this node's own statement, sent in every M2."""

    def __init__(
        self,
        identity: Identity,
        backend: pqc.Backend,
        config: ListenerConfig = ListenerConfig(),
        random_bytes: RandomBytes = secrets.token_bytes,
        rollover: Optional[bytes] = None,
        is_known_host: Callable[[str], bool] = lambda host: False,
    ) -> None:
        self.identity = identity
        self.backend = backend
        self.rollover = _check_rollover_arg(rollover)
        self.config = config
        wire.check_max_datagram(config.max_datagram)
        self.stats: collections.Counter[str] = collections.Counter()
        self._random = random_bytes
        self._cookies = CookieJar(random_bytes, config.cookie_rotation)
        self._is_known_host = is_known_host
        # INIT reassembly: unknown hosts share what known hosts do not have reserved.
        self._init_parts = self._init_reassembler(config.max_init_buffers - config.reserved_init_buffers,
                                                  config.max_responders_per_host)
        self._init_parts_known = self._init_reassembler(config.reserved_init_buffers,
                                                        config.max_responders_per_known_host)
        self._auth_parts = Reassembler(
            max_fragments=32,
            max_message_bytes=MAX_HANDSHAKE_MESSAGE,
            max_peer_bytes=MAX_HANDSHAKE_MESSAGE * config.max_responders_per_known_host,
            max_peer_messages=config.max_responders_per_known_host,
            max_messages=config.max_responders,
            timeout=config.handshake_timeout,
        )
        self._by_init: dict[tuple[Address, bytes], Responder] = {}
        self._by_conn: dict[bytes, Responder] = {}
        # The limits count handshakes in progress (and failed or rejected ones, until they
        # expire). An established responder is only kept to answer a retransmitted AUTH (the
        # DONE was lost): it must not stop the same peer from handshaking again, so it leaves
        # the counts; the newest one per peer is kept, and at most max_established in all.
        self._in_progress = 0
        self._in_progress_unknown = 0
        self._per_host: collections.Counter[str] = collections.Counter()
        self._by_peer: "collections.OrderedDict[bytes, Responder]" = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._by_conn)

    def responder(self, conn_id: bytes) -> Optional[Responder]:
        return self._by_conn.get(conn_id)

    def buffered_bytes(self) -> int:
        """Bytes reserved by reassembly buffers (INIT and AUTH)."""
        return self._init_parts.buffered_bytes() + self._init_parts_known.buffered_bytes() \
            + self._auth_parts.buffered_bytes()

    def _init_reassembler(self, max_messages: int, per_host: int) -> Reassembler:
        return Reassembler(
            max_fragments=wire.MAX_FRAGMENTS,
            max_message_bytes=M1_LEN,
            max_peer_bytes=M1_LEN * per_host,
            max_peer_messages=per_host,
            max_messages=max(0, max_messages),
            timeout=self.config.handshake_timeout,
        )

    def expire(self, now: float) -> int:
        """Forget responders older than handshake_timeout (whatever their state) and stale buffers."""
        old = []
        for responder in self._by_conn.values():  # insertion order = creation order
            if now - responder.created < self.config.handshake_timeout:
                break
            old.append(responder)
        for responder in old:
            self._forget(responder)
        self._init_parts.expire(now)
        self._init_parts_known.expire(now)
        self._auth_parts.expire(now)
        return len(old)

    def _uncount(self, responder: Responder) -> None:
        if responder.counted:
            responder.counted = False
            self._in_progress -= 1
            if not responder.known_host:
                self._in_progress_unknown -= 1
            host = responder.host
            self._per_host[host] -= 1
            if self._per_host[host] <= 0:
                del self._per_host[host]

    def _forget(self, responder: Responder) -> None:
        del self._by_conn[responder.conn_id]
        del self._by_init[(responder.address, responder.initiator_conn_id)]
        self._uncount(responder)
        if responder.peer_fingerprint is not None and self._by_peer.get(responder.peer_fingerprint) is responder:
            del self._by_peer[responder.peer_fingerprint]
        self._auth_parts.discard(responder.host, responder.conn_id)

    def _established(self, responder: Responder) -> None:
        """`responder` was accepted: out of the limits; it replaces this peer's previous one."""
        self._uncount(responder)
        fingerprint = responder.peer_fingerprint
        assert fingerprint is not None
        previous = self._by_peer.pop(fingerprint, None)
        if previous is not None and previous is not responder:
            self._forget(previous)  # its session is replaced by this one
        self._by_peer[fingerprint] = responder
        while len(self._by_peer) > self.config.max_established:
            self._forget(next(iter(self._by_peer.values())))

    def receive(self, datagram: bytes, address: Address, now: float) -> Output:
        self.expire(now)
        try:
            ptype, _ = wire.parse_prefix(datagram)
        except WireError:
            return _dropped(self.stats, "malformed")
        if ptype == PacketType.HELLO:
            return self._on_hello(datagram, address, now)
        if ptype == PacketType.INIT:
            return self._on_init(datagram, address, now)
        if ptype == PacketType.AUTH:
            return self._on_auth(datagram, address, now)
        return _dropped(self.stats, "unexpected")

    def _on_hello(self, datagram: bytes, address: Address, now: float) -> Output:
        try:
            hello = Hello.decode(datagram)
            cookie = self._cookies.make(address, hello.conn_id, now)
        except WireError:
            return _dropped(self.stats, "malformed")
        self.stats["cookies"] += 1
        return Output(send=[CookiePacket(hello.conn_id, hello.nonce, cookie).encode()])

    def _on_init(self, datagram: bytes, address: Address, now: float) -> Output:
        try:
            frag = HandshakeFragment.decode(datagram)
        except WireError:
            return _dropped(self.stats, "malformed")
        if not self._cookies.check(address, frag.conn_id, frag.cookie, now):
            return _dropped(self.stats, "bad_cookie")
        existing = self._by_init.get((address, frag.conn_id))
        if existing is not None:
            if existing.state != ResponderState.WAIT_AUTH:
                return _dropped(self.stats, "duplicate")
            return existing._on_repeated_init(frag.fragment, now)
        if frag.fragment.total != M1_LEN:
            return _dropped(self.stats, "malformed")
        host = host_key(address)
        known = self._is_known_host(host)
        config = self.config
        if self._in_progress >= config.max_responders or \
                (not known and self._in_progress_unknown >= config.max_responders - config.reserved_responders):
            return _dropped(self.stats, "busy")
        if self._per_host[host] >= (config.max_responders_per_known_host if known else config.max_responders_per_host):
            return _dropped(self.stats, "busy_host")
        # A known host uses the reserve while it has room, then the shared buffers.
        key = (address, frag.conn_id)
        in_reserve = (host, key) in self._init_parts_known
        if known and not in_reserve and (host, key) not in self._init_parts \
                and len(self._init_parts_known) < config.reserved_init_buffers:
            in_reserve = True
        try:
            m1 = (self._init_parts_known if in_reserve else self._init_parts).add(host, key, frag.fragment, now)
        except WireError:
            return _dropped(self.stats, "busy_or_inconsistent")
        if m1 is None:
            return Output()
        version, suite, _nonce, e_public = M1.unpack(m1)
        if version != wire.VERSION or suite not in self.config.suites:
            return _dropped(self.stats, "unsupported")
        conn_id = self._random(CONN_ID_LEN)
        while conn_id in self._by_conn:
            conn_id = self._random(CONN_ID_LEN)
        responder = Responder(self, address, frag.conn_id, conn_id, Suite(suite), now)
        responder.host, responder.known_host = host, known
        responder._m1_count = frag.fragment.count
        try:
            flight = responder._respond(m1, e_public)
        except pqc.CryptoError:
            return _dropped(self.stats, "bad_key")
        self._by_conn[conn_id] = responder
        self._by_init[(address, frag.conn_id)] = responder
        self._per_host[host] += 1
        self._in_progress += 1
        if not known:
            self._in_progress_unknown += 1
        self.stats["responses"] += 1
        return Output(send=flight)

    def _on_auth(self, datagram: bytes, address: Address, now: float) -> Output:
        try:
            frag = HandshakeFragment.decode(datagram)
        except WireError:
            return _dropped(self.stats, "malformed")
        responder = self._by_conn.get(frag.conn_id)
        if responder is None:
            return _dropped(self.stats, "unknown_conn")
        if responder.address != address:
            return _dropped(self.stats, "wrong_address")
        if responder.state == ResponderState.ESTABLISHED:
            return responder._resend(now)
        if responder.state != ResponderState.WAIT_AUTH:
            return _dropped(self.stats, "duplicate")
        try:
            m3 = self._auth_parts.add(responder.host, responder.conn_id, frag.fragment, now)
        except WireError:
            return _dropped(self.stats, "busy_or_inconsistent")
        if m3 is None:
            return Output()
        return responder._on_m3(m3, now)


__all__ = [
    "Authenticated",
    "CookieJar",
    "Established",
    "FailReason",
    "Failed",
    "Initiator",
    "InitiatorState",
    "Listener",
    "ListenerConfig",
    "Output",
    "Responder",
    "ResponderState",
    "Transcript",
    "accept_incoming",
    "keep_outgoing",
]
