"""Real-time events: an in-process bus that also publishes on a ZeroMQ PUB socket.

Each ZeroMQ message is two frames: the event name (so SUB sockets can filter on it) and the
JSON object {event, data, timestamp} of the seed protocol. The embedded UI subscribes in
process and sees exactly the same objects.

Who may subscribe: the ipc:// endpoint lives in the 0700 data dir, so only its owner reaches
it. A tcp:// endpoint on loopback is open to every local user, so it requires the API token
(DATA_DIR/ipc.token, 0600): ZeroMQ's PLAIN mechanism, user name "chatp2p", password the
token, checked by a ZAP handler (ZeroMQ cannot tell the uid of a TCP peer).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Callable, Optional

from gevent import monkey

# Plain pyzmq, not zmq.green: the PUB socket is only ever written with NOBLOCK, which never
# blocks (a full queue raises zmq.Again and the event is dropped and logged), so there is
# nothing for gevent to wait on, and the green wrapper's event polling after every send cost
# more than the send itself. ZeroMQ's I/O threads are its own (C++), outside gevent.
import zmq

from .util import encode_json, iso_utc

log = logging.getLogger("chatp2p.events")

SEND_HWM = 1_000_000   # bursts of 100k events must not be dropped by a slow subscriber
TCP_USER = b"chatp2p"  # PLAIN user name of tcp:// subscribers; the password is the API token
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"chatp2p-events"

Subscriber = Callable[[dict], None]


class EventBus:
    """Publishes events to in-process subscribers and to every bound ZeroMQ endpoint."""

    def __init__(self, endpoints: list[str], tcp_token: Optional[str] = None) -> None:
        """`tcp_token`: the password tcp:// subscribers must give (required when a tcp://
        endpoint is listed)."""
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._subscribers: list[Subscriber] = []
        self._zap: Optional[_ZapHandler] = None
        self.endpoints: list[str] = []
        self.published = 0
        local = [e for e in endpoints if not e.startswith("tcp://")]
        tcp = [e for e in endpoints if e.startswith("tcp://")]
        if tcp and not tcp_token:
            raise ValueError("a tcp:// events endpoint needs a token")
        try:
            for endpoint in local + tcp:
                if tcp and endpoint == tcp[0]:
                    # Options apply to the binds after them: the ipc:// endpoint stays open
                    # to its owner, every tcp:// one asks for the token.
                    self._zap = _ZapHandler(self._context, tcp_token.encode())  # type: ignore[union-attr]
                    self._socket.setsockopt(zmq.PLAIN_SERVER, 1)
                    self._socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
                if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
                    port = self._socket.bind_to_random_port(endpoint.rsplit(":", 1)[0])
                    endpoint = endpoint.rsplit(":", 1)[0] + f":{port}"
                else:
                    self._socket.bind(endpoint)
                self.endpoints.append(endpoint)
        except zmq.ZMQError:
            self.close()
            raise

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(event_object)` for every event; returns the unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def publish(self, name: str, data: Any) -> dict:
        event = {"event": name, "data": data, "timestamp": iso_utc(time.time())}
        self.published += 1
        try:
            payload = encode_json(event)
            self._socket.send_multipart([name.encode(), payload], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("event %s not published: %s", name, exc)
        except (TypeError, ValueError, RecursionError):
            log.exception("event %s cannot be encoded to JSON", name)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber failed on %s", name)
        return event

    def close(self) -> None:
        self._socket.close(linger=0)
        if self._zap is not None:
            self._zap.stop()
        self._context.term()


class _ZapHandler:
    """Answers ZeroMQ's authentication requests (ZAP, RFC 27) for the tcp:// endpoint: PLAIN
    with user TCP_USER and the token as password, nothing else. It runs in a native thread
    (ZeroMQ asks synchronously, from its own I/O thread), never in the gevent hub."""

    def __init__(self, context: zmq.Context, token: bytes) -> None:
        self._token = token
        self._stopping = False
        self.refused = 0
        socket = context.socket(zmq.REP)
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind(ZAP_ENDPOINT)
        self._socket = socket
        # A native thread even under gevent's monkey patching (a patched one would be a
        # greenlet, and its blocking poll would stop the hub).
        self._running = monkey.get_original("_thread", "allocate_lock")()  # held while it runs
        self._running.acquire()
        monkey.get_original("_thread", "start_new_thread")(self._run, ())

    def _run(self) -> None:
        socket = self._socket
        while not self._stopping:
            if not socket.poll(200):
                continue
            request = socket.recv_multipart()
            version, request_id = request[0], request[1]
            mechanism, credentials = request[5], request[6:]
            allowed = (version == b"1.0" and mechanism == b"PLAIN" and len(credentials) == 2
                       and credentials[0] == TCP_USER and hmac.compare_digest(credentials[1], self._token))
            if not allowed:
                self.refused += 1
            socket.send_multipart([b"1.0", request_id, b"200" if allowed else b"400",
                                   b"OK" if allowed else b"the events token is missing or wrong",
                                   b"", b""])
        socket.close(linger=0)
        self._running.release()

    def stop(self) -> None:
        """Ask the thread to end and wait for it (it polls every 0.2 s)."""
        self._stopping = True
        if self._running.acquire(timeout=2):
            self._running.release()
