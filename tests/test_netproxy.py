"""Tests of tests/netproxy.py: the impairment proxy must do what its counters say, and nothing
when asked for nothing, since other tests trust it to emulate a bad network."""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from netproxy import Counters, ImpairmentProxy
from poll import wait_for

BUFFER = 4 * 1024 * 1024


def udp(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    sock.bind((host, 0))
    return sock


class EchoServer:
    """Echoes every datagram to its sender, on a thread; remembers the sources it saw."""

    def __init__(self) -> None:
        self.sock = udp()
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()
        self.received = 0
        self.sources: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                payload, source = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            self.received += 1
            self.sources.add(source)
            self.sock.sendto(payload, source)

    def __enter__(self) -> "EchoServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self.sock.close()


def receive_all(sock: socket.socket, quiet: float = 0.3, limit: float = 10.0) -> list[bytes]:
    """Everything that arrives until nothing has come for `quiet` seconds (bounded by `limit`)."""
    got: list[bytes] = []
    sock.settimeout(quiet)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(65535))
        except socket.timeout:
            break
    return got


def numbered(n: int) -> bytes:
    return struct.pack("!I", n) + b"x" * 60


def number(payload: bytes) -> int:
    return struct.unpack("!I", payload[:4])[0]


def check_consistent(c: Counters, name: str) -> None:
    assert c.forwarded == c.received - c.dropped + c.duplicated, (name, c)
    assert c.errors == 0 and c.rejected == 0, (name, c)


# ---- impairments ----------------------------------------------------------------------------


def test_impaired_counters_match_what_arrived() -> None:
    count = 2000
    with EchoServer() as echo, ImpairmentProxy(
        echo.address, loss=0.1, duplicate=0.05, reorder=0.1, seed=1234
    ) as proxy:
        client = udp()
        try:
            for n in range(count):
                client.sendto(numbered(n), proxy.address)
                if n % 200 == 199:
                    time.sleep(0.002)  # a little pacing; buffers are large anyway
            got = receive_all(client)
        finally:
            client.close()
        up, down = proxy.counters("up"), proxy.counters("down")

    stats = {"up": up, "down": down}
    assert up.received == count, stats
    check_consistent(up, "up")
    check_consistent(down, "down")
    assert echo.received == up.forwarded, stats
    assert down.received == echo.received, stats
    assert len(got) == down.forwarded, stats
    assert up.bytes == up.forwarded * 64 and down.bytes == down.forwarded * 64, stats
    # Each impairment happened in each direction, near its configured rate.
    for c in (up, down):
        assert 0.05 * c.received < c.dropped < 0.15 * c.received, stats
        assert 0.02 * c.received < c.duplicated < 0.09 * c.received, stats
        assert c.reordered > 0.03 * c.received, stats
    numbers = [number(p) for p in got]
    assert len(set(numbers)) < len(numbers), "no duplicate arrived"
    assert len(set(numbers)) < count, "nothing was lost"
    assert numbers != sorted(numbers), "order never changed"


def test_no_impairment_is_exact_passthrough() -> None:
    payloads = [bytes([i % 256]) * size for i, size in enumerate([0, 1, 1200, 8192, 60000] * 40)]
    payloads += [numbered(n) for n in range(300)]
    with EchoServer() as echo, ImpairmentProxy(echo.address) as proxy:
        client = udp()
        try:
            for payload in payloads:
                client.sendto(payload, proxy.address)
            got = receive_all(client, quiet=0.2)
        finally:
            client.close()
        stats = proxy.stats()
    assert got == payloads
    total = sum(len(p) for p in payloads)
    for direction in ("up", "down"):
        assert stats[direction]["forwarded"] == len(payloads), stats
        assert stats[direction]["bytes"] == total, stats
        for name in ("dropped", "duplicated", "reordered", "rejected", "errors"):
            assert stats[direction][name] == 0, stats


def test_seeded_decisions_repeat() -> None:
    def dropped_numbers() -> list[int]:
        with EchoServer() as echo, ImpairmentProxy(
            echo.address, loss_up=0.3, duplicate_up=0.1, seed=99
        ) as proxy:
            client = udp()
            try:
                for n in range(300):
                    client.sendto(numbered(n), proxy.address)
                got = {number(p) for p in receive_all(client, quiet=0.2)}
            finally:
                client.close()
            assert proxy.counters("down").dropped == 0
        return sorted(set(range(300)) - got)

    first = dropped_numbers()
    assert first and first == dropped_numbers()


def test_delay_and_jitter() -> None:
    with EchoServer() as echo, ImpairmentProxy(echo.address, delay_ms=60, jitter_ms=10) as proxy:
        client = udp()
        try:
            started = time.monotonic()
            client.sendto(b"ping", proxy.address)
            client.settimeout(2.0)
            assert client.recv(100) == b"ping"
            rtt = time.monotonic() - started
        finally:
            client.close()
    assert 0.095 < rtt < 0.5, rtt  # two legs of 60 +- 10 ms


