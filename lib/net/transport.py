"""The node's one UDP socket. Every peer-to-peer protocol runs on it, demultiplexed by header.

Protocols register a classifier + handler pair (and optionally a batch handler, which gets the
consecutive datagrams of a UDP_GRO buffer that are its own in one call); a datagram no protocol
claims is counted and dropped, never answered.

Bound to an unspecified host ("", "0.0.0.0", "::") the socket is dual-stack: AF_INET6 on "::"
with IPV6_V6ONLY off, so one port serves IPv4 and IPv6 peers (AF_INET where the system has no
IPv6). Handlers and senders still see plain (host, port) pairs: `codec.addresses` maps the
socket's IPv4-mapped 4-tuples to them and back, here and nowhere else.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import struct
import sys
from typing import Callable, NamedTuple, Optional, Sequence

import gevent
from gevent import socket as gsocket

from ..codec.addresses import plain_address, socket_address

log = logging.getLogger("chatp2p.transport")

MAX_DATAGRAM = 65535
YIELD_EVERY = 8  # datagrams handled in a row before other greenlets get a turn
RECEIVE_BATCH = 256              # with GRO: datagrams already queued taken in (and handled) at once...
RECEIVE_BATCH_BYTES = 256 << 10  # ...or this many bytes (4 of 64 KiB on loopback, ~4 GRO buffers
                                 # of 1472-byte datagrams): then the API, chat and timers get a
                                 # turn. A batch is acknowledged once: 64 datagrams (the first
                                 # choice) cost 2.3 times as many ACKs at a 1500-byte MTU, and
                                 # the receiver and sender ~0.2 and ~0.3 s of CPU per GiB more
# Linux <netinet/in.h>: never fragment locally, ignore the kernel's path MTU cache. Path MTU is
# found by probing (PROTOCOL §10.5): a probe larger than the interface's MTU must fail
# (EMSGSIZE, counted as a send error), not be cut into IP fragments and "succeed".
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_PROBE = 3
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)  # the same for IPv6 (which
IPV6_PMTUDISC_PROBE = 3                                        # routers never fragment anyway)
UNSPECIFIED_HOSTS = ("", "0.0.0.0", "::")
# UDP batching (Linux): one sendmsg carries many same-size datagrams that the kernel (or the NIC)
# cuts apart (GSO, UDP_SEGMENT, Linux >= 4.18), and one recvmsg returns datagrams the kernel
# coalesced, with their size in a control message (GRO, UDP_GRO, Linux >= 5.0).
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
GSO_MAX_SEGMENTS = 64             # the kernel's UDP_MAX_SEGMENTS (raised to 128 only in Linux 6.x)
GSO_MAX_BYTES = 65507             # one send is still one IPv4 packet until it is segmented
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
Classifier = Callable[[bytes], bool]
Handler = Callable[[bytes, tuple], None]
BatchHandler = Callable[[list, tuple], None]  # (datagrams of one sender, in order; address)


class Protocol(NamedTuple):
    """A protocol on the socket: which datagrams are its own, and who handles them (one by
    one, or, with `batch`, a run of consecutive ones from one GRO buffer in one call)."""

    name: str
    classifier: Classifier
    handler: Handler
    batch: Optional[BatchHandler] = None


class Transport:
    """Owns the UDP socket and its receive loop."""

    def __init__(self, host: str, port: int, batching: bool = True) -> None:
        self.host = host
        self.requested_port = port
        self.batching = batching        # the setting: GSO and GRO where the kernel has them
        self.gso = False                # probed at start
        self.gro = False
        self.sock: gsocket.socket | None = None
        self.dual_stack = False  # an AF_INET6 socket carrying IPv4 too (IPv4-mapped addresses)
        self.counters: collections.Counter[str] = collections.Counter()
        self._protocols: list[Protocol] = []
        self._loop: gevent.Greenlet | None = None

    @property
    def running(self) -> bool:
        return self.sock is not None

    @property
    def port(self) -> int | None:
        return self.sock.getsockname()[1] if self.sock is not None else None

    def register(self, name: str, classifier: Classifier, handler: Handler,
                 batch: Optional[BatchHandler] = None) -> None:
        """Datagrams `classifier` claims go to `handler`; with `batch`, consecutive ones of a GRO
        buffer go to it together (the receive side's mirror of `send_many`)."""
        self._protocols.append(Protocol(name, classifier, handler, batch))

    @property
    def families(self) -> tuple[int, ...]:
        """The address families it can send to: IPv4 first when dual-stack (as before IPv6)."""
        if self.dual_stack:
            return (socket.AF_INET, socket.AF_INET6)
        return (self.sock.family,) if self.sock is not None else ()

    def start(self) -> None:
        if self.host in UNSPECIFIED_HOSTS and socket.has_ipv6:
            try:
                self.sock = self._open(socket.AF_INET6, "::", dual_stack=True)
                self.dual_stack = True
            except OSError as exc:  # IPv6 compiled in but not usable (disabled, no module)
                log.info("no IPv6 socket (%s): the P2P socket is IPv4 only", exc)
        if self.sock is None:
            v6 = ":" in self.host
            self.sock = self._open(socket.AF_INET6 if v6 else socket.AF_INET,
                                   "0.0.0.0" if self.host in UNSPECIFIED_HOSTS else self.host, dual_stack=False)
            self.dual_stack = False
        if self.batching:
            self.gso, self.gro = _probe_gso(self.sock), _enable_gro(self.sock)
        self._loop = gevent.spawn(self._receive_gro_loop if self.gro else self._receive_loop, self.sock)

    def _open(self, family: int, host: str, dual_stack: bool) -> gsocket.socket:
        sock = gsocket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
            if sys.platform.startswith("linux"):  # elsewhere the system's default stays
                self._probe_path_mtu(sock, family, dual_stack)
            sock.bind((host, self.requested_port))
        except OSError:
            sock.close()
            raise
        return sock

    @staticmethod
    def _probe_path_mtu(sock: gsocket.socket, family: int, dual_stack: bool) -> None:
        options = []
        if family == socket.AF_INET or dual_stack:  # a dual-stack socket sends IPv4 as IPv4
            options.append((socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE))
        if family == socket.AF_INET6:
            options.append((socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE))
        for level, option, value in options:
            try:
                sock.setsockopt(level, option, value)
            except OSError:
                pass

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            # Wait for the receive loop to end: gevent defers closing a socket that a greenlet
            # still waits on, and `p2p start` (a restart) must be able to bind the port again.
            loop.kill(block=loop is not gevent.getcurrent())
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, data: bytes, address: tuple) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(data, socket_address(address, self.dual_stack))
            self.counters["sent"] += 1
        except OSError as exc:
            self.counters["send_errors"] += 1
            log.debug("send to %s failed: %s", address, exc)

    def send_many(self, datagrams: Sequence[bytes], address: tuple) -> None:
        """Several datagrams to one address (a burst of file data, queued chat frames): runs of
        the same size (the last of a run may be shorter) go out in one GSO send each."""
        count = len(datagrams)
        if not self.gso or count < 2:
            for datagram in datagrams:
                self.send(datagram, address)
            return
        start = 0
        while start < count:
            size = len(datagrams[start])
            limit = min(count, start + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
            end = start + 1
            while end < limit and len(datagrams[end]) == size:
                end += 1
            if end < limit and len(datagrams[end]) < size:
                end += 1  # a shorter datagram may close a run
            if end - start == 1:
                self.send(datagrams[start], address)
            else:
                self._send_segments(datagrams[start:end], size, address)
            start = end

    def _send_segments(self, datagrams: Sequence[bytes], size: int, address: tuple) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendmsg([b"".join(datagrams)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0,
                              socket_address(address, self.dual_stack))
        except OSError as exc:
            # EIO: the device can neither segment nor checksum it (tx-checksumming off); EINVAL:
            # a segment larger than the route's MTU... One datagram per call then, as without GSO:
            # each is sent (or fails and is counted) on its own, nothing is lost here.
            self.counters["gso_refused"] += 1
            log.debug("GSO send of %d datagrams to %s refused: %s", len(datagrams), address, exc)
            for datagram in datagrams:
                self.send(datagram, address)
            return
        self.counters["sent"] += len(datagrams)
        self.counters["gso_sends"] += 1
        self.counters["gso_segments"] += len(datagrams)

    def _receive_loop(self, sock: gsocket.socket) -> None:
        # recvfrom() does not switch greenlets while datagrams are waiting, so under a flood
        # (a file transfer) nothing else would run: yield now and then to the API, the disk
        # writers and the timers (`_yield`).
        handled = 0
        while True:
            handled += 1
            if handled % YIELD_EVERY == 0:
                _yield(handled % RECEIVE_BATCH == 0)
            try:
                data, address = sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:
                if not self._receive_failed(sock, exc):
                    return
                continue
            self.counters["received"] += 1
            self._dispatch(data, plain_address(address))

    def _receive_failed(self, sock: gsocket.socket, exc: OSError) -> bool:
        """A receive error: False when the socket was closed (the loop ends), else counted and
        the loop goes on after a short pause."""
        if self.sock is not sock:
            return False
        self.counters["receive_errors"] += 1
        log.debug("receive failed: %s", exc)
        gevent.sleep(0.01)
        return True

    def _receive_gro_loop(self, sock: gsocket.socket) -> None:
        """The receive loop with UDP_GRO on: a buffer may hold several datagrams of one sender,
        all `gso_size` bytes but the last. What is already queued behind it (the datagrams of a
        NIC that coalesces nothing, more buffers) is taken too, up to RECEIVE_BATCH datagrams or
        RECEIVE_BATCH_BYTES, and each run from one sender is dispatched together
        (`_dispatch_many`): the receive side's mirror of `send_many`. A bad datagram is dropped and counted, the others are kept."""
        # A non-blocking twin of the socket (the same one, dup'ed) reads what is already
        # there; the gevent socket waits when nothing is.
        drain = socket.socket(fileno=os.dup(sock.fileno()))
        drain.setblocking(False)
        try:
            while True:
                try:
                    first = sock.recvmsg(MAX_DATAGRAM, GRO_CMSG_SPACE)
                except OSError as exc:
                    if not self._receive_failed(sock, exc):
                        return
                    continue
                batch, sender = self._segments(first)
                taken, size = len(batch), len(first[0])
                while taken < RECEIVE_BATCH and size < RECEIVE_BATCH_BYTES:
                    try:
                        received = drain.recvmsg(MAX_DATAGRAM, GRO_CMSG_SPACE)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # an ICMP error reported on the socket: counted
                        self.counters["receive_errors"] += 1
                        log.debug("receive failed: %s", exc)
                        break
                    segments, address = self._segments(received)
                    if address != sender:
                        self._dispatch_many(batch, sender)
                        batch, sender = [], address
                    batch += segments
                    taken, size = taken + len(segments), size + len(received[0])
                self._dispatch_many(batch, sender)
                # As in _receive_loop; a batch cut at its limit means a flood (more is queued).
                _yield(taken >= RECEIVE_BATCH or size >= RECEIVE_BATCH_BYTES)
        finally:
            drain.close()

    def _segments(self, received: tuple) -> tuple[list[bytes], tuple]:
        """The datagrams of one recvmsg (several when the kernel coalesced them) and their sender."""
        data, ancdata, _flags, address = received
        size = _gso_size(ancdata)
        if 0 < size < len(data):
            self.counters["gro_receives"] += 1
            segments = [data[offset:offset + size] for offset in range(0, len(data), size)]
        else:
            segments = [data]
        self.counters["received"] += len(segments)
        return segments, plain_address(address)

    def _protocol_of(self, data: bytes) -> Optional[Protocol]:
        for protocol in self._protocols:
            if protocol.classifier(data):
                return protocol
        return None

    def _dispatch(self, data: bytes, address: tuple) -> None:
        protocol = self._protocol_of(data)
        if protocol is None:
            self.counters["dropped_unknown"] += 1
            return
        self._call(protocol, protocol.handler, data, address)

    def _dispatch_many(self, segments: list[bytes], address: tuple) -> None:
        """The datagrams of one GRO buffer, in order: each run of consecutive ones of a protocol
        that handles batches goes to it in one call, any other datagram on its own."""
        first = self._protocols[0] if self._protocols else None
        if first is not None and first.batch is not None and all(map(first.classifier, segments)):
            # The usual buffer: all of it for the protocol asked first (a steady flow of file
            # data), with one classifier call per datagram and nothing else.
            self._call(first, first.batch, segments, address)
            return
        protocols = [self._protocol_of(segment) for segment in segments]
        start, count = 0, len(segments)
        while start < count:
            protocol = protocols[start]
            end = start + 1
            if protocol is None:
                self.counters["dropped_unknown"] += 1
            elif protocol.batch is None:
                self._call(protocol, protocol.handler, segments[start], address)
            else:
                while end < count and protocols[end] is protocol:
                    end += 1
                self._call(protocol, protocol.batch, segments[start:end], address)
            start = end

    def _call(self, protocol: Protocol, handler: Callable, data, address: tuple) -> None:
        try:
            handler(data, address)
        except Exception:  # a hostile datagram must never stop the loop
            self.counters[f"{protocol.name}_errors"] += 1
            log.exception("%s handler failed on datagrams from %s", protocol.name, address)


def _yield(flooded: bool) -> None:
    """Let the other greenlets run between two receive batches. sleep(0) runs those already
    due; what the loop only learns by polling (a thread-pool result: the disk writer's) waits
    for a pause in the flow. So under a flood the loop is let poll too (gevent.idle()): on the
    1500-byte offload path a writer's hand-off came back ~12 ms after its thread was done
    and the receiver's window closed ~300 times per 256 MiB; with idle(), 2 ms and 3 times.
    Not after every batch: idle() after each of a chat's small batches cost a third of the
    message rate (bench_messaging)."""
    if flooded:
        gevent.idle()
    else:
        gevent.sleep(0)


def _probe_gso(sock: socket.socket) -> bool:
    """Whether the kernel segments UDP for us (UDP_SEGMENT exists: Linux >= 4.18). A device
    may still refuse one send (EIO): `_send_segments` then falls back for that call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def _enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to coalesce received datagrams (UDP_GRO: Linux >= 5.0)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def _gso_size(ancdata: list) -> int:
    """The segment size of a coalesced receive (UDP_GRO control message), or 0."""
    for level, kind, value in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            return struct.unpack("=i", value[:4])[0]
    return 0
