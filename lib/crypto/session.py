"""An established ChatP2P session: DATA frames sealed and opened, counters, replay window, rekey.

Pure state, no I/O: ``Session.seal(records, now)`` returns datagrams to send, ``Session.open
(datagram, now)`` returns the records of a received one or raises ``FrameDropped`` (after
counting the reason in ``Session.stats``); ``seal_payloads`` and ``open_many`` do the same for a
burst in one pass. The caller owns the clock and the socket.

Keys: each direction has its own traffic secret from the handshake (labels "chatp2p v1 i2r" and
"chatp2p v1 r2i"); a secret yields an AEAD key and a 12-byte IV; the nonce of a frame is the IV
XOR its 64-bit counter. Rekeying replaces a secret by HKDF-Expand(secret, "chatp2p v1 rekey"),
one way, and bumps the key-phase byte of the header (the generation mod 256). AEAD objects are built once per key (pyca
``cryptography``): per-frame cost stays around a microsecond. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from ..errors import Internal, Refused
from ..codec import wire
from ..codec.wire import (
    AEAD_TAG_LEN,
    CONN_ID_LEN,
    DATA_HEADER_LEN,
    DATA_OVERHEAD,
    MAX_COUNTER,
    RECORD_HEADER_LEN,
    MAX_DATAGRAM,
    DataHeader,
    Record,
    WireError,
)

SECRET_LEN = 32
KEY_LEN = 32
IV_LEN = 12

LABEL_I2R = b"chatp2p v1 i2r"
LABEL_R2I = b"chatp2p v1 r2i"
LABEL_KEY = b"chatp2p v1 key"
LABEL_IV = b"chatp2p v1 iv"
LABEL_REKEY = b"chatp2p v1 rekey"

Aead = Union[AESGCM, ChaCha20Poly1305]


class Suite(enum.IntEnum):
    """AEAD of a session (the KEM, signature and hash are fixed in protocol v1)."""

    CHACHA20_POLY1305 = 0x01
    AES_256_GCM = 0x02


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


def make_aead(suite: Suite, key: bytes) -> Aead:
    """The AEAD object of ``suite`` for ``key``: build it once per key and keep it."""
    if len(key) != KEY_LEN:
        raise ValueError(f"an AEAD key is {KEY_LEN} bytes")
    if suite == Suite.AES_256_GCM:
        return AESGCM(key)
    if suite == Suite.CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown suite {suite!r}")


def hkdf_expand(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-SHA256(secret, info=label)."""
    return HKDFExpand(hashes.SHA256(), length, label).derive(secret)


def hkdf(salt: bytes, ikm: bytes, label: bytes, length: int) -> bytes:
    """HKDF-SHA256 (extract with ``salt``, then expand with info ``label``)."""
    return HKDF(hashes.SHA256(), length, salt, label).derive(ikm)


def next_secret(secret: bytes) -> bytes:
    """The traffic secret after a rekey: one way, so an old key cannot be recomputed from a new one."""
    return hkdf_expand(secret, LABEL_REKEY, SECRET_LEN)


class SessionError(Internal):
    """A session cannot do what was asked (counter exhausted, records too large for a datagram)."""


class DropReason(str, enum.Enum):
    """Why a received DATA frame was dropped; ``Session.stats["dropped_" + value]`` counts them."""

    MALFORMED = "malformed"  # not a well-formed DATA datagram
    WRONG_CONN = "wrong_conn"  # connection id is not this session's
    TOO_OLD = "too_old"  # counter fell out of the replay window
    REPLAY = "replay"  # counter already accepted
    OLD_KEY = "old_key"  # previous key generation, after its grace period
    KEY_PHASE = "key_phase"  # key phase neither current, previous nor a few generations ahead
    AUTH = "auth"  # AEAD authentication failed: tampered, forged or wrong key
    BAD_RECORDS = "bad_records"  # authentic frame whose plaintext is not valid records


