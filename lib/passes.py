"""Work that runs once per event-loop pass, in one long-lived greenlet.

Several parts of the node batch their work per loop pass: requests and datagrams arriving
together are stored in one commit and answered with one send. The obvious way to run such a
pass, `gevent.spawn(work)` each time, costs a new greenlet every time, and on Python 3.11 a
new greenlet also maps (and then unmaps) a 16 KiB frame stack and takes its page faults:
tens of microseconds on a virtual machine, several times per chat message. A `PassRunner`
keeps one greenlet that sleeps until poked.
"""

from __future__ import annotations

import logging
from typing import Callable

import gevent
import gevent.event

log = logging.getLogger("chatp2p.passes")


class PassRunner:
    """Runs `work()` once the poking greenlet yields, however often `poke()` was called
    meanwhile; a poke during `work()` gets one more pass. `work` may wait (it runs in its
    own greenlet); an exception is logged and the runner goes on."""

    def __init__(self, work: Callable[[], None], name: str) -> None:
        self._work = work
        self._name = name
        self._wanted = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self.busy = False  # inside work()

    def poke(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        self._wanted.set()

    @property
    def pending(self) -> bool:
        """A pass is due or under way."""
        return self.busy or self._wanted.is_set()

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            self.busy = True
            try:
                self._work()
            except Exception:
                log.exception("%s pass failed", self._name)
            finally:
                self.busy = False
