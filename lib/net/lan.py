"""LAN discovery: contacts on one network segment find each other without any server.

Every `interval` seconds a node multicasts a small announcement (TTL 1, link-scoped group)
on its own well-known UDP port. The announcement carries no identity: only a tag that rotates
every `TAG_PERIOD` seconds and that only someone who knows the announcer's ID (or bundle)
can compute, plus the announcer's P2P port. A node that recognises a contact's tag starts a
handshake to that address; the handshake then proves who is there (a wrong identity is a
`key_mismatch`). Nothing is ever sent in reply to an announcement itself, so the port cannot
be used to amplify traffic.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import struct
import time
from typing import Callable, Iterable, Optional

from ..errors import Invalid

import gevent
from gevent import socket as gsocket

log = logging.getLogger("chatp2p.lan")

MAGIC = b"CP2L"
VERSION = 1
ANNOUNCE = struct.Struct(">4sBIH16s")   # magic, version, epoch, p2p port, tag
TAG_PERIOD = 300                         # seconds a tag stays the same
DEFAULT_PORT = 48889
DEFAULT_GROUP = "239.255.48.89"          # administratively scoped, never routed off the link (TTL 1)
KEY_LABEL = b"chatp2p v1 lan key"


class AnnouncementError(Invalid):
    """A LAN datagram that is not a well-formed announcement."""


def lan_key(fingerprint: bytes) -> bytes:
    """The tag key of an identity: derivable from its ID, so contacts added by ID match too."""
    return hashlib.sha256(KEY_LABEL + fingerprint).digest()


def tag(key: bytes, epoch: int) -> bytes:
    return hmac.new(key, b"chatp2p v1 lan tag" + struct.pack(">I", epoch), hashlib.sha256).digest()[:16]


def epoch_of(now: float) -> int:
    return int(now // TAG_PERIOD) & 0xFFFFFFFF


def encode_announcement(fingerprint: bytes, p2p_port: int, now: float) -> bytes:
    epoch = epoch_of(now)
    return ANNOUNCE.pack(MAGIC, VERSION, epoch, p2p_port, tag(lan_key(fingerprint), epoch))


def decode_announcement(data: bytes) -> tuple[int, int, bytes]:
    """(epoch, p2p port, tag) of an announcement; AnnouncementError for anything else."""
    if len(data) != ANNOUNCE.size:
        raise AnnouncementError("wrong size")
    magic, version, epoch, port, value = ANNOUNCE.unpack(data)
    if magic != MAGIC or version != VERSION:
        raise AnnouncementError("not a ChatP2P announcement")
    if not 0 < port < 65536:
        raise AnnouncementError("bad port")
    return epoch, port, value


def match(fingerprints: Iterable[bytes], epoch: int, value: bytes, now: float) -> Optional[bytes]:
    """The fingerprint whose tag for `epoch` is `value`, if `epoch` is current (±1 period)."""
    current = epoch_of(now)
    if abs(epoch - current) > 1:
        return None
    for fingerprint in fingerprints:
        if hmac.compare_digest(tag(lan_key(fingerprint), epoch), value):
            return fingerprint
    return None


Found = Callable[[bytes, tuple], None]


class LanDiscovery:
    """Announces this node and reports contacts heard on the segment (gevent I/O)."""

    def __init__(self, fingerprint: bytes, p2p_port: int, contacts: Callable[[], list[bytes]], found: Found,
                 port: int = DEFAULT_PORT, group: str = DEFAULT_GROUP, interval: float = 5.0) -> None:
        self.fingerprint = fingerprint
        self.p2p_port = p2p_port
        self.contacts = contacts
        self.found = found
        self.port = port
        self.group = group
        self.interval = interval
        self.counters: dict[str, int] = {"announced": 0, "heard": 0, "matched": 0, "ignored": 0}
        self.sock: Optional[gsocket.socket] = None
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

    def announce(self) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(encode_announcement(self.fingerprint, self.p2p_port, time.time()),
                             (self.group, self.port))
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
            epoch, port, value = decode_announcement(data)
        except AnnouncementError:
            self.counters["ignored"] += 1
            return
        now = time.time()
        if hmac.compare_digest(value, tag(lan_key(self.fingerprint), epoch)):
            return  # our own announcement, looped back
        fingerprint = match(self.contacts(), epoch, value, now)
        if fingerprint is None:
            self.counters["ignored"] += 1
            return
        self.counters["matched"] += 1
        self.found(fingerprint, (address[0], port))
