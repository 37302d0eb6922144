"""Test helper: a userspace UDP proxy that loses, duplicates, reorders and delays datagrams.

Kernel netem is not available on these machines, so tests put this proxy between two UDP
endpoints on loopback instead. It runs on its own thread with plain `socket` + `selectors`
(no gevent import), so it works whether or not the test process is monkey-patched.

Two modes:

* Client mode, `ImpairmentProxy(target=(host, port))`: the proxy listens on one port. Each
  distinct client address gets its own upstream socket towards the target, so the target sees
  one distinct source address per client, like a NAT, and its replies to that address are
  relayed back to the client. Only datagrams coming from the target are relayed back (others
  count as `rejected`). This covers sessions that the *client* starts: tell node A "B is at
  `proxy.address`"; B answers whatever source it sees (the proxy's upstream socket). B cannot
  start a session towards A through it: that upstream address only exists once A has spoken.

* Pair mode, `ImpairmentProxy.pair(a_port, b_port)`: a static two-sided mapping for P2P tests
  where either side may initiate. Two sockets: `reach_b` (A sends there to reach B) and
  `reach_a` (B sends there to reach A). A datagram from A to `reach_b` leaves from `reach_a`
  towards B, and one from B to `reach_a` leaves from `reach_b` towards A, so each side always
  sees the other at one stable address, whoever spoke first. Tell A "B is at `p.reach_b`" and
  B "A is at `p.reach_a`". Datagrams from any other source are rejected.

Directions: "up" is client -> target (A -> B in pair mode), "down" is the reverse. Every
impairment applies to each direction independently with a seeded RNG; `loss_up=...`,
`delay_ms_down=...` and so on override one direction. Pipeline per datagram: capture, loss,
duplicate (send twice), reorder (hold it until the next datagram of the same flow has been
sent, or `reorder_ms` elapsed), delay + uniform jitter (a timer heap on the proxy thread).
Datagrams still delayed or held when `stop()` is called are discarded.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import selectors
import socket
import threading
import time
from typing import Any

Address = tuple[str, int]

DIRECTIONS = ("up", "down")
IMPAIRMENTS = ("loss", "duplicate", "reorder", "delay_ms", "jitter_ms", "reorder_ms")
CAPTURE_LIMIT = 64 * 1024 * 1024  # bytes of payload kept by capture=True, then it stops
MAX_CLIENTS = 256  # upstream sockets in client mode: bounded so a runaway test cannot exhaust fds
SOCKET_BUFFER = 4 * 1024 * 1024  # the kernel caps this at net.core.rmem_max (4 MiB here)
DRAIN_BATCH = 256  # datagrams read from one socket per wake-up, so timers are never starved


@dataclasses.dataclass
class Impairment:
    """What happens to datagrams in one direction; probabilities are in [0, 1]."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder_ms: float = 10.0  # a held datagram is released after this long if nothing follows

    def check(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        for name in ("delay_ms", "jitter_ms", "reorder_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclasses.dataclass
class Counters:
    """What the proxy did in one direction. `forwarded` counts every datagram sent, duplicate
    copies included, so on loopback it equals what the far end receives; `reordered` counts
    held datagrams actually overtaken by a later one."""

    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    bytes: int = 0  # payload bytes forwarded
    rejected: int = 0  # datagrams from an unexpected source, not relayed
    errors: int = 0  # sendto() failures


@dataclasses.dataclass
class _Route:
    """Where a datagram received on one socket from one source goes."""

    direction: str
    out_sock: socket.socket
    dest: Address


@dataclasses.dataclass
class _Held:
    """A datagram held back for reordering, per flow (outgoing socket + destination)."""

    deadline: float
    route: _Route
    payloads: list[bytes]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _udp_socket(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _addr(raw: Any) -> Address:
    """Normalise a recvfrom() address (IPv6 gives a 4-tuple) to (host, port)."""
    return (raw[0], raw[1])


class ImpairmentProxy:
    """A UDP relay with per-direction loss, duplication, reordering and delay; see module doc."""

    def __init__(
        self,
        target: Address | None,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        seed: int | None = None,
        listen: Address = ("127.0.0.1", 0),
        capture: bool = False,
        reorder_ms: float = 10.0,
        **per_direction: float,
    ) -> None:
        self.target: Address | None = (target[0], int(target[1])) if target else None
        self._lock = threading.Lock()
        self._impair = {d: Impairment() for d in DIRECTIONS}
        self._counters = {d: Counters() for d in DIRECTIONS}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.set(loss=loss, duplicate=duplicate, reorder=reorder, delay_ms=delay_ms,
                 jitter_ms=jitter_ms, reorder_ms=reorder_ms, **per_direction)
        # One RNG per direction: with a seed, each direction's decisions depend only on the
        # order of its own datagrams, not on how the two directions interleave.
        self._rng = {d: random.Random(None if seed is None else f"{seed}/{d}") for d in DIRECTIONS}
        self._capture = capture
        self._captured: list[bytes] = []
        self._captured_bytes = 0
        self.capture_truncated = False
        self._host = listen[0]
        self._selector = selectors.DefaultSelector()
        self._sockets: list[socket.socket] = []
        # (receiving socket, source) -> route; filled by the proxy thread in client mode.
        self._routes: dict[tuple[socket.socket, Address], _Route] = {}
        self._upstream: dict[Address, socket.socket] = {}  # client -> its upstream socket
        self._inbound_direction: dict[socket.socket, str] = {}  # for counting rejects
        self._timers: list[tuple[float, int, _Route, bytes]] = []
        self._timer_seq = 0
        self._held: dict[tuple[int, Address], _Held] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.thread_error: BaseException | None = None
        self._listen: socket.socket | None = None
        self.reach_a: Address | None = None
        self.reach_b: Address | None = None
        if self.target is not None:
            self._listen = self._add_socket(_udp_socket(listen[0], listen[1]))
            self._inbound_direction[self._listen] = "up"
        self.address: Address = self._listen.getsockname()[:2] if self._listen else ("", 0)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def pair(
        cls,
        a: int | Address,
        b: int | Address,
        host: str = "127.0.0.1",
        **impairments: Any,
    ) -> "ImpairmentProxy":
        """A symmetric proxy between endpoints A and B (a port means `host`:port): A sends to
        `.reach_b`, B sends to `.reach_a`, and either may start. "up" is A -> B."""
        a_addr = (host, a) if isinstance(a, int) else (a[0], int(a[1]))
        b_addr = (host, b) if isinstance(b, int) else (b[0], int(b[1]))
        proxy = cls(None, listen=(host, 0), **impairments)
        sock_b = proxy._add_socket(_udp_socket(host))  # A's view of B
        sock_a = proxy._add_socket(_udp_socket(host))  # B's view of A
        proxy._routes[(sock_b, a_addr)] = _Route("up", sock_a, b_addr)
        proxy._routes[(sock_a, b_addr)] = _Route("down", sock_b, a_addr)
        proxy._inbound_direction[sock_b] = "up"
        proxy.reach_b = sock_b.getsockname()[:2]
        proxy.reach_a = sock_a.getsockname()[:2]
        proxy.address = proxy.reach_b
        return proxy

    def _add_socket(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        self._selector.register(sock, selectors.EVENT_READ)
        return sock

    # -- control (any thread) ---------------------------------------------------------------

    def set(self, **changes: float) -> None:
        """Change impairments live: `loss=0.2` sets both directions, `loss_up=0.2` one."""
        with self._lock:
            updated = {d: dataclasses.replace(self._impair[d]) for d in DIRECTIONS}
            both = {k: v for k, v in changes.items() if k in IMPAIRMENTS}
            for name, value in both.items():
                for d in DIRECTIONS:
                    setattr(updated[d], name, float(value))
            for key, value in changes.items():
                if key in both:
                    continue
                name, _, direction = key.rpartition("_")
                if name not in IMPAIRMENTS or direction not in DIRECTIONS:
                    raise TypeError(f"unknown impairment {key!r}")
                setattr(updated[direction], name, float(value))
            for d in DIRECTIONS:
                updated[d].check()
            self._impair = updated
        self._wake()

    def impairment(self, direction: str) -> Impairment:
        """A copy of the settings of one direction."""
        with self._lock:
            return dataclasses.replace(self._impair[direction])

    def counters(self, direction: str) -> Counters:
        """A consistent copy of one direction's counters."""
        with self._lock:
            return dataclasses.replace(self._counters[direction])

    def stats(self) -> dict[str, dict[str, int]]:
        """Both directions' counters as plain dicts, for assertion messages."""
        with self._lock:
            return {d: dataclasses.asdict(self._counters[d]) for d in DIRECTIONS}

    def clients(self) -> list[Address]:
        """Client addresses seen so far (client mode)."""
        with self._lock:
            return list(self._upstream)

    def upstream_address(self, client: Address) -> Address | None:
        """The source address the target sees for `client` (client mode)."""
        with self._lock:
            sock = self._upstream.get((client[0], int(client[1])))
            return sock.getsockname()[:2] if sock is not None else None

    def captured(self) -> list[bytes]:
        """Every payload seen in either direction, in arrival order (needs capture=True)."""
        with self._lock:
            return list(self._captured)

    def contains(self, needle: bytes) -> bool:
        """Whether any single captured datagram contains `needle` (privacy assertions)."""
        if not self._capture:
            raise RuntimeError("contains() needs ImpairmentProxy(capture=True)")
        return any(needle in payload for payload in self.captured())

    def start(self) -> "ImpairmentProxy":
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        self._thread = threading.Thread(target=self._run, name="impairment-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (joined within 1 s) and close every socket; idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(1.0)
            if self._thread.is_alive():
                raise RuntimeError("impairment proxy thread did not stop within 1 s")
        for sock in self._sockets + [self._wake_r, self._wake_w]:
            sock.close()
        self._selector.close()

    def __enter__(self) -> "ImpairmentProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # already closed, or the wake-up buffer is full: the thread will wake anyway

    # -- the proxy thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                events = self._selector.select(self._next_timeout())
                for key, _ in events:
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._drain(key.fileobj)  # type: ignore[arg-type]
                self._fire_due(time.monotonic())
        except BaseException as exc:  # kept for the test to see; the thread must not hang
            self.thread_error = exc
            raise

    def _next_timeout(self) -> float:
        deadlines = [held.deadline for held in self._held.values()]
        if self._timers:
            deadlines.append(self._timers[0][0])
        if not deadlines:
            return 0.5
        return max(0.0, min(min(deadlines) - time.monotonic(), 0.5))

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _drain(self, sock: socket.socket) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                payload, raw = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. a late ICMP error on this socket: nothing to relay
            route = self._route(sock, _addr(raw))
            if route is not None:
                self._impair_and_send(route, payload)

    def _route(self, sock: socket.socket, source: Address) -> _Route | None:
        route = self._routes.get((sock, source))
        if route is not None:
            return route
        if sock is self._listen and self.target is not None:
            with self._lock:
                too_many = len(self._upstream) >= MAX_CLIENTS
            if not too_many:
                upstream = self._add_socket(_udp_socket(self._host))
                self._routes[(sock, source)] = _Route("up", upstream, self.target)
                self._routes[(upstream, self.target)] = _Route("down", sock, source)
                with self._lock:
                    self._upstream[source] = upstream
                return self._routes[(sock, source)]
        with self._lock:
            self._counters[self._inbound_direction.get(sock, "down")].rejected += 1
        return None

    def _impair_and_send(self, route: _Route, payload: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            imp = self._impair[route.direction]
            counters = self._counters[route.direction]
            counters.received += 1
            if self._capture and not self.capture_truncated:
                if self._captured_bytes + len(payload) <= CAPTURE_LIMIT:
                    self._captured.append(payload)
                    self._captured_bytes += len(payload)
                else:
                    self.capture_truncated = True
            rng = self._rng[route.direction]
            if rng.random() < imp.loss:
                counters.dropped += 1
                return
            copies = [payload]
            if rng.random() < imp.duplicate:
                copies.append(payload)
                counters.duplicated += 1
            flow = (id(route.out_sock), route.dest)
            held = self._held.pop(flow, None)
            if held is None and rng.random() < imp.reorder:
                self._held[flow] = _Held(now + imp.reorder_ms / 1000.0, route, copies)
                return
            if held is not None:
                counters.reordered += 1
        self._schedule(route, copies, imp, now)
        if held is not None:
            self._schedule(held.route, held.payloads, imp, now)

    def _schedule(self, route: _Route, copies: list[bytes], imp: Impairment, now: float) -> None:
        """Send now, or later through the timer heap; the RNG is only touched on this thread."""
        rng = self._rng[route.direction]
        for payload in copies:
            delay = imp.delay_ms
            if imp.jitter_ms:
                delay += rng.uniform(-imp.jitter_ms, imp.jitter_ms)
            if delay <= 0:
                self._send(route, payload)
            else:
                self._timer_seq += 1
                due = now + delay / 1000.0
                heapq.heappush(self._timers, (due, self._timer_seq, route, payload))

    def _fire_due(self, now: float) -> None:
        for flow, held in list(self._held.items()):
            if held.deadline <= now:
                del self._held[flow]
                imp = self.impairment(held.route.direction)
                self._schedule(held.route, held.payloads, imp, now)
        while self._timers and self._timers[0][0] <= now:
            _, _, route, payload = heapq.heappop(self._timers)
            self._send(route, payload)

    def _send(self, route: _Route, payload: bytes) -> None:
        try:
            route.out_sock.sendto(payload, route.dest)
        except OSError:  # full buffer, unreachable destination: the datagram is lost
            with self._lock:
                self._counters[route.direction].errors += 1
            return
        with self._lock:
            counters = self._counters[route.direction]
            counters.forwarded += 1
            counters.bytes += len(payload)
