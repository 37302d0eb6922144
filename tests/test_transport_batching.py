"""UDP batching on the node's one socket, with real sockets on loopback (and, last, two daemons).

`lo` carries a GSO super-packet whole (as a NIC with segmentation offload would), so a GSO send
reaches a receiver with UDP_GRO as one buffer with its segment size, and one without as the
separate datagrams the kernel cuts it into:

* runs of same-size datagrams, each closed by a shorter one, go out one GSO send per run and
  arrive as the same datagrams, in order, with or without GRO;
* a GRO buffer holding a hostile segment: that segment is dropped and counted, the others are
  dispatched;
* a protocol with a batch handler gets each run of its consecutive segments of a GRO buffer in
  one call (the others still go one by one), and so do datagrams that were already queued
  separately, one batch per run of one sender; a failing batch handler is counted, the loop
  goes on;
* a GSO send the kernel refuses goes again one datagram per call, nothing lost. Linux before
  6.11 refused with EIO when the device could not checksum (`ethtool -K DEV tx-checksumming
  off`); newer kernels checksum in software, so the test has the kernel refuse for another
  reason it still has: a socket with UDP checksums off (SO_NO_CHECK) gets EINVAL;
* with batching off, neither GSO nor GRO is used;
* chat: a burst of queued messages leaves a daemon in GSO sends too.
"""

import socket
import struct

import gevent
import pytest

from chatp2p_core.net.transport import SOL_UDP, UDP_SEGMENT, Transport
from poll import wait_for


def _transport(batching=True):
    transport = Transport("127.0.0.1", 0, batching=batching)
    transport.start()
    got = []
    transport.register("test", lambda d: d[:1] == b"G", lambda d, a: got.append(d))
    return transport, got


def _datagrams(sizes):
    """Datagrams of the given sizes, each different (its index in the first bytes)."""
    return [b"G" + struct.pack(">H", i) + bytes([i % 251]) * (size - 3) for i, size in enumerate(sizes)]


def _needs_gso(transport):
    if not (transport.gso and transport.gro):
        transport.stop()
        pytest.skip("this kernel has no UDP GSO/GRO")


SIZES = [1000] * 5 + [400] + [1000] * 3 + [700] + [1000] * 2


def test_same_size_runs_go_in_one_gso_send_each_and_arrive_whole_with_gro():
    sender, _ = _transport()
    receiver, got = _transport()
    _needs_gso(sender)
    try:
        datagrams = _datagrams(SIZES)
        sender.send_many(datagrams, ("127.0.0.1", receiver.port))
        wait_for(lambda: len(got) >= len(datagrams), 5, "every datagram", sleep=gevent.sleep)
        assert got == datagrams
        # [1000 x5, 400], [1000 x3, 700], [1000 x2]: the shorter one closes a run
        assert sender.counters["gso_sends"] == 3 and sender.counters["gso_segments"] == len(datagrams)
        assert sender.counters["sent"] == len(datagrams)
        assert receiver.counters["gro_receives"] == 3 and receiver.counters["received"] == len(datagrams)
    finally:
        sender.stop()
        receiver.stop()


def test_a_receiver_without_gro_gets_the_same_datagrams():
    sender, _ = _transport()
    _needs_gso(sender)
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1", 0))
    plain.settimeout(5)
    try:
        datagrams = _datagrams(SIZES + [1000] * 70)  # more than one send holds
        sender.send_many(datagrams, plain.getsockname())
        got = [plain.recv(65535) for _ in datagrams]
        assert got == datagrams
        # [1000 x5, 400], [1000 x3, 700], then 72 of 1000: 64 (the kernel's cap) and 8
        assert sender.counters["gso_sends"] == 4
    finally:
        sender.stop()
        plain.close()


def test_a_hostile_segment_inside_a_gro_buffer_is_dropped_and_counted():
    receiver, got = _transport()
    _needs_gso(receiver)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        good = _datagrams([500] * 4)
        hostile = b"\xff" * 500  # no protocol claims it
        buffer = good[0] + good[1] + hostile + good[2] + good[3][:123]  # the last one shorter
        raw.sendmsg([buffer], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 500))], 0, ("127.0.0.1", receiver.port))
        wait_for(lambda: len(got) >= 4, 5, "the four good segments", sleep=gevent.sleep)
        assert got == [good[0], good[1], good[2], good[3][:123]]
        assert receiver.counters["dropped_unknown"] == 1
        assert receiver.counters["gro_receives"] == 1 and receiver.counters["received"] == 5
    finally:
        raw.close()
        receiver.stop()


def test_runs_of_a_gro_buffer_go_to_a_batch_handler_in_one_call_each():
    receiver, singles = _transport()  # protocol "G" without a batch handler
    _needs_gso(receiver)
    batches, others = [], []
    receiver.register("batched", lambda d: d[:1] == b"B", lambda d, a: batches.append([d]),
                      lambda ds, a: batches.append(list(ds)))
    receiver.register("other", lambda d: d[:1] == b"O", lambda d, a: others.append(d))
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        seg = lambda kind, i, size=400: kind + bytes([i]) * (size - 1)  # noqa: E731
        order = [seg(b"B", 0), seg(b"B", 1), seg(b"B", 2), seg(b"O", 3), seg(b"B", 4), b"\xff" * 400,
                 seg(b"G", 6), seg(b"B", 7), seg(b"B", 8, 99)]  # the last one shorter
        raw.sendmsg([b"".join(order)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 400))], 0,
                   ("127.0.0.1", receiver.port))
        wait_for(lambda: sum(map(len, batches)) >= 6, 5, "the six B segments", sleep=gevent.sleep)
        # each run of consecutive B segments in one call, in order; the others one by one
        assert batches == [order[0:3], [order[4]], order[7:9]]
        assert others == [order[3]] and singles == [order[6]]
        assert receiver.counters["dropped_unknown"] == 1 and receiver.counters["received"] == 9
        assert receiver.counters["gro_receives"] == 1
    finally:
        raw.close()
        receiver.stop()


