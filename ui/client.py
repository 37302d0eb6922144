"""The UI's only way to the core: API requests and events, never the core's objects.

Two backends give the same answers and events:
- `LocalBackend` (embedded mode) calls the API's command table in process
  (`CommandTable.dispatch(node, request)`) and subscribes to the node's event bus;
- `RemoteBackend` (`chatp2p --connect HOST:PORT`) talks JSON over TCP (`ApiClient`, a small
  pool of connections so a slow request never holds up the others) and reads events from the
  daemon's ZeroMQ PUB socket (zmq.green).

Every blocking call runs in its own greenlet; answers and events reach the UI through a
`Bridge`: a queue plus one byte written to a `loop.watch_pipe()` fd, which wakes urwid's loop
(an alarm set from another greenlet would not). Values pass through JSON in both modes, so
the UI sees exactly the same types either way.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from typing import Any, Callable, Optional

log = logging.getLogger("chatp2p.ui.client")

Reply = dict
EventCallback = Callable[[dict], None]
StateCallback = Callable[[str], None]      # "live", "lost", "none: reason"
POOL_IDLE_SECONDS = 10.0                    # well under the daemon's idle_timeout (30 s by default)


def _plain(value: Any) -> Any:
    """The value as it would come out of the TCP API: JSON types only."""
    return json.loads(json.dumps(value, ensure_ascii=False))


def _request(command: str, action: Optional[str], data: Any) -> dict:
    request: dict[str, Any] = {"command": command}
    if action is not None:
        request["action"] = action
    if data is not None:
        request["data"] = data
    return request


class Bridge:
    """Runs functions on the UI loop, posted from any greenlet."""

    def __init__(self) -> None:
        self.queue: collections.deque = collections.deque()
        self.fd: Optional[int] = None
        self._signalled = False
        self._loop = None

    def attach(self, loop) -> None:
        self._loop = loop
        self.fd = loop.watch_pipe(self._drain)
        if self.queue:
            self._signal()

    def post(self, fn: Callable[[], None]) -> None:
        self.queue.append(fn)
        if self.fd is not None and not self._signalled:
            self._signal()

    def _signal(self) -> None:
        self._signalled = True
        try:
            os.write(self.fd, b"!")
        except OSError:
            pass

    def _drain(self, _data: bytes) -> bool:
        import urwid

        self._signalled = False
        while self.queue:
            fn = self.queue.popleft()
            try:
                fn()
            except urwid.ExitMainLoop:
                raise
            except Exception:
                log.exception("UI callback failed")
        return True

    def close(self) -> None:
        if self.fd is not None and self._loop is not None:
            self._loop.remove_watch_pipe(self.fd)
            os.close(self.fd)
            self.fd = None


class LocalBackend:
    """Embedded mode: the command table, called in process; the node's event bus."""

    description = "embedded"

    def __init__(self, node: Any, table: Any) -> None:
        self.node = node
        self.table = table
        self._unsubscribe: Optional[Callable[[], None]] = None

    def call(self, command: str, action: Optional[str] = None, data: Any = None) -> Reply:
        return _plain(self.table.dispatch(self.node, _request(command, action, data)))

    def subscribe(self, on_event: EventCallback, on_state: StateCallback) -> None:
        events = self.node.events
        if events is None:
            on_state("none: the node is not running")
            return
        self._unsubscribe = events.subscribe(lambda event: on_event(_plain(event)))
        on_state("live")

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


