"""GroupChannel: whole group frames over real sessions (real handshakes, real UDP on loopback,
two Networks in this process). Reassembly limits themselves: test_group_fragment.py."""

import math
import tempfile

import gevent
import pytest

from chatp2p_core.codec import wire
from chatp2p_core.codec.groupfragment import MAX_FRAME, fragment_capacity
from chatp2p_core.codec.wire import GroupFragment
from chatp2p_core.crypto import pqc
from chatp2p_core.services.groups.channel import GroupChannel

from netnode import NetNode, wait_connected
from poll import wait_for


class Forward:
    """The group service's part in these tests: hands the link events to the channel."""

    def __init__(self, channel):
        self.channel = channel

    def link_up(self, link):
        pass

    def link_down(self, link):
        self.channel.link_down(link)

    def records(self, link, records):
        self.channel.records(link, records)

    def tick(self, now):
        self.channel.tick(now)

    def path_changed(self, link):
        pass


class Side:
    def __init__(self, node):
        self.node = node
        self.frames = []
        self.channel = GroupChannel(node.network, self.on_frame)
        node.network.observers.append(Forward(self.channel))
        self.fail = False

    def on_frame(self, link, frame):
        if self.fail:
            raise RuntimeError("a bug in the service")
        self.frames.append((link.fingerprint, frame))


@pytest.fixture(scope="module")
def pair():
    backend = pqc.select_backend()
    with tempfile.TemporaryDirectory(prefix="chatp2p-gchan-") as tmp:
        alice, bob = NetNode(tmp, "alice", backend), NetNode(tmp, "bob", backend)
        try:
            bob.add(alice, "Alice")
            link = alice.call(bob, "Bob")
            assert wait_connected(link)
            back = wait_for(lambda: bob.network.links.get(alice.fingerprint), 10, "bob's link")
            assert wait_connected(back)
            yield Side(alice), Side(bob), link, back
        finally:
            alice.close()
            bob.close()


def wait_frames(side, count):
    return wait_for(lambda: len(side.frames) >= count and side.frames, 10, f"{count} frames",
                    sleep=gevent.sleep)


def test_frames_of_every_size_arrive_whole_and_in_full_datagrams(pair):
    a, b, link, _ = pair
    b.frames.clear()
    frames = [b"\x01small", bytes(range(256)) * 1200, b"\x02" * MAX_FRAME]
    sent_before = a.node.transport.counters["sent"]
    for frame in frames:
        assert a.channel.send_frame(link, frame)
    got = wait_frames(b, len(frames))
    assert [frame for _, frame in got] == frames
    assert {fp for fp, _ in got} == {a.node.fingerprint}
    capacity = fragment_capacity(a.node.network.config.max_datagram)
    needed = sum(math.ceil(len(f) / capacity) for f in frames)
    sent = a.node.transport.counters["sent"] - sent_before
    assert needed <= sent <= needed + 2  # fragments fill datagrams (a keepalive may slip in)
    assert a.node.network.counters["group_frames_sent"] >= 3
    assert b.node.network.counters["group_frames_received"] >= 3


def test_a_frame_too_large_is_a_caller_bug(pair):
    a, _, link, _ = pair
    with pytest.raises(ValueError):
        a.channel.send_frame(link, b"x" * (MAX_FRAME + 1))


def test_a_failing_handler_is_counted_and_the_next_frame_still_arrives(pair):
    a, b, link, _ = pair
    b.frames.clear()
    b.fail = True
    try:
        assert a.channel.send_frame(link, b"boom")
        wait_for(lambda: b.node.network.counters["group_frame_errors"] >= 1, 10, "the error counted",
                 sleep=gevent.sleep)
    finally:
        b.fail = False
    assert a.channel.send_frame(link, b"after")
    assert wait_frames(b, 1)[-1][1] == b"after"


def test_a_lost_fragment_loses_only_its_frame_which_expires(pair):
    a, b, link, back = pair
    b.frames.clear()
    capacity = fragment_capacity(wire.MAX_DATAGRAM)
    # the first half of a frame whose second half never comes, then a whole frame
    half = GroupFragment(0xFFFFFFFE, 2 * capacity, 0, b"h" * capacity)
    assert a.node.network.send_records(link, [half])
    assert a.channel.send_frame(link, b"whole")
    assert wait_frames(b, 1)[-1][1] == b"whole"
    assert b.channel.assembler.partials(a.node.fingerprint) == 1
    expired_before = b.node.network.counters["group_frames_expired"]
    b.channel.tick(1e12)  # a clock far ahead: the partial is over its 10 s
    assert b.channel.assembler.partials(a.node.fingerprint) == 0
    assert b.node.network.counters["group_frames_expired"] == expired_before + 1


def test_link_down_drops_partials_and_sending_to_a_down_link_says_false():
    backend = pqc.select_backend()
    with tempfile.TemporaryDirectory(prefix="chatp2p-gchan2-") as tmp:
        alice, bob = NetNode(tmp, "alice", backend), NetNode(tmp, "bob", backend)
        try:
            a, b = Side(alice), Side(bob)
            bob.add(alice, "Alice")
            link = alice.call(bob, "Bob")
            assert wait_connected(link)
            assert alice.network.send_records(link, [GroupFragment(5, 5000, 0, b"p" * 100)])
            wait_for(lambda: b.channel.assembler.partials(alice.fingerprint) == 1, 10, "a partial",
                     sleep=gevent.sleep)
            alice.network.stop()  # CLOSE: bob's link goes down
            wait_for(lambda: b.channel.assembler.partials(alice.fingerprint) == 0, 5, "partials dropped",
                     sleep=gevent.sleep)
            assert b.channel.assembler.buffered == 0
            assert not a.channel.send_frame(link, b"nobody there")
        finally:
            alice.transport.stop()
            alice.store.close()
            bob.close()
