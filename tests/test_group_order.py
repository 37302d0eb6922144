"""Where group messages land (PROTOCOL §13.1, §13.4): a message that arrives late is placed
where its parents put it, not at the bottom, the same on every member; a member never sees
what was written before it joined. Members in one process (tests/groupnode.py), real
sessions over UDP on loopback."""

from groupnode import wait_until
from test_group_service import joined, setup_module, texts, trio  # noqa: F401 (fixtures and setup)


def has_all(node, gid, wanted):
    held = texts(node, gid)
    return all(text in held for text in wanted)


class Partition:
    """Drops every group frame a node sends while it is on: its records and receipts reach
    nobody, what others send still reaches it (a one-way outage of its uplink)."""

    def __init__(self, node):
        self.channel = node.groups.channel
        self.send_frame = self.channel.send_frame
        self.on = False
        self.dropped = 0
        self.channel.send_frame = self._send

    def _send(self, link, frame):
        if self.on:
            self.dropped += 1
            return True
        return self.send_frame(link, frame)


def test_a_late_message_is_placed_where_it_belongs_on_every_member(trio):
    a, b, c = trio
    gid = a.groups.create("late", [a.contact(b), a.contact(c)])["group"]
    joined((b, c), gid)
    a.groups.submit_message(gid, "a0", None)
    for node in (b, c):
        wait_until(lambda node=node: has_all(node, gid, ["a0"]), 30, f"{node.label} has a0")
    outage = Partition(c)
    outage.on = True
    c.groups.submit_message(gid, "late", None)  # written after a0, seen by nobody else yet
    wait_until(lambda: has_all(c, gid, ["late"]), 30, "C's own message stored")
    for text in ("a1", "a2", "a3"):
        a.groups.submit_message(gid, text, None)
    for node in (b, c):
        wait_until(lambda node=node: has_all(node, gid, ["a1", "a2", "a3"]), 30, f"{node.label} has a1-a3")
    assert "late" not in texts(a, gid) and "late" not in texts(b, gid)
    assert outage.dropped > 0
    outage.on = False  # anti-entropy brings it to A and B after a1-a3, which did not see it
    for node in (a, b):
        wait_until(lambda node=node: has_all(node, gid, ["late"]), 60, f"{node.label} has the late message")
    orders = [texts(node, gid) for node in (a, b, c)]
    assert orders[0] == orders[1] == orders[2], orders
    order = orders[0]
    # C wrote its KEY and then "late" on top of a0: depth a0 + 2, like a2 (ties go by hash),
    # below a3, which arrived everywhere before it
    assert order.index("a0") < order.index("late") < order.index("a3") == len(order) - 1, order


def test_a_member_never_sees_what_was_written_before_it_joined(trio):
    a, b, c = trio
    gid = a.groups.create("before", [a.contact(b)])["group"]
    joined((b,), gid)
    a.groups.submit_message(gid, "before C", None)
    b.groups.submit_message(gid, "also before C", None)
    for node in (a, b):
        wait_until(lambda node=node: has_all(node, gid, ["before C", "also before C"]), 30,
                   f"{node.label} has both")
    a.groups.invite(gid, a.contact(c))
    joined((c,), gid)
    wait_until(lambda: b.groups.groups[bytes.fromhex(gid)].membership.is_member(c.fingerprint), 30,
               "B knows C is a member")  # so B's next key includes C
    a.groups.submit_message(gid, "after C", None)
    b.groups.submit_message(gid, "B after C", None)
    for node in (a, c):
        wait_until(lambda node=node: has_all(node, gid, ["after C", "B after C"]), 30,
                   f"{node.label} has what was written after C joined")
    assert texts(c, gid) == [t for t in texts(a, gid) if t in ("after C", "B after C")]
    assert "before C" not in texts(c, gid) and "also before C" not in texts(c, gid)
    assert {"before C", "also before C", "after C", "B after C"} <= set(texts(b, gid))
