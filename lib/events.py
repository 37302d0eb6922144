"""Real-time events: an in-process bus that also publishes on a ZeroMQ PUB socket.

Each ZeroMQ message is two frames: the event name (so SUB sockets can filter on it) and the
JSON object {event, data, timestamp} of the seed protocol. The embedded UI subscribes in
process and sees exactly the same objects.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

# Plain pyzmq, not zmq.green: the PUB socket is only ever written with NOBLOCK, which never
# blocks (a full queue raises zmq.Again and the event is dropped and logged), so there is
# nothing for gevent to wait on, and the green wrapper's event polling after every send cost
# more than the send itself. ZeroMQ's I/O threads are its own (C++), outside gevent.
import zmq

from .util import encode_json, iso_utc

log = logging.getLogger("chatp2p.events")

SEND_HWM = 1_000_000   # bursts of 100k events must not be dropped by a slow subscriber

Subscriber = Callable[[dict], None]


class EventBus:
    """Publishes events to in-process subscribers and to every bound ZeroMQ endpoint."""

    def __init__(self, endpoints: list[str]) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._subscribers: list[Subscriber] = []
        self.endpoints: list[str] = []
        self.published = 0
        try:
            for endpoint in endpoints:
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
        self._context.term()
