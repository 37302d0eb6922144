"""The receive side of UDP batching in the link layer: a GRO buffer of DATA frames from a peer
is opened in one pass and its records reach the upper layers in one call, and a forged frame
inside it is dropped and counted alone. Real Network objects, real UDP on loopback (which hands
a GSO send to a GRO receiver as one buffer), in one process."""

import struct
import tempfile
import time

import gevent
import pytest

from chatp2p_core.codec import wire
from chatp2p_core.codec.wire import RawRecord
from chatp2p_core.net.transport import SOL_UDP, UDP_SEGMENT
from poll import wait_for
from test_path_validation import pair
from test_path_validation import setup_module as _setup_backend


def setup_module():
    _setup_backend()


class Collector:
    """An observer that keeps every `records` call (of the file protocol's records, or with
    `files=False` of every other kind)."""

    def __init__(self, files=True):
        self.calls = []
        self.takes_file_records = files

    def link_up(self, link): pass
    def link_down(self, link): pass
    def tick(self, now): pass
    def path_changed(self, link): pass

    def records(self, link, records):
        self.calls.append(list(records))


def test_a_gro_buffer_reaches_the_upper_layer_in_one_call_without_its_forged_frame():
    with tempfile.TemporaryDirectory() as tmp:
        alice, bob, alice_link, bob_link = pair(tmp)
        try:
            if not (bob.transport.gso and alice.transport.gro):
                pytest.skip("this kernel has no UDP GSO/GRO")
            collector = Collector()
            alice.network.observers.append(collector)
            sent = [RawRecord(0x30, bytes([i]) * 200) for i in range(8)]  # one upper-layer record each
            datagrams = bob_link.session.seal_payloads([wire.encode_record(r) for r in sent], time.monotonic())
            forged = bytearray(datagrams[3])
            forged[-1] ^= 0x80  # its AEAD tag: someone on the path changed it
            datagrams[3] = bytes(forged)
            size = len(datagrams[0])
            assert all(len(d) == size for d in datagrams)
            bob.transport.sock.sendmsg([b"".join(datagrams)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))],
                                       0, bob_link.address)
            wait_for(lambda: collector.calls, 5, "the records", sleep=gevent.sleep)
            # one call, in order, without the forged one; each record, alone in its frame (as every
            # DATA of a file), still encoded for the file layer (wire.frame_records)
            assert collector.calls == [[wire.encode_record(r) for r in sent[:3] + sent[4:]]]
            assert alice.network.counters["dropped_auth"] == 1
            assert alice.transport.counters["gro_receives"] >= 1
        finally:
            alice.close()
            bob.close()


def test_file_records_go_to_the_file_observer_only_and_the_rest_to_the_others_in_order():
    """One buffer mixing file records (0x20-0x3F) and others: the file layer gets its own, the
    chat layers theirs, each in order, and neither looks at the other's."""
    with tempfile.TemporaryDirectory() as tmp:
        alice, bob, alice_link, bob_link = pair(tmp)
        try:
            files, others = Collector(files=True), Collector(files=False)
            alice.network.observers += [files, others]
            sent = [RawRecord(0x30, b"f1"), wire.Msg(b"m" * 16, 1, 0, 2, 0, b"hi"), RawRecord(0x21, b"f2"),
                    RawRecord(0x55, b"rendezvous-like"), RawRecord(0x3F, b"f3")]
            for datagram in bob_link.session.seal(sent, time.monotonic()):
                bob.transport.send(datagram, bob_link.address)
            wait_for(lambda: files.calls and others.calls, 5, "the records", sleep=gevent.sleep)
            assert sum(files.calls, []) == [sent[0], sent[2], sent[4]]
            assert sum(others.calls, []) == [sent[1], sent[3]]
        finally:
            alice.close()
            bob.close()
