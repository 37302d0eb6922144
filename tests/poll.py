"""Test helper: wait for a condition by polling it, never for a fixed time.

`wait_for(predicate, timeout, message)` calls `predicate()` until it returns something true and
returns that value; after `timeout` seconds it raises AssertionError with `message` (and the
last value seen). Tests, the namespace helpers and bench/ all use this one helper.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

INTERVAL = 0.05  # seconds between two polls


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, message: str = "condition",
             interval: float = INTERVAL, sleep: Optional[Callable[[float], Any]] = None) -> Any:
    """Poll `predicate()` until it returns a true value and return that value; raise
    AssertionError after `timeout` s. `sleep` paces the polls (time.sleep, or gevent.sleep in
    a greenlet)."""
    pause = sleep or time.sleep
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message} (last: {value!r})")
        pause(min(interval, max(0.0, deadline - time.monotonic())))
