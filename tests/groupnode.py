"""Test helper: a NetNode (tests/netnode.py) with a GroupService, all in this process.

For the group tests that need to reach inside a member: hand-made (hostile) records and frames
sent over a real session, counters, the service's state. Real UDP on loopback, real
handshakes; the daemons' tests (test_groups.py) cover the API and the processes.
"""

from __future__ import annotations

import gevent

from chatp2p_core.services.groups.service import GroupService
from netnode import NetNode, wait_connected
from poll import wait_for


class NoTransfers:
    """The group service's Transfers, for tests that send no files."""


class GroupNode(NetNode):
    def __init__(self, tmp: str, label: str, backend, clock=None) -> None:
        super().__init__(tmp, label, backend)
        self.label = label
        self.backend = backend
        extra = {"clock": clock} if clock is not None else {}
        self.groups = GroupService(self.identity, backend, self.store, self.network, NoTransfers(),
                                   lambda name, data: self.events.append((name, data)), **extra)

    def befriend(self, other: "GroupNode") -> None:
        """Contacts both ways (with bundles) and a session."""
        other.add(self, self.label)
        link = self.network.connect(self.add(other, other.label), [other.address])
        assert wait_connected(link), f"{self.label} -> {other.label}: no session"

    def contact(self, other: "GroupNode"):
        return self.store.contacts.get(other.label)

    def close(self) -> None:
        self.groups.stop()
        super().close()


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll `predicate` from a greenlet (the nodes run in this process's hub)."""
    return wait_for(predicate, timeout, what, sleep=gevent.sleep)