class RemoteBackend:
    """`--connect`: the API over TCP and the ZeroMQ event socket of a running chatp2pd."""

    def __init__(self, host: str, port: int, token: Optional[str] = None, timeout: float = 30.0,
                 pin: Optional[str] = None) -> None:
        self.host, self.port, self.token, self.timeout = host, port, token, timeout
        self.pin = pin  # a remote API's TLS certificate fingerprint
        self.description = f"connected to {host}:{port}"
        self._idle: list[tuple[Any, float]] = []
        self._greenlets: list = []
        self._zmq: list = []
        self._closed = False

    # -- requests ---------------------------------------------------------------------------
    def _take(self):
        from chatp2p_core.api.ctl import ApiClient

        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()
            if now - since < POOL_IDLE_SECONDS:
                return client, True
            client.close()
        return ApiClient.connect(self.host, self.port, self.token, self.timeout, self.pin), False

    def call(self, command: str, action: Optional[str] = None, data: Any = None) -> Reply:
        from chatp2p_core.api.ctl import ApiConnectionError, DaemonUnreachable

        for attempt in (1, 2):
            client, reused = self._take()
            try:
                reply = client.send(_request(command, action, data))
            except DaemonUnreachable:
                raise
            except ApiConnectionError:
                client.close()
                if reused and attempt == 1:
                    continue      # the daemon closed an idle connection: a fresh one will do
                raise
            if self._closed:
                client.close()
            else:
                self._idle.append((client, time.monotonic()))
            return reply
        raise AssertionError("unreachable")

    # -- events -----------------------------------------------------------------------------
    def subscribe(self, on_event: EventCallback, on_state: StateCallback) -> None:
        import gevent

        self._greenlets.append(gevent.spawn(self._events, on_event, on_state))

    def _events(self, on_event: EventCallback, on_state: StateCallback) -> None:
        import gevent
        import zmq.green as zmq
        from zmq.utils.monitor import recv_monitor_message

        from chatp2p_core.api.ctl import authenticate_subscriber, pick_event_endpoint

        try:
            reply = self.call("status")
        except Exception as exc:
            on_state(f"none: {exc}")
            return
        events = (reply.get("data") or {}).get("events") or {}
        endpoint = pick_event_endpoint(events.get("endpoints") or [])
        if not endpoint or (endpoint.startswith("ipc://") and not os.path.exists(endpoint[6:])):
            on_state("none: the daemon publishes no event endpoint reachable from here "
                     "(start it with --events-port)")
            return
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        authenticate_subscriber(sub, endpoint, self.token)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._zmq = [context, sub, monitor]

        def watch() -> None:
            try:
                while True:
                    kind = recv_monitor_message(monitor)["event"]
                    if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        gevent.sleep(0.05)   # let the subscription reach the publisher
                        on_state("live")
                    elif kind == zmq.EVENT_DISCONNECTED:
                        on_state("lost")
            except (zmq.ZMQError, gevent.GreenletExit):
                return

        self._greenlets.append(gevent.spawn(watch))
        sub.connect(endpoint)
        try:
            while True:
                frames = sub.recv_multipart()
                if len(frames) != 2:
                    continue
                try:
                    event = json.loads(frames[1])
                except ValueError:
                    continue
                if isinstance(event, dict):
                    on_event(event)
        except (zmq.ZMQError, gevent.GreenletExit):
            return

    def close(self) -> None:
        import gevent

        self._closed = True
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        self._greenlets = []
        if self._zmq:
            context, sub, monitor = self._zmq
            try:
                sub.disable_monitor()
            except Exception:
                pass
            monitor.close(linger=0)
            sub.close(linger=0)
            context.term()
            self._zmq = []
        for client, _ in self._idle:
            client.close()
        self._idle = []
        gevent.sleep(0)


class Client:
    """What the controller uses: `request(..., on_done=callback)` never blocks the UI."""

    def __init__(self, backend: Any, post: Callable[[Callable[[], None]], None],
                 spawn: Optional[Callable[..., Any]] = None) -> None:
        self.backend = backend
        self.post = post
        if spawn is None:
            import gevent
            spawn = gevent.spawn
        self.spawn = spawn

    @property
    def description(self) -> str:
        return getattr(self.backend, "description", "")

    def request(self, command: str, action: Optional[str] = None, data: Any = None,
                on_done: Optional[Callable[[Reply], None]] = None) -> None:
        def run() -> None:
            try:
                reply = self.backend.call(command, action, data)
            except Exception as exc:    # the daemon is gone or answered garbage
                log.warning("request %s %s failed: %s", command, action, exc)
                reply = {"success": False, "error": str(exc), "unreachable": True}
            if on_done is not None:
                self.post(lambda: on_done(reply))

        self.spawn(run)

    def start_events(self, on_event: EventCallback, on_state: StateCallback) -> None:
        self.backend.subscribe(lambda event: self.post(lambda: on_event(event)),
                               lambda state: self.post(lambda: on_state(state)))

    def close(self) -> None:
        self.backend.close()
