"""Test helper: every event of one daemon, collected by a thread from a plain pyzmq SUB socket.

`Events(daemon)` subscribes to the daemon's ipc:// event socket and returns once events are
seen to arrive (PUB drops them until the subscription has reached the daemon). Then:
`wait(predicate, timeout)` for whole events, `wait_data(name, timeout, **match)` for the data
of events of one name, `all(name, **match)`, `wait_count(name, count, timeout)`, `close()`.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Optional

import zmq


class Events:
    def __init__(self, daemon: Any) -> None:
        status = daemon.request("status")["data"]
        endpoint = [e for e in status["events"]["endpoints"] if e.startswith("ipc://")][0]
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.items: list[dict] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._probe(daemon)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stopping:
            if not poller.poll(50):
                continue
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                event = json.loads(frames[1])
                with self.cond:
                    self.items.append(event)
                    self.cond.notify_all()

    def _probe(self, daemon: Any) -> None:
        """Make harmless events (a contact added and removed) until one shows up."""
        other = daemon.other_id()
        deadline = time.monotonic() + 10
        n = 0
        while time.monotonic() < deadline:
            n += 1
            name = f"zz-probe-{n}"
            assert daemon.request("contacts", "add", {"peer": name, "public_key": other})["success"]
            daemon.request("contacts", "remove", {"peer": name})
            if self.wait_data("contact_added", 0.3, raise_=False, name=name):
                return
        raise AssertionError("no event arrived on the SUB socket")

    def all(self, name: str, /, **match: Any) -> list[dict]:
        with self.cond:
            items = list(self.items)
        return [e["data"] for e in items if e["event"] == name
                and all(e["data"].get(k) == v for k, v in match.items())]

    def wait(self, predicate: Callable[[dict], bool], timeout: float, raise_: bool = True,
             what: str = "event") -> list[dict]:
        """The events (whole {event, data, timestamp}) matching `predicate`, once there is one."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for e in self.items if predicate(e)]
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    if raise_:
                        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last events: "
                                             f"{[(e['event'], e['data']) for e in self.items[-10:]]}")
                    return []
                self.cond.wait(left)

    def wait_data(self, name: str, /, timeout: float = 10.0, raise_: bool = True,
                  where: Optional[Callable[[dict], bool]] = None, **match: Any) -> list[dict]:
        """The data of the `name` events whose fields equal `match` (and `where(data)`)."""
        def wanted(event: dict) -> bool:
            if event["event"] != name:
                return False
            data = event["data"]
            if match and not isinstance(data, dict):
                return False
            return all(data.get(k) == v for k, v in match.items()) and (where is None or where(data))
        return [e["data"] for e in self.wait(wanted, timeout, raise_, what=f"{name} {match}")]

    def wait_count(self, name: str, /, count: int, timeout: float, key: Optional[Callable] = None,
                   **match: Any) -> list[dict]:
        """Wait until at least `count` events `name` (data matching, and key(data) true) arrived."""
        deadline = time.monotonic() + timeout
        while True:
            items = [d for d in self.all(name, **match) if key is None or key(d)]
            if len(items) >= count or time.monotonic() > deadline:
                return items
            with self.cond:
                self.cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.sock.close(0)
        self.context.term()