class FrameDropped(Refused, SessionError):
    """A received frame was rejected and counted; ``reason`` says why."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"frame dropped: {reason.value}{': ' + detail if detail else ''}")
        self.reason = reason


@dataclass(frozen=True)
class SessionKeys:
    """What a completed handshake hands to a Session: one traffic secret per direction."""

    role: Role
    suite: Suite
    local_conn_id: bytes  # frames we receive carry it
    peer_conn_id: bytes  # frames we send carry it
    send_secret: bytes = field(repr=False)
    recv_secret: bytes = field(repr=False)
    peer_fingerprint: bytes = b""
    transcript_hash: bytes = b""  # the final handshake hash: a channel binding for upper layers

    def __post_init__(self) -> None:
        for value, size, what in (
            (self.local_conn_id, CONN_ID_LEN, "local connection id"),
            (self.peer_conn_id, CONN_ID_LEN, "peer connection id"),
            (self.send_secret, SECRET_LEN, "send secret"),
            (self.recv_secret, SECRET_LEN, "receive secret"),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise ValueError(f"{what} must be {size} bytes")

    def export(self, label: bytes, length: int = 32) -> bytes:
        """A secret both ends of this session compute alike, for use outside the session
        (an exporter): HKDF-Expand(HKDF-Extract(salt = transcript hash, IKM = i2r || r2i),
        label, length). Independent of the traffic keys: knowing it reveals none of them."""
        if self.role == Role.INITIATOR:
            i2r, r2i = self.send_secret, self.recv_secret
        else:
            i2r, r2i = self.recv_secret, self.send_secret
        prk = hmac.new(self.transcript_hash, i2r + r2i, hashlib.sha256).digest()
        return hkdf_expand(prk, label, length)


@dataclass(frozen=True)
class SessionConfig:
    """Rekey and replay settings (defaults: rekey after 2^20 frames or 10 minutes).

    ``max_key_skip`` must stay well below 255: the phase byte wraps at 256."""

    rekey_frames: int = 1 << 20
    rekey_seconds: float = 600.0
    key_grace_seconds: float = 30.0  # how long a receiver keeps the previous key after a rekey
    max_key_skip: int = 8  # generations a receiver may jump at once (all frames of some lost)
    replay_window: int = 2048


class ReplayWindow:
    """Sliding bitmap of the last ``size`` counters below the highest one accepted.

    ``check`` is asked before decrypting, ``accept`` only after the frame authenticated, so a
    forged frame can never move the window."""

    def __init__(self, size: int = 2048) -> None:
        if size < 1:
            raise ValueError("replay window size must be >= 1")
        self.size = size
        self.highest = -1
        self._bits = 0  # bit i set: counter (highest - i) accepted
        self._mask = (1 << size) - 1

    def check(self, counter: int) -> Optional[DropReason]:
        """None if ``counter`` may be new, else TOO_OLD or REPLAY."""
        if counter > self.highest:
            return None
        offset = self.highest - counter
        if offset >= self.size:
            return DropReason.TOO_OLD
        if (self._bits >> offset) & 1:
            return DropReason.REPLAY
        return None

    def accept_run(self, count: int) -> None:
        """`accept` for the `count` counters just above `highest`, in one shift of the bitmap."""
        self._bits = ((self._bits << count) | ((1 << count) - 1)) & self._mask if count < self.size else self._mask
        self.highest += count

    def accept(self, counter: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self.highest = counter
        else:
            self._bits |= 1 << (self.highest - counter)


class _Keys:
    """One generation of one direction's keys."""

    __slots__ = ("generation", "secret", "aead", "iv", "installed", "frames")

    def __init__(self, suite: Suite, secret: bytes, generation: int, installed: float) -> None:
        self.generation = generation
        self.secret = secret
        self.aead = make_aead(suite, hkdf_expand(secret, LABEL_KEY, KEY_LEN))
        self.iv = int.from_bytes(hkdf_expand(secret, LABEL_IV, IV_LEN), "big")
        self.installed = installed
        self.frames = 0

    @property
    def phase(self) -> int:
        return self.generation % wire.KEY_PHASES

    def nonce(self, counter: int) -> bytes:
        return (self.iv ^ counter).to_bytes(IV_LEN, "big")

    def successor(self, suite: Suite, installed: float) -> "_Keys":
        return _Keys(suite, next_secret(self.secret), self.generation + 1, installed)