def test_datagrams_already_queued_are_taken_in_and_dispatched_as_one_batch_per_sender():
    receiver, _ = _transport()
    _needs_gso(receiver)
    batches = []
    receiver.register("batched", lambda d: d[:1] == b"B", lambda d, a: batches.append([d]),
                      lambda ds, a: batches.append((a[1], list(ds))))
    one, two = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    try:
        for sock in (one, two):
            sock.bind(("127.0.0.1", 0))
        sent = [(sock, b"B" + bytes([i]) * 300) for i, sock in enumerate([one] * 5 + [two] * 3 + [one] * 2)]
        for sock, datagram in sent:  # separate datagrams (no GSO): all queued before the loop runs
            sock.sendto(datagram, ("127.0.0.1", receiver.port))
        wait_for(lambda: sum(len(b[1]) for b in batches) >= len(sent), 5, "every datagram", sleep=gevent.sleep)
        port = lambda sock: sock.getsockname()[1]  # noqa: E731
        # one batch per run of one sender, in order
        assert batches == [(port(one), [d for _, d in sent[:5]]), (port(two), [d for _, d in sent[5:8]]),
                           (port(one), [d for _, d in sent[8:]])]
        assert receiver.counters["received"] == len(sent) and not receiver.counters["gro_receives"]
    finally:
        one.close()
        two.close()
        receiver.stop()


def test_a_batch_handler_that_fails_is_counted_and_the_loop_goes_on():
    receiver, singles = _transport()
    _needs_gso(receiver)

    def explode(datagrams, address):
        raise ValueError("a bug in the handler")

    receiver.register("batched", lambda d: d[:1] == b"B", lambda d, a: None, explode)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        raw.sendmsg([b"B" * 300 + b"G" * 300], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 300))], 0,
                   ("127.0.0.1", receiver.port))
        wait_for(lambda: singles, 5, "the G segment after the failing run", sleep=gevent.sleep)
        assert singles == [b"G" * 300] and receiver.counters["batched_errors"] == 1
    finally:
        raw.close()
        receiver.stop()


SO_NO_CHECK = getattr(socket, "SO_NO_CHECK", 11)


def test_a_gso_send_the_kernel_refuses_falls_back_without_losing_data():
    sender, _ = _transport()
    receiver, got = _transport()
    _needs_gso(sender)
    try:
        sender.sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)  # UDP GSO now fails with EINVAL
        datagrams = _datagrams(SIZES)
        sender.send_many(datagrams, ("127.0.0.1", receiver.port))
        wait_for(lambda: len(got) >= len(datagrams), 5, "every datagram", sleep=gevent.sleep)
        assert got == datagrams
        assert sender.counters["gso_refused"] == 3 and sender.counters["gso_sends"] == 0
        assert sender.counters["sent"] == len(datagrams) and not sender.counters["send_errors"]
    finally:
        sender.stop()
        receiver.stop()


def test_batching_off_uses_neither_gso_nor_gro():
    sender, _ = _transport(batching=False)
    receiver, got = _transport(batching=False)
    try:
        assert not (sender.gso or sender.gro or receiver.gso or receiver.gro)
        datagrams = _datagrams(SIZES)
        sender.send_many(datagrams, ("127.0.0.1", receiver.port))
        wait_for(lambda: len(got) >= len(datagrams), 5, "every datagram", sleep=gevent.sleep)
        assert got == datagrams
        assert sender.counters["gso_sends"] == 0 and receiver.counters["gro_receives"] == 0
    finally:
        sender.stop()
        receiver.stop()


def test_chat_messages_queued_together_leave_in_gso_batches():
    """A burst of messages (pipelined requests: one messaging pass seals them all) goes out
    through the same batched path as file data: runs of full datagrams in GSO sends."""
    import json
    import shutil
    import socket as plain_socket
    import tempfile

    from test_transfer import close_pair, start_pair

    probe, _ = _transport()
    _needs_gso(probe)
    probe.stop()
    tmp = tempfile.mkdtemp(prefix="chatp2p-chat-gso-")
    a = b = ev_a = ev_b = None
    try:
        a, b, ev_a, ev_b = start_pair(tmp, "chat")
        before = a.request("status")["data"]["p2p"]["counters"].get("gso_segments", 0)
        count = 200
        lines = b"".join(json.dumps({"command": "p2p", "action": "send_message", "id": i,
                                     "data": {"peer": "Bob", "message": f"burst {i:04d} " + "x" * 80,
                                              "message_id": f"burst-{i}"}}).encode() + b"\n"
                         for i in range(count))
        with plain_socket.create_connection((a.host, a.port), timeout=30) as api:
            api.sendall(lines)
            answers = b""
            while answers.count(b"\n") < count:
                chunk = api.recv(65536)
                assert chunk, "the API closed the connection"
                answers += chunk
        assert all(json.loads(line)["success"] for line in answers.splitlines()), answers[:500]
        ev_b.wait_count("p2p_message_received", count, 30)
        assert len(ev_b.all("p2p_message_received")) >= count
        after = a.request("status")["data"]["p2p"]["counters"].get("gso_segments", 0)
        assert after - before >= 4, (before, after)
    finally:
        close_pair((ev_a, ev_b), (a, b))
        shutil.rmtree(tmp, ignore_errors=True)
