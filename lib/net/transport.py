"""The node's one UDP socket. Every peer-to-peer protocol runs on it, demultiplexed by header.

Protocols register a classifier + handler pair; a datagram no protocol claims is counted and
dropped, never answered.
"""

from __future__ import annotations

import collections
import logging
import socket
import sys
from typing import Callable, Sequence

import gevent
from gevent import socket as gsocket

log = logging.getLogger("chatp2p.transport")

MAX_DATAGRAM = 65535
YIELD_EVERY = 8  # datagrams handled in a row before other greenlets get a turn
# Linux <netinet/in.h>: never fragment locally, ignore the kernel's path MTU cache. Path MTU is
# found by probing (PROTOCOL §10.5): a probe larger than the interface's MTU must fail
# (EMSGSIZE, counted as a send error), not be cut into IP fragments and "succeed".
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_PROBE = 3
Classifier = Callable[[bytes], bool]
Handler = Callable[[bytes, tuple], None]


class Transport:
    """Owns the UDP socket and its receive loop."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.requested_port = port
        self.sock: gsocket.socket | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        self._protocols: list[tuple[str, Classifier, Handler]] = []
        self._loop: gevent.Greenlet | None = None

    @property
    def running(self) -> bool:
        return self.sock is not None

    @property
    def port(self) -> int | None:
        return self.sock.getsockname()[1] if self.sock is not None else None

    def register(self, name: str, classifier: Classifier, handler: Handler) -> None:
        self._protocols.append((name, classifier, handler))

    def start(self) -> None:
        sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if sys.platform.startswith("linux"):  # elsewhere the system's default stays
                try:
                    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
                except OSError:
                    pass
            sock.bind((self.host, self.requested_port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self._loop = gevent.spawn(self._receive_loop, sock)

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
            self.sock.sendto(data, address)
            self.counters["sent"] += 1
        except OSError as exc:
            self.counters["send_errors"] += 1
            log.debug("send to %s failed: %s", address, exc)

    def send_many(self, datagrams: Sequence[bytes], address: tuple) -> None:
        """Several datagrams to one address (a burst of file data, queued chat frames)."""
        for datagram in datagrams:
            self.send(datagram, address)

    def _receive_loop(self, sock: gsocket.socket) -> None:
        # recvfrom() does not switch greenlets while datagrams are waiting, so under a flood
        # (a file transfer) nothing else would run: yield now and then to the API, the disk
        # writers and the timers.
        handled = 0
        while True:
            handled += 1
            if handled % YIELD_EVERY == 0:
                gevent.sleep(0)
            try:
                data, address = sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:
                if self.sock is not sock:
                    return
                self.counters["receive_errors"] += 1
                log.debug("receive failed: %s", exc)
                gevent.sleep(0.01)
                continue
            self.counters["received"] += 1
            self._dispatch(data, address)

    def _dispatch(self, data: bytes, address: tuple) -> None:
        for name, classifier, handler in self._protocols:
            if classifier(data):
                try:
                    handler(data, address)
                except Exception:  # a hostile datagram must never stop the loop
                    self.counters[f"{name}_errors"] += 1
                    log.exception("%s handler failed on a datagram from %s", name, address)
                return
        self.counters["dropped_unknown"] += 1