class Session:
    """Seal and open DATA frames of one session; see the module docstring."""

    def __init__(self, keys: SessionKeys, now: float, config: SessionConfig = SessionConfig()) -> None:
        self.keys = keys
        self.config = config
        self.stats: collections.Counter[str] = collections.Counter()
        self._suite = keys.suite
        self._send = _Keys(keys.suite, keys.send_secret, 0, now)
        self._next_counter = 0
        self._recv = _Keys(keys.suite, keys.recv_secret, 0, now)
        self._recv_prev: Optional[_Keys] = None
        self._recv_prev_until = 0.0
        self._recv_ahead: list[_Keys] = []  # next generations, derived when a frame needs them
        self._window = ReplayWindow(config.replay_window)
        self.last_received: Optional[float] = None

    # ------------------------------------------------------------ introspection

    @property
    def send_counter(self) -> int:
        """The counter the next sealed frame will carry."""
        return self._next_counter

    @property
    def send_generation(self) -> int:
        return self._send.generation

    @property
    def recv_generation(self) -> int:
        return self._recv.generation

    # ------------------------------------------------------------ sending

    def rekey_due(self, now: float) -> bool:
        send = self._send
        return send.frames >= self.config.rekey_frames or now - send.installed >= self.config.rekey_seconds

    def seal_payload(self, payload: bytes, now: float) -> bytes:
        """One DATA datagram carrying ``payload`` (already-encoded records)."""
        if self._next_counter > MAX_COUNTER:
            raise SessionError("frame counter exhausted: start a new handshake")
        if self.rekey_due(now):
            self._send = self._send.successor(self._suite, now)
            self.stats["rekeys_sent"] += 1
        counter = self._next_counter
        self._next_counter += 1
        self._send.frames += 1
        header = DataHeader(self.keys.peer_conn_id, self._send.phase, counter).encode()
        self.stats["sent"] += 1
        return header + self._send.aead.encrypt(self._send.nonce(counter), bytes(payload), header)

    def seal_payloads(self, payloads: Sequence[bytes], now: float) -> list[bytes]:
        """One DATA datagram per payload, in one pass: the frames `seal_payload` would make one
        by one, without its per-frame lookups (a burst of file data). A batch that would cross
        a rekey or the end of the counter space goes frame by frame."""
        count = len(payloads)
        keys = self._send
        if (self._next_counter + count - 1 > MAX_COUNTER or keys.frames + count > self.config.rekey_frames
                or self.rekey_due(now)):
            return [self.seal_payload(payload, now) for payload in payloads]
        encrypt, iv, pack = keys.aead.encrypt, keys.iv, wire.DATA_HEADER.pack
        version, data, conn_id, phase = wire.VERSION_BYTE, wire.PacketType.DATA, self.keys.peer_conn_id, keys.phase
        counter = self._next_counter
        out = []
        for payload in payloads:
            header = pack(version, data, conn_id, phase, counter)
            out.append(header + encrypt((iv ^ counter).to_bytes(IV_LEN, "big"), payload, header))
            counter += 1
        self._next_counter = counter
        keys.frames += count
        self.stats["sent"] += count
        return out

    def seal(
        self, records: Sequence[Record], now: float, max_datagram: int = MAX_DATAGRAM, pad: bool = False
    ) -> list[bytes]:
        """Pack ``records`` in order into as few DATA datagrams of at most ``max_datagram`` bytes
        as possible. ``pad`` fills each datagram to exactly ``max_datagram`` (MTU probes).

        Raises SessionError if one record alone does not fit in a datagram."""
        capacity = wire.payload_capacity(max_datagram)
        payloads: list[list[bytes]] = [[]]
        used = 0
        for record in records:
            encoded = wire.encode_record(record)
            if len(encoded) > capacity:
                raise SessionError(f"a {len(encoded)}-byte record does not fit in a {max_datagram}-byte datagram")
            if used + len(encoded) > capacity and payloads[-1]:
                payloads.append([])
                used = 0
            payloads[-1].append(encoded)
            used += len(encoded)
        out = []
        for parts in payloads:
            payload = b"".join(parts)
            if pad:
                payload += bytes(capacity - len(payload))
            out.append(self.seal_payload(payload, now))
        return out

    # ------------------------------------------------------------ receiving

    def _drop(self, reason: DropReason, detail: str = "") -> FrameDropped:
        self.stats["dropped_" + reason.value] += 1
        return FrameDropped(reason, detail)

    def _receive_key(self, phase: int, now: float) -> tuple[_Keys, int]:
        """(key to try, generations it is ahead of the current one) for a frame's key phase.

        The phase byte is the sender's generation mod 256: the current one, the previous one
        (during its grace period), or up to ``max_key_skip`` generations ahead (derived on demand
        and cached, so a run of forged frames costs a few HKDF calls once)."""
        delta = (phase - self._recv.generation) % wire.KEY_PHASES
        if delta == 0:
            return self._recv, 0
        if delta == wire.KEY_PHASES - 1:
            if self._recv_prev is None or now > self._recv_prev_until:
                self._recv_prev = None
                raise self._drop(DropReason.OLD_KEY)
            return self._recv_prev, 0
        if delta > self.config.max_key_skip:
            raise self._drop(DropReason.KEY_PHASE, f"phase {phase} at generation {self._recv.generation}")
        while len(self._recv_ahead) < delta:
            base = self._recv_ahead[-1] if self._recv_ahead else self._recv
            self._recv_ahead.append(base.successor(self._suite, now))
        return self._recv_ahead[delta - 1], delta

    def open(self, datagram: bytes, now: float) -> list[Union[Record, bytes]]:
        """The records of a received DATA datagram (`wire.frame_records`: a file record alone
        stays encoded); FrameDropped (counted) if it must be ignored."""
        return self._records(self._authenticate(datagram, now))

    def open_many(self, datagrams: Sequence[bytes], now: float) -> "Opened":
        """`open` for many datagrams of this session at once (one GRO buffer, a burst of file
        data): the records of every frame that authenticates, in order; a frame that does not is
        counted and dropped alone, the others are kept. Frames under the current key with a new
        counter (all of them, in a steady flow) skip `open`'s per-frame lookups, and a run of
        consecutive counters enters the replay window in one step; any other frame goes the way
        `open` takes it. What runs for every datagram of a file is kept to locals and one
        decryption: counters are added up once at the end."""
        records: list[Union[Record, bytes]] = []
        dropped: list[DropReason] = []
        accepted = size = encoded = 0
        unpack, local = wire.DATA_HEADER.unpack_from, self.keys.local_conn_id
        version, data_type = wire.VERSION_BYTE, wire.PacketType.DATA
        frame_records, file_types, append = wire.frame_records, wire.FILE_RECORD_TYPES, records.append
        window = self._window
        key = self._recv
        phase, decrypt, iv = key.phase, key.aead.decrypt, key.iv
        fast_frames = 0  # frames opened under `key` in the fast path, added to key.frames at once
        # The replay window in locals: `run` counters just above `highest - run`, accepted one
        # after the other, are not in `window._bits` yet (`window.accept_run` adds them at once).
        highest, run = window.highest, 0
        for datagram in datagrams:
            try:
                fast = False
                if type(datagram) is bytes and len(datagram) >= DATA_OVERHEAD:
                    head_version, ptype, conn_id, key_phase, counter = unpack(datagram)
                    if (head_version == version and ptype == data_type and conn_id == local
                            and key_phase == phase):
                        if counter > highest:
                            fast = True
                        else:  # late or replayed: the window decides, brought up to date first
                            if run:
                                window.accept_run(run)
                                run = 0
                            fast = window.check(counter) is None
                if fast:
                    try:  # the ciphertext as a bytes slice: cryptography takes it faster than a view
                        payload = decrypt((iv ^ counter).to_bytes(IV_LEN, "big"), datagram[DATA_HEADER_LEN:],
                                          datagram[:DATA_HEADER_LEN])
                    except InvalidTag:
                        raise self._drop(DropReason.AUTH) from None
                    fast_frames += 1
                    if counter == highest + 1:
                        run += 1
                        highest = counter
                    else:
                        if run:
                            window.accept_run(run)
                            run = 0
                        window.accept(counter)
                        highest = window.highest
                else:
                    if run:
                        window.accept_run(run)
                        run = 0
                    key.frames += fast_frames
                    fast_frames = 0
                    payload = self._authenticate(datagram, now)
                    highest = window.highest
                    key = self._recv  # it may have moved to the next generation
                    phase, decrypt, iv = key.phase, key.aead.decrypt, key.iv
                # frame_records inline for the usual frame: one file record alone, kept encoded.
                if (len(payload) > RECORD_HEADER_LEN and payload[0] in file_types
                        and RECORD_HEADER_LEN + (payload[1] << 8 | payload[2]) == len(payload)):
                    append(payload)
                    encoded += 1
                else:
                    try:
                        records.extend(frame_records(payload))
                    except WireError as exc:
                        raise self._drop(DropReason.BAD_RECORDS, str(exc)) from None
            except FrameDropped as exc:
                dropped.append(exc.reason)
                continue
            accepted += 1
            size += len(datagram)
        if run:
            window.accept_run(run)
        key.frames += fast_frames
        if accepted or DropReason.BAD_RECORDS in dropped:  # frames that authenticated
            self.last_received = now
        self.stats["received"] += accepted
        return Opened(records, accepted, size, dropped, encoded)

    def _authenticate(self, datagram: bytes, now: float) -> bytes:
        """The plaintext of a received DATA datagram, once it authenticated and its counter is
        accepted; FrameDropped (counted) if it must be ignored."""
        # The header read straight from the bytes (this runs for every datagram of a file);
        # anything unusual takes DataHeader.decode, which says what is wrong with it.
        fields = None
        if type(datagram) is bytes and len(datagram) >= DATA_OVERHEAD:
            fields = wire.DATA_HEADER.unpack_from(datagram)
            if fields[0] != wire.VERSION_BYTE or fields[1] != wire.PacketType.DATA:
                fields = None
        if fields is None:
            try:
                header = DataHeader.decode(datagram)
            except WireError as exc:
                raise self._drop(DropReason.MALFORMED, str(exc)) from None
            fields = (wire.VERSION_BYTE, wire.PacketType.DATA, header.conn_id, header.key_phase, header.counter)
        _, _, conn_id, key_phase, counter = fields
        if conn_id != self.keys.local_conn_id:
            raise self._drop(DropReason.WRONG_CONN)
        verdict = self._window.check(counter)
        if verdict is not None:
            raise self._drop(verdict)
        key, ahead = self._receive_key(key_phase, now)
        head = bytes(datagram[:DATA_HEADER_LEN])
        try:
            # A memoryview: no copy of a 64 KiB ciphertext before decrypting it (file data).
            payload = key.aead.decrypt(key.nonce(counter), memoryview(datagram)[DATA_HEADER_LEN:], head)
        except InvalidTag:
            raise self._drop(DropReason.AUTH) from None
        if ahead:
            self._recv_prev = self._recv_ahead[ahead - 2] if ahead > 1 else self._recv
            self._recv_prev_until = now + self.config.key_grace_seconds
            self._recv = key
            self._recv.installed = now
            del self._recv_ahead[:ahead]
            self.stats["rekeys_received"] += ahead
        key.frames += 1
        self._window.accept(counter)
        self.last_received = now
        return payload

    def _records(self, payload: bytes) -> list[Union[Record, bytes]]:
        """The records of an authenticated frame's plaintext (BAD_RECORDS if malformed)."""
        try:
            records = wire.frame_records(payload)
        except WireError as exc:
            raise self._drop(DropReason.BAD_RECORDS, str(exc)) from None
        self.stats["received"] += 1
        return records


@dataclass
class Opened:
    """What `Session.open_many` got from a batch of datagrams."""

    records: list[Union[Record, bytes]]  # of every accepted frame, in order (`wire.frame_records`:
                                         # a file record alone stays encoded, as bytes)
    frames: int                  # frames accepted
    size: int                    # their bytes (datagram sizes)
    dropped: list[DropReason]    # one reason per frame dropped (also counted in Session.stats)
    encoded: int = 0             # records that are file records left encoded (all of them, in a
                                 # burst of file data: then nobody needs to look at each)


__all__ = [
    "AEAD_TAG_LEN",
    "DATA_OVERHEAD",
    "DropReason",
    "FrameDropped",
    "Opened",
    "ReplayWindow",
    "Role",
    "Session",
    "SessionConfig",
    "SessionError",
    "SessionKeys",
    "Suite",
    "hkdf",
    "hkdf_expand",
    "make_aead",
    "next_secret",
]
