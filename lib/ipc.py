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
import json
import logging
import os
import socket
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import gevent.server

from .api import CommandTable, response
from .jsonstream import JsonStreamScanner

log = logging.getLogger("chatp2p.ipc")

MAX_PENDING_PER_CONNECTION = 256
RECV_SIZE = 65536
WRITE_TIMEOUT = 5.0  # s a closing connection waits for its last answers to be written
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # stateless: shared


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


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
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    parts = line.split()
                    if len(parts) > 7 and parts[1] == want_local and parts[2] == want_remote:
                        return int(parts[7])
        except OSError:
            continue
    return None


class ApiServer:
    """Accepts API connections and feeds their requests to the command table."""

    def __init__(self, table: CommandTable, context: Any, host: str, port: int, *,
                 idle_timeout: float, max_request_bytes: int, max_connections: int,
                 token: str | None = None, check_uid: bool = True) -> None:
        self.table = table
        self.context = context
        self.idle_timeout = idle_timeout
        self.max_request_bytes = max_request_bytes
        self.token = token
        self.check_uid = check_uid
        self.connections = 0
        self.refused = collections.Counter()
        self._pool = gevent.pool.Pool(max_connections)
        self._server = gevent.server.StreamServer((host, port), self._handle, spawn=self._pool,
                                                  backlog=1024)

    def start(self) -> None:
        self._server.start()

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[0], self._server.address[1]

    def stop(self, timeout: float = 1.0) -> None:
        self._server.stop(timeout=timeout)

    def _allowed(self, sock: socket.socket, remote: tuple) -> bool:
        if not self.check_uid or not is_loopback(remote[0]):
            return True
        uid = peer_uid(sock.getsockname(), remote)
        if uid is not None and uid != os.getuid():
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
            _Connection(self, sock).run()
        except OSError as exc:
            log.debug("API connection from %s ended: %s", remote, exc)
        finally:
            self.connections -= 1
            sock.close()


class _Connection:
    """One client: reads requests, runs them concurrently, writes responses in the right order."""

    def __init__(self, server: ApiServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.scanner = JsonStreamScanner(server.max_request_bytes)
        self.out: list[bytes] = []                     # encoded answers not yet written
        self.writer: gevent.Greenlet | None = None     # writes `out`, once per loop pass
        self.in_order: collections.deque[gevent.event.AsyncResult] = collections.deque()
        self.pending = gevent.lock.BoundedSemaphore(MAX_PENDING_PER_CONNECTION)
        self.running = 0
        self.requests_seen = 0
        self.closed = False

    def run(self) -> None:
        try:
            self._read()
        finally:
            if self.writer is not None:
                self.writer.join(WRITE_TIMEOUT)  # the answers of the last requests, then close

    def _read(self) -> None:
        self.sock.settimeout(self.server.idle_timeout)
        while not self.closed:
            try:
                data = self.sock.recv(RECV_SIZE)
            except socket.timeout:
                if self.running or self.in_order:
                    continue  # the client is waiting for an answer, not idle
                log.debug("closing an idle API connection")
                return
            if not data:
                self._drain()
                return
            for item in self.scanner.feed(data):
                if item.kind == "object":
                    self.requests_seen += 1
                    self._start_request(item.text)
                elif item.kind == "junk":
                    if self.requests_seen == 0:
                        return  # not our protocol (an HTTP request from a web page?): run nothing
                    self._answer_now(response(False, error="Invalid JSON: expected an object starting with '{'"))
                else:
                    self._answer_now(response(
                        False, error=f"Request too large (limit {self.server.max_request_bytes} bytes)"))
                    self._drain()
                    return

    def _drain(self, timeout: float = 5.0) -> None:
        """Let running requests finish and flush their answers before closing."""
        with gevent.Timeout(timeout, False):
            while self.running:
                gevent.sleep(0.01)

    def _start_request(self, text: bytes) -> None:
        try:
            request = json.loads(text)
        except (ValueError, RecursionError) as exc:
            self._answer_now(response(False, error=f"Invalid JSON: {_short(exc)}"))
            return
        request_id = _request_id(request)
        if not self.server.table.is_blocking(request):
            # Handlers that never wait run right here: no greenlet, and the answer is ready
            # in order (slow ones, run concurrently, are answered when they are done).
            reply = self._execute(request)
            if request_id is None:
                self._answer_now(reply)
            else:
                self._write([reply])
            return
        slot = None
        if request_id is None:
            slot = gevent.event.AsyncResult()
            self.in_order.append(slot)
        self.pending.acquire()  # backpressure: stop reading while too many requests run
        self.running += 1
        gevent.spawn(self._run_request, request, slot)

    def _run_request(self, request: dict, slot: gevent.event.AsyncResult | None) -> None:
        try:
            reply = self._execute(request)
            if slot is None:
                self._write([reply])
            else:
                slot.set(reply)
                self._flush_in_order()
        finally:
            self.running -= 1
            self.pending.release()

    def _execute(self, request: dict) -> dict:
        token = self.server.token
        if token is not None:
            supplied = request.get("token") if isinstance(request, dict) else None
            if not isinstance(supplied, str) or not hmac.compare_digest(supplied, token):
                return response(False, error="Missing or wrong token (see ipc.token in the data dir)",
                                request_id=_request_id(request))
        return self.server.table.dispatch(self.server.context, request)

    def _answer_now(self, reply: dict) -> None:
        slot = gevent.event.AsyncResult()
        slot.set(reply)
        self.in_order.append(slot)
        self._flush_in_order()

    def _flush_in_order(self) -> None:
        ready = []
        while self.in_order and self.in_order[0].ready():
            ready.append(self.in_order.popleft().get())
        if ready:
            self._write(ready)

    def _write(self, replies: list[dict]) -> None:
        """Queue answers; they are written together once the running greenlets yield (one
        sendall per loop pass instead of one per answer, for pipelined clients)."""
        self.out.extend(_ENCODER.encode(r).encode() + b"\n" for r in replies)
        if self.writer is None:
            self.writer = gevent.spawn(self._write_out)

    def _write_out(self) -> None:
        try:
            while self.out and not self.closed:
                payload = b"".join(self.out)
                self.out.clear()
                try:
                    self.sock.sendall(payload)  # may wait for the client: answers queue meanwhile
                except OSError:
                    self.closed = True
        finally:
            self.writer = None


def _request_id(request: Any) -> Any:
    if not isinstance(request, dict):
        return None
    for key, value in request.items():
        if isinstance(key, str) and key.lower() == "id" and isinstance(value, (str, int, float)):
            return value
    return None


def _short(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).splitlines()[0][:200]


def make_token() -> str:
    return os.urandom(32).hex()

