"""The control API server: JSON over TCP on loopback (gevent StreamServer).

Framing: requests are a stream of JSON objects (newline-terminated or not, see jsonstream);
each response is one JSON object followed by "\\n". Requests on one connection run
concurrently; a request carrying an `id` is answered as soon as it is done, requests without
one are answered in the order they arrived.
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import logging
import os
import socket
import ssl
import time
from typing import Any, Callable

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import gevent.server

from ..errors import Busy
from .table import Call, CommandTable, Deferred, Subscription, response
from ..codec.jsonstream import JsonStreamScanner
from ..passes import PassRunner
from ..util import encode_json, is_loopback, proc_tcp_rows

log = logging.getLogger("chatp2p.ipc")

MAX_PENDING_PER_CONNECTION = 256
RECV_SIZE = 65536
FLUSH_EVERY = 32  # answers of one read written without waiting for the rest of the read
WRITE_TIMEOUT = 5.0  # s a closing connection waits for its last answers to be written
EVENT_BACKLOG = 100_000  # lines waiting for a subscribed client that does not read: cut it off


UNKNOWN_USER_ERROR = ("Refused: the daemon cannot tell which local user opened this connection "
                      "(it reads /proc/net/tcp: the daemon runs on Linux, and clients must "
                      "connect from the same machine and user)")


class IdleTimeout(Busy):
    """Thrown into a connection's greenlet by the idle sweeper."""


def _proc_net_address(host: str, port: int) -> str | None:
    """Format an address the way /proc/net/tcp prints it (little-endian hex words)."""
    address = ipaddress.ip_address(host.split("%")[0])
    packed = address.packed
    if address.version == 4:
        text = packed[::-1].hex().upper()
    else:
        text = "".join(packed[i:i + 4][::-1].hex().upper() for i in range(0, 16, 4))
    return f"{text}:{port:04X}"


def peer_uid(local: tuple, remote: tuple) -> int | None:
    """The uid owning the client end of a loopback TCP connection (Linux), or None if unknown.

    The client's socket is the /proc/net/tcp entry whose local address is our peer's and
    whose remote address is ours.
    """
    try:
        want_local = _proc_net_address(remote[0], remote[1])
        want_remote = _proc_net_address(local[0], local[1])
    except ValueError:
        return None
    for parts in proc_tcp_rows():
        if len(parts) > 7 and parts[1] == want_local and parts[2] == want_remote:
            return int(parts[7])
    return None


