"""LAN discovery: contacts on one network segment find each other without any server.

Every `interval` seconds (`lan_interval`, 5 s by default) a node multicasts a small
announcement (TTL 1, link-scoped group) on its own well-known UDP port: its P2P port and
exactly `MAX_TAGS` tags, which rotate every `TAG_PERIOD` seconds. The tags carry no identity:

- a *pair tag* per contact with whom this node shares a pair secret (`pair_secret`, exported
  from their first session and stored with the contact): only that contact can compute it;
- the *ID tag* (derived from the node's ID and the epoch), only while some contact has no pair
  secret yet: a contact added by ID alone finds us by it, and so can anyone who knows the ID;
- random filler up to `MAX_TAGS`, so the count says nothing about the number of contacts.

A node that recognises a tag of one of its contacts starts a handshake to that address; the
handshake then proves who is there (a wrong identity is a `key_mismatch`, and the candidate
rules of `candidates.py` keep such an address from hijacking the contact). Nothing is ever
sent in reply to an announcement itself, so the port cannot be used to amplify traffic.
PROTOCOL.md §8 has the byte layout and what an attacker on the segment still learns.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import random
import socket
import struct
import time
from typing import Callable, Iterable, Optional, Sequence

from ..errors import Invalid

import gevent
from gevent import socket as gsocket

log = logging.getLogger("chatp2p.lan")

MAGIC = b"CP2L"
VERSION = 2
VERSION_1 = 1                            # one ID tag, no count: still understood
HEADER = struct.Struct(">4sBIHB")        # magic, version, epoch, p2p port, tag count
ANNOUNCE_V1 = struct.Struct(">4sBIH16s")
TAG_LEN = 16
MAX_TAGS = 16                            # tags per announcement (always exactly this many are sent)
ANNOUNCE_SIZE = HEADER.size + MAX_TAGS * TAG_LEN   # 268 bytes: far below one 1200-byte datagram
TAG_PERIOD = 300                         # seconds a tag stays the same
MIN_INTERVAL = 0.1                       # seconds between announcements at the shortest (lan_interval)
DEFAULT_PORT = 48889
DEFAULT_GROUP = "239.255.48.89"          # administratively scoped, never routed off the link (TTL 1)
KEY_LABEL = b"chatp2p v1 lan key"
TAG_LABEL = b"chatp2p v1 lan tag"
PAIR_SECRET_LABEL = b"chatp2p v1 lan pair secret"
PAIR_TAG_LABEL = b"chatp2p v1 lan pair tag"
PAIR_SECRET_LEN = 32

LanContact = tuple  # (fingerprint: bytes, pair secret: bytes | None), an unblocked contact


class AnnouncementError(Invalid):
    """A LAN datagram that is not a well-formed announcement."""


# ---------------------------------------------------------------- derivations (pure)


def lan_key(fingerprint: bytes) -> bytes:
    """The ID-tag key of an identity: derivable from its ID, so contacts added by ID match too."""
    return hashlib.sha256(KEY_LABEL + fingerprint).digest()


def tag(key: bytes, epoch: int) -> bytes:
    return hmac.new(key, TAG_LABEL + struct.pack(">I", epoch), hashlib.sha256).digest()[:TAG_LEN]


def id_tag(fingerprint: bytes, epoch: int) -> bytes:
    """The ID tag of `fingerprint` for `epoch`: anyone who knows the ID can compute it."""
    return tag(lan_key(fingerprint), epoch)


def pair_secret(keys) -> bytes:
    """The LAN secret two contacts share after a session (`SessionKeys.export`): both ends
    compute the same 32 bytes, nobody else can."""
    return keys.export(PAIR_SECRET_LABEL, PAIR_SECRET_LEN)


def pair_tag(secret: bytes, announcer: bytes, epoch: int) -> bytes:
    """The tag `announcer` sends for the contact it shares `secret` with. The announcer's ID is
    in the input so the two ends' tags differ (a node never mistakes its own looped-back
    announcement for its contact's)."""
    return hmac.new(secret, PAIR_TAG_LABEL + announcer + struct.pack(">I", epoch),
                    hashlib.sha256).digest()[:TAG_LEN]