def test_set_changes_impairments_live_per_direction() -> None:
    with EchoServer() as echo, ImpairmentProxy(echo.address, loss_down=1.0) as proxy:
        client = udp()
        try:
            client.sendto(b"one", proxy.address)
            wait_for(lambda: proxy.counters("down").dropped == 1, 5, "down dropped == 1", interval=0.01)
            assert echo.received == 1 and proxy.counters("up").forwarded == 1
            proxy.set(loss_down=0.0)
            client.sendto(b"two", proxy.address)
            client.settimeout(2.0)
            assert client.recv(100) == b"two"
        finally:
            client.close()
        assert proxy.impairment("up").loss == 0.0
    with pytest.raises(TypeError):
        proxy.set(lossy=0.1)
    with pytest.raises(TypeError):
        proxy.set(loss_sideways=0.1)
    with pytest.raises(ValueError):
        proxy.set(duplicate=1.5)


# ---- addressing -----------------------------------------------------------------------------


def test_each_client_gets_its_own_upstream_address() -> None:
    with EchoServer() as echo, ImpairmentProxy(echo.address) as proxy:
        clients = [udp(), udp()]
        try:
            for i, client in enumerate(clients):
                client.sendto(b"hello %d" % i, proxy.address)
                client.settimeout(2.0)
                reply, source = client.recvfrom(100)
                assert reply == b"hello %d" % i
                assert source == proxy.address  # replies come back from the listening port
            upstream = {proxy.upstream_address(c.getsockname()) for c in clients}
        finally:
            for client in clients:
                client.close()
    assert echo.sources == upstream and len(upstream) == 2
    assert proxy.address not in upstream


def test_replies_from_strangers_are_rejected() -> None:
    with EchoServer() as echo, ImpairmentProxy(echo.address) as proxy:
        client, stranger = udp(), udp()
        try:
            client.sendto(b"hi", proxy.address)
            client.settimeout(2.0)
            assert client.recv(100) == b"hi"
            upstream = proxy.upstream_address(client.getsockname())
            assert upstream is not None
            stranger.sendto(b"spoof", upstream)
            wait_for(lambda: proxy.counters("down").rejected == 1, 5, "down rejected == 1", interval=0.01)
            client.settimeout(0.1)
            with pytest.raises(socket.timeout):
                client.recv(100)
        finally:
            client.close()
            stranger.close()


def test_pair_lets_either_side_start() -> None:
    a, b, stranger = udp(), udp(), udp()
    try:
        with ImpairmentProxy.pair(a.getsockname()[1], b.getsockname()[1]) as proxy:
            assert proxy.reach_a and proxy.reach_b and proxy.reach_a != proxy.reach_b
            for sock in (a, b, stranger):
                sock.settimeout(2.0)
            # B speaks first, to the address it was given for A.
            b.sendto(b"from b", proxy.reach_a)
            payload, source = a.recvfrom(100)
            assert (payload, source) == (b"from b", proxy.reach_b)
            # A answers the address it sees, which is the one it was given for B.
            a.sendto(b"from a", source)
            payload, source = b.recvfrom(100)
            assert (payload, source) == (b"from a", proxy.reach_a)
            stranger.sendto(b"intruder", proxy.reach_b)
            wait_for(lambda: proxy.counters("up").rejected == 1, 5, "up rejected == 1", interval=0.01)
            assert proxy.counters("up").forwarded == 1
            assert proxy.counters("down").forwarded == 1
    finally:
        for sock in (a, b, stranger):
            sock.close()


def test_pair_applies_impairments_per_direction() -> None:
    a, b = udp(), udp()
    try:
        with ImpairmentProxy.pair(a.getsockname()[1], b.getsockname()[1], loss_up=1.0) as proxy:
            a.sendto(b"lost", proxy.reach_b)
            b.sendto(b"kept", proxy.reach_a)
            a.settimeout(2.0)
            assert a.recv(100) == b"kept"
            wait_for(lambda: proxy.counters("up").dropped == 1, 5, "up dropped == 1", interval=0.01)
    finally:
        a.close()
        b.close()


# ---- capture and lifecycle ------------------------------------------------------------------


def test_capture_keeps_both_directions() -> None:
    with EchoServer() as echo, ImpairmentProxy(echo.address, capture=True) as proxy:
        client = udp()
        try:
            client.sendto(b"plain secret words", proxy.address)
            client.sendto(b"\x00\x01opaque", proxy.address)
            assert len(receive_all(client, quiet=0.2)) == 2
        finally:
            client.close()
        captured = proxy.captured()
    assert sorted(captured) == sorted([b"plain secret words", b"\x00\x01opaque"] * 2)
    assert proxy.contains(b"secret")
    assert not proxy.contains(b"password")
    with EchoServer() as echo, ImpairmentProxy(echo.address) as quiet:
        with pytest.raises(RuntimeError):
            quiet.contains(b"secret")


def test_stop_is_prompt_even_with_datagrams_in_flight() -> None:
    with EchoServer() as echo:
        proxy = ImpairmentProxy(echo.address, delay_ms=5000).start()
        client = udp()
        try:
            for n in range(50):
                client.sendto(numbered(n), proxy.address)
            wait_for(lambda: proxy.counters("up").received == 50, 5, "up received == 50", interval=0.01)
            started = time.monotonic()
            proxy.stop()
            elapsed = time.monotonic() - started
        finally:
            client.close()
        assert elapsed < 0.5, elapsed
        assert echo.received == 0  # the delayed datagrams were discarded
        assert proxy.thread_error is None
        proxy.stop()  # idempotent