class ApiServer:
    """Accepts API connections and feeds their requests to the command table."""

    def __init__(self, table: CommandTable, context: Any, host: str, port: int, *,
                 idle_timeout: float, max_request_bytes: int, max_connections: int,
                 token: str | None = None, check_uid: bool = True,
                 uid_of: Callable[[tuple, tuple], int | None] = peer_uid,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.table = table
        self.context = context
        self.idle_timeout = idle_timeout
        self.max_request_bytes = max_request_bytes
        self.token = token
        self.check_uid = check_uid
        self.uid_of = uid_of      # who owns a loopback client's socket (tests pass their own)
        self.connections = 0
        self.refused = collections.Counter()
        self._live: set[_Connection] = set()
        self._sweeper: gevent.Greenlet | None = None
        self._pool = gevent.pool.Pool(max_connections)
        # TLS (a remote API): every connection is wrapped; its handshake runs on the first read.
        tls = {"ssl_context": ssl_context} if ssl_context is not None else {}
        self._server = gevent.server.StreamServer((host, port), self._handle, spawn=self._pool,
                                                  backlog=1024, **tls)

    def start(self) -> None:
        self._server.start()
        self._sweeper = gevent.spawn(self._sweep_idle)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[0], self._server.address[1]

    def stop(self, timeout: float = 1.0) -> None:
        if self._sweeper is not None:
            self._sweeper.kill()
        self._server.stop(timeout=timeout)

    def _sweep_idle(self) -> None:
        """Close connections idle for `idle_timeout`: one timer for all of them, instead of a
        socket timeout, which costs a timer per read and a getsockopt per write."""
        interval = max(0.05, min(1.0, self.idle_timeout / 4))
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            for connection in list(self._live):
                if connection.idle(now, self.idle_timeout):
                    log.debug("closing an idle API connection")
                    connection.greenlet.kill(IdleTimeout, block=False)

    def _allowed(self, sock: socket.socket, remote: tuple) -> bool:
        """Only this user's processes may use a loopback API. Fails closed: a client whose
        uid cannot be read (no /proc/net/tcp entry, a system other than Linux) is refused
        with one line saying why; another user's client is closed without an answer."""
        if not self.check_uid or not is_loopback(remote[0]):
            return True
        uid = self.uid_of(sock.getsockname(), remote)
        if uid is None:
            self.refused["unknown_user"] += 1
            log.warning("refused an API connection whose user cannot be determined")
            _refuse(sock, UNKNOWN_USER_ERROR)
            return False
        if uid != os.getuid():
            self.refused["other_user"] += 1
            log.warning("refused an API connection from uid %d (not this user)", uid)
            return False
        return True

    def _handle(self, sock: socket.socket, remote: tuple) -> None:
        if not self._allowed(sock, remote):
            sock.close()
            return
        self.connections += 1
        try:
            # Answers are written whole: do not let Nagle hold the tail of one back waiting for
            # the client's delayed ACK (40 ms per request on a ping-pong client).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(self, sock)
            self._live.add(connection)
            try:
                connection.run()
            finally:
                self._live.discard(connection)
        except IdleTimeout:
            pass
        except OSError as exc:
            log.debug("API connection from %s ended: %s", remote, exc)
        finally:
            self.connections -= 1
            sock.close()


class _Connection:
    """One client: reads requests, runs them concurrently, writes responses in the right order.

    Requests whose handler never waits run inline in the reading greenlet, and the answers to
    everything one read brought are written together (every FLUSH_EVERY in a long read);
    slow requests get a greenlet each, deferred ones a callback, and both are answered by
    the connection's answer pass when done (in arrival order if they carry no `id`)."""

    def __init__(self, server: ApiServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.scanner = JsonStreamScanner(server.max_request_bytes)
        self.out: list[bytes] = []                     # encoded answers not yet written
        self.writing = False                           # a greenlet is sending `out`
        self.ready: collections.deque[tuple] = collections.deque()  # deferred requests done
        # Answers the deferred requests done and writes what requests in greenlets queued,
        # once per loop pass (one send for a whole group commit of pipelined requests).
        self.answerer = PassRunner(self._answer_pass, "API answers")
        # Answers held for order: an id-less request still running holds back the answers
        # of the id-less requests after it. A slot is [answer or None].
        self.in_order: collections.deque[list] = collections.deque()
        self.pending = gevent.lock.BoundedSemaphore(MAX_PENDING_PER_CONNECTION)
        self.running = 0
        self.requests_seen = 0
        self.closed = False
        self.greenlet = gevent.getcurrent()
        self.last_progress = time.monotonic()         # last byte read or written
        self.unsubscribe: Callable[[], None] | None = None  # set while events stream here

    def idle(self, now: float, timeout: float) -> bool:
        """No byte moved for `timeout` while the client waits for no answer (or while an
        answer waits for a client that does not read)."""
        if now - self.last_progress < timeout:
            return False
        return self.writing or not (self.running or self.in_order)

    def run(self) -> None:
        try:
            self._read()
        finally:
            if self.unsubscribe is not None:
                self.unsubscribe()
            # the answers of the last requests, then close
            with gevent.Timeout(WRITE_TIMEOUT, False):
                while self.answerer.pending or self.writing:
                    gevent.sleep(0.01)
            self.answerer.stop()

    def _read(self) -> None:
        while not self.closed:
            data = self.sock.recv(RECV_SIZE)
            self.last_progress = time.monotonic()
            if not data:
                self._drain()
                return
            try:
                for item in self.scanner.feed(data):
                    kind = item.kind
                    if kind == "object":
                        self.requests_seen += 1
                        self._start_request(item.value)
                        if len(self.out) >= FLUSH_EVERY and not self.writing:
                            self._write_out()  # the client refills its pipeline meanwhile
                    elif kind == "invalid":
                        self.requests_seen += 1  # it began with '{': a client of ours, answer it
                        self._answer(response(False, error=f"Invalid JSON: {item.error}"))
                    elif kind == "junk":
                        if self.requests_seen == 0:
                            return  # not our protocol (an HTTP request from a web page?): run nothing
                        self._answer(response(False, error="Invalid JSON: expected an object starting with '{'"))
                    else:
                        self._answer(response(
                            False, error=f"Request too large (limit {self.server.max_request_bytes} bytes)"))
                        self._drain()
                        return
            finally:
                if self.out and not self.writing:
                    self._write_out()  # everything this read answered at once, in this greenlet

    def _drain(self, timeout: float = 5.0) -> None:
        """Let running requests finish and flush their answers before closing."""
        with gevent.Timeout(timeout, False):
            while self.running:
                gevent.sleep(0.01)

    def _start_request(self, request: dict) -> None:
        call = self.server.table.prepare(request)
        if call.blocking:
            slot = self._hold_place(call)
            self.pending.acquire()  # backpressure: stop reading while too many requests run
            self.running += 1
            gevent.spawn(self._run_request, request, call, slot)
            return
        # Handlers that never wait (and bad requests) run right here: no greenlet, and the
        # answer is ready in order; or they return a Deferred, answered when it is set.
        reply = self._execute(request, call)
        if isinstance(reply, Deferred):
            slot = self._hold_place(call)
            self.pending.acquire()
            self.running += 1
            reply.pending.rawlink(lambda _: self._deferred_ready(call, slot, reply))
        elif call.request_id is None:
            self._answer(reply)
        else:
            self.out.append(_encode(reply))

    def _hold_place(self, call: Call) -> list | None:
        """An id-less request answered later keeps its place in the answer order."""
        if call.request_id is not None:
            return None
        slot = [None]
        self.in_order.append(slot)
        return slot

    def _complete(self, slot: list | None, reply: dict) -> None:
        """Queue the answer of a request that ran outside the read loop."""
        if slot is None:
            self.out.append(_encode(reply))
        else:
            slot[0] = reply
            self._release_in_order()
        self.running -= 1
        self.pending.release()

    def _run_request(self, request: dict, call: Call, slot: list | None) -> None:
        reply: dict | Deferred = response(False, error="Internal error (see the daemon log)",
                                          request_id=call.request_id)
        try:
            reply = self._execute(request, call)
            if isinstance(reply, Deferred):
                reply = self.server.table.finish(call, reply)
        finally:
            self._complete(slot, reply)
            self.answerer.poke()

    def _deferred_ready(self, call: Call, slot: list | None, deferred: Deferred) -> None:
        """Called by the hub when a deferred request's work is done: must not wait."""
        self.ready.append((call, slot, deferred))
        self.answerer.poke()

    def _answer_pass(self) -> None:
        while self.ready:
            call, slot, deferred = self.ready.popleft()
            self._complete(slot, self.server.table.finish(call, deferred))
        if self.out and not self.writing:
            self._write_out()

    def _execute(self, request: dict, call: Call) -> dict | Deferred:
        token = self.server.token
        if token is not None:
            supplied = request.get("token")
            if not isinstance(supplied, str) or not hmac.compare_digest(
                    supplied.encode("utf-8", "surrogatepass"), token.encode("utf-8")):
                return response(False, error="Missing or wrong token (see ipc.token in the data dir)",
                                request_id=call.request_id)
        reply = self.server.table.run(self.server.context, call)
        if isinstance(reply, Subscription):
            return self._subscribe(reply, call)
        return reply

    def _subscribe(self, subscription: Subscription, call: Call) -> dict:
        """Stream events on this connection from now on (a second subscribe replaces the
        first's filter). This connection passed the same-user check (and the token, if any)."""
        if self.unsubscribe is not None:
            self.unsubscribe()
        names = subscription.names

        def on_event(event: dict) -> None:
            if self.closed or (names and event["event"] not in names):
                return
            if len(self.out) >= EVENT_BACKLOG:  # the client does not read: stop feeding it
                log.warning("an API client subscribed to events does not read them: disconnected")
                self.closed = True
                self.greenlet.kill(IdleTimeout, block=False)
                return
            self.out.append(_encode(event))
            if not self.writing:
                self.answerer.poke()

        self.unsubscribe = subscription.subscribe(on_event)
        return response(True, {"events": sorted(names)}, request_id=call.request_id)

    def _answer(self, reply: dict) -> None:
        """Queue an answer that keeps request order (no id, or an error before any id)."""
        if not self.in_order:
            self.out.append(_encode(reply))
        else:
            self.in_order.append([reply])

    def _release_in_order(self) -> None:
        in_order = self.in_order
        while in_order and in_order[0][0] is not None:
            self.out.append(_encode(in_order.popleft()[0]))

    def _write_out(self) -> None:
        self.writing = True
        try:
            while self.out and not self.closed:
                payload = memoryview(b"".join(self.out))
                self.out.clear()
                try:
                    # socket.sendall would ask the kernel for SO_SNDBUF on every call
                    while payload:
                        sent = self.sock.send(payload)  # may wait for the client: answers queue
                        payload = payload[sent:]
                        self.last_progress = time.monotonic()
                except OSError:
                    self.closed = True
        finally:
            self.writing = False


def _refuse(sock: socket.socket, error: str) -> None:
    """Answer one error line and close so that the client reads it: what it already sent is
    drained (closing with unread data would reset the connection and lose the line)."""
    try:
        sock.sendall(_encode(response(False, error=error)))
        sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(1.0, False):
            while sock.recv(65536):
                pass
    except OSError:
        pass


def _encode(reply: dict) -> bytes:
    try:
        return encode_json(reply) + b"\n"
    except (TypeError, ValueError, RecursionError):  # a handler bug: answer, keep the connection
        log.exception("cannot encode an answer to JSON")
        return encode_json(response(False, error="Internal error (see the daemon log)",
                                    request_id=reply.get("id"))) + b"\n"


def make_token() -> str:
    return os.urandom(32).hex()