def epoch_of(now: float) -> int:
    return int(now // TAG_PERIOD) & 0xFFFFFFFF


def announce_tags(own: bytes, contacts: Sequence[LanContact], epoch: int, cursor: int = 0) -> tuple[list[bytes], int]:
    """The real tags of one announcement and the next rotation cursor.

    One pair tag per contact with a pair secret and, only while some contact has none, our ID
    tag. Beyond `MAX_TAGS`, the ID tag keeps its slot and the pair tags take turns: each
    announcement carries the next window of them (contacts ordered by ID), so every contact's
    tag goes out at least once every ceil(n / slots) announcements."""
    secrets = sorted((fp, secret) for fp, secret in contacts if secret)
    need_id = any(not secret for _, secret in contacts)
    tags = [id_tag(own, epoch)] if need_id else []
    slots = MAX_TAGS - len(tags)
    if len(secrets) <= slots:
        chosen, cursor = secrets, 0
    else:
        start = cursor % len(secrets)
        chosen = [secrets[(start + i) % len(secrets)] for i in range(slots)]
        cursor = (start + slots) % len(secrets)
    tags += [pair_tag(secret, own, epoch) for _, secret in chosen]
    return tags, cursor


# ---------------------------------------------------------------- the datagram (pure)


def encode_announcement(p2p_port: int, epoch: int, tags: Sequence[bytes],
                        rng: Optional[random.Random] = None) -> bytes:
    """An announcement of exactly MAX_TAGS tags: `tags` plus random filler, in random order."""
    if len(tags) > MAX_TAGS or any(len(t) != TAG_LEN for t in tags):
        raise AnnouncementError("at most MAX_TAGS tags of TAG_LEN bytes")
    slots = list(tags) + [os.urandom(TAG_LEN) for _ in range(MAX_TAGS - len(tags))]
    (rng or random.SystemRandom()).shuffle(slots)
    return HEADER.pack(MAGIC, VERSION, epoch, p2p_port, MAX_TAGS) + b"".join(slots)


def decode_announcement(data: bytes) -> tuple[int, int, tuple[bytes, ...]]:
    """(epoch, p2p port, tags) of an announcement; AnnouncementError for anything else.

    Version 2 carries 1 to MAX_TAGS tags; version 1 (27 bytes) carries one ID tag."""
    if len(data) == ANNOUNCE_V1.size:
        magic, version, epoch, port, value = ANNOUNCE_V1.unpack(data)
        if magic != MAGIC or version != VERSION_1:
            raise AnnouncementError("not a ChatP2P announcement")
        tags: tuple[bytes, ...] = (value,)
    else:
        if len(data) < HEADER.size:
            raise AnnouncementError("too short")
        magic, version, epoch, port, count = HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise AnnouncementError("not a ChatP2P announcement")
        if not 1 <= count <= MAX_TAGS or len(data) != HEADER.size + count * TAG_LEN:
            raise AnnouncementError("wrong size")
        tags = tuple(data[HEADER.size + i * TAG_LEN:HEADER.size + (i + 1) * TAG_LEN] for i in range(count))
    if not 0 < port < 65536:
        raise AnnouncementError("bad port")
    return epoch, port, tags


class Matcher:
    """Which contacts a received announcement's tags belong to.

    Keeps, per epoch, a table tag -> contact ID of every tag a contact may send (its ID tag, and
    its pair tag when we share a secret), rebuilt when the contacts change: a datagram costs
    MAX_TAGS dictionary look-ups, not (tags x contacts) HMACs."""

    OWN = b""

    def __init__(self) -> None:
        self._key: tuple = ()
        self._tables: dict[int, dict[bytes, bytes]] = {}

    def _table(self, own: bytes, contacts: Sequence[LanContact], epoch: int) -> dict[bytes, bytes]:
        key = (own, tuple(contacts))
        if key != self._key:
            self._key, self._tables = key, {}
        table = self._tables.get(epoch)
        if table is None:
            # Only epochs within one period of the clock are matched: keep those.
            self._tables = {e: t for e, t in self._tables.items() if abs(e - epoch) <= 2}
            table = {}
            for fingerprint, secret in contacts:
                table[id_tag(fingerprint, epoch)] = fingerprint
                if secret:
                    table[pair_tag(secret, fingerprint, epoch)] = fingerprint
            table[id_tag(own, epoch)] = self.OWN
            self._tables[epoch] = table
        return table

    def match(self, own: bytes, contacts: Sequence[LanContact], epoch: int, tags: Iterable[bytes],
              now: float) -> list[bytes]:
        """The contacts (IDs, each once) whose tags are among `tags`, if `epoch` is current
        (within one period of `now`); nothing for our own announcement, looped back."""
        if abs(epoch - epoch_of(now)) > 1:
            return []
        table = self._table(own, contacts, epoch)
        found: list[bytes] = []
        for value in tags:
            fingerprint = table.get(value)
            if fingerprint == self.OWN:
                return []
            if fingerprint is not None and fingerprint not in found:
                found.append(fingerprint)
        return found


def match(contacts: Sequence[LanContact], epoch: int, tags: Iterable[bytes], now: float,
          own: bytes = bytes(32)) -> list[bytes]:
    """`Matcher().match` without the cache (tests, one-off checks)."""
    return Matcher().match(own, contacts, epoch, tags, now)


# ---------------------------------------------------------------- I/O

Found = Callable[[bytes, tuple], None]


class LanDiscovery:
    """Announces this node and reports contacts heard on the segment (gevent I/O).

    `contacts()` returns the unblocked contacts as (fingerprint, pair secret or None)."""

    def __init__(self, fingerprint: bytes, p2p_port: int, contacts: Callable[[], list[LanContact]], found: Found,
                 port: int = DEFAULT_PORT, group: str = DEFAULT_GROUP, interval: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.fingerprint = fingerprint
        self.p2p_port = p2p_port
        self.contacts = contacts
        self.found = found
        self.port = port
        self.group = group
        self.interval = max(interval, MIN_INTERVAL)
        self.clock = clock
        self.counters: dict[str, int] = {"announced": 0, "heard": 0, "matched": 0, "ignored": 0}
        self.sock: Optional[gsocket.socket] = None
        self.matcher = Matcher()
        self._cursor = 0
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("", self.port))
            membership = struct.pack("4s4s", socket.inet_aton(self.group), socket.inet_aton("0.0.0.0"))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self._greenlets = [gevent.spawn(self._announce_loop), gevent.spawn(self._receive_loop)]

    def stop(self) -> None:
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        self._greenlets = []
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def announcement(self) -> bytes:
        """The next announcement (advances the rotation through contacts' pair tags)."""
        epoch = epoch_of(self.clock())
        tags, self._cursor = announce_tags(self.fingerprint, self.contacts(), epoch, self._cursor)
        return encode_announcement(self.p2p_port, epoch, tags)

    def announce(self) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(self.announcement(), (self.group, self.port))
            self.counters["announced"] += 1
        except OSError as exc:
            log.debug("LAN announcement failed: %s", exc)

    def _announce_loop(self) -> None:
        while True:
            self.announce()
            gevent.sleep(self.interval)

    def _receive_loop(self) -> None:
        while self.sock is not None:
            try:
                data, address = self.sock.recvfrom(2048)
            except OSError:
                if self.sock is None:
                    return
                gevent.sleep(0.1)
                continue
            self.on_datagram(data, address)

    def on_datagram(self, data: bytes, address: tuple) -> None:
        self.counters["heard"] += 1
        try:
            epoch, port, tags = decode_announcement(data)
        except AnnouncementError:
            self.counters["ignored"] += 1
            return
        fingerprints = self.matcher.match(self.fingerprint, self.contacts(), epoch, tags, self.clock())
        if not fingerprints:
            self.counters["ignored"] += 1
            return
        for fingerprint in fingerprints:
            self.counters["matched"] += 1
            self.found(fingerprint, (address[0], port))
