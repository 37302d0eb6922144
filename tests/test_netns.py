"""Tests of tests/netns.py: the topologies must behave like the networks they stand for (a LAN,
cone and random NATs) and must vanish afterwards, since NAT-traversal tests rely on both.

Skipped, with the reason, where namespaces cannot be built (not root, no iproute2/iptables)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from netns import (
    PREFIX,
    Namespace,
    NatTopology,
    cleanup_stale,
    lan_segment,
    list_namespaces,
    live_namespaces,
    nat_topology,
    netns_available,
)

AVAILABLE, REASON = netns_available(iptables=True)
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=REASON)

ECHO_PORT = 40000

# Answers every datagram with the address it came from ("ip:port"), for `seconds` at most.
WHOAMI = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.settimeout(0.1)
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        data, src = sock.recvfrom(2048)
    except socket.timeout:
        continue
    sock.sendto(("%s:%d" % src).encode(), src)
"""

# Asks WHOAMI at ip:port (from local port `sport`) and prints the answer: the mapped address.
ASK = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[3])))
sock.settimeout(0.1)
for _ in range(20):
    sock.sendto(b"whoami", (sys.argv[1], int(sys.argv[2])))
    try:
        print(sock.recv(2048).decode())
        break
    except socket.timeout:
        pass
"""

# Prints "ip:port payload" for each datagram received within `seconds`, then "done".
# Optional 4th argument: a multicast group to join.
LISTEN = """
import socket, struct, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[1], int(sys.argv[2])))
if len(sys.argv) > 4:
    mreq = struct.pack("4s4s", socket.inet_aton(sys.argv[4]), socket.inet_aton("0.0.0.0"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
sock.settimeout(0.05)
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        data, src = sock.recvfrom(2048)
    except socket.timeout:
        continue
    print("%s:%d %s" % (src[0], src[1], data.decode()), flush=True)
print("done", flush=True)
"""

# Sends `payload` to ip:port `count` times, 20 ms apart, from local port `sport` (0 = any).
SEND = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
sock.bind(("0.0.0.0", int(sys.argv[5])))
for _ in range(int(sys.argv[4])):
    sock.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.02)
"""

# One side of a hole punch: learn its mapped address from WHOAMI, print "mapped ip:port",
# read the peer's mapped address on stdin, then punch for at most `seconds`; prints
# "result ok MS" once it has heard the peer and the peer has heard it, else "result fail".
PUNCH = """
import socket, sys, time
echo = (sys.argv[1], int(sys.argv[2]))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[3])))
sock.settimeout(0.1)
mapped = None
for _ in range(20):
    sock.sendto(b"whoami", echo)
    try:
        data, src = sock.recvfrom(2048)
    except socket.timeout:
        continue
    if src == echo:
        mapped = data.decode()
        break
print("mapped", mapped, flush=True)
line = sys.stdin.readline().split()
peer = (line[0], int(line[1]))
sock.settimeout(0.02)
heard = acked = False
start = time.monotonic()
while time.monotonic() - start < float(sys.argv[4]) and not (heard and acked):
    sock.sendto(b"ack" if heard else b"punch", peer)
    try:
        data, src = sock.recvfrom(2048)
    except socket.timeout:
        continue
    if src == peer:
        heard = True
        acked = acked or data == b"ack"
for _ in range(3):
    sock.sendto(b"ack", peer)
ms = (time.monotonic() - start) * 1000
print("result", "ok %d" % ms if heard and acked else "fail", flush=True)
"""


def wait_ready(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", line


def finish(proc: subprocess.Popen, timeout: float = 5.0) -> list[str]:
    """The rest of a helper script's output lines once it has exited on its own."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (proc.returncode, out)
    return [line for line in out.splitlines() if line]


def ours(names: list[str]) -> list[str]:
    on_machine = set(list_namespaces())
    return [name for name in names if name in on_machine]


# ---- LAN segment ----------------------------------------------------------------------------


def test_lan_segment_unicast_broadcast_multicast() -> None:
    with lan_segment(2) as (a, b):
        assert a.address == "192.0.2.10" and b.address == "192.0.2.11"
        listener = b.python(LISTEN, "0.0.0.0", "41000", "1.0", "224.0.0.123")
        wait_ready(listener)
        for target, payload in ((b.address, "unicast"), ("192.0.2.255", "broadcast"),
                                ("224.0.0.123", "multicast")):
            a.run([sys.executable, "-c", SEND, target, "41000", payload, "2", "41001"])
        lines = finish(listener)
    assert lines[-1] == "done"
    assert {line for line in lines[:-1]} == {
        "192.0.2.10:41001 unicast", "192.0.2.10:41001 broadcast", "192.0.2.10:41001 multicast"}


# ---- NAT topology ---------------------------------------------------------------------------


def start_whoami(net: NatTopology, seconds: float = 8.0) -> subprocess.Popen:
    echo = net.public.python(WHOAMI, str(ECHO_PORT), str(seconds))
    wait_ready(echo)
    return echo


def punch(net: NatTopology, seconds: float) -> tuple[str, str, list[str]]:
    """Run PUNCH on both hosts through a WHOAMI on the public side; (left, right, mapped)."""
    start_whoami(net)
    left = net.left_host.python(PUNCH, net.public_ip, str(ECHO_PORT), "42000", str(seconds))
    right = net.right_host.python(PUNCH, net.public_ip, str(ECHO_PORT), "42000", str(seconds))
    mapped = []
    for proc in (left, right):
        assert proc.stdout is not None
        word, address = proc.stdout.readline().split()
        assert word == "mapped" and address != "None", address
        mapped.append(address)
    for proc, peer in ((left, mapped[1]), (right, mapped[0])):
        assert proc.stdin is not None
        proc.stdin.write(peer.replace(":", " ") + "\n")
        proc.stdin.flush()
    results = [finish(proc, timeout=seconds + 5)[-1] for proc in (left, right)]
    return results[0], results[1], mapped


def test_nat_hides_private_address_and_drops_unsolicited() -> None:
    with nat_topology("cone", "cone") as net:
        echo = start_whoami(net)
        # Outbound works, and the public side sees the router's WAN address, port preserved.
        for host, wan_ip in ((net.left_host, net.left_wan_ip), (net.right_host, net.right_wan_ip)):
            probe = host.run([sys.executable, "-c", ASK, net.public_ip, str(ECHO_PORT), "42001"])
            assert probe.stdout.strip() == f"{wan_ip}:42001"
        # Unsolicited inbound to the router itself is dropped, even where something listens.
        listener = net.left_router.python(LISTEN, "0.0.0.0", "42002", "0.5")
        wait_ready(listener)
        net.public.run([sys.executable, "-c", SEND, net.left_wan_ip, "42002", "knock", "3", "0"])
        assert finish(listener) == ["done"]
        rules = net.left_router.run(["iptables", "-L", "INPUT", "-v", "-x", "-n"]).stdout
        drop = next(line for line in rules.splitlines() if "DROP" in line and "wan" in line)
        assert int(drop.split()[0]) >= 3, rules
        # The public side has no route to private addresses at all.
        leak = net.public.run([sys.executable, "-c", SEND, net.left_host_ip, "42003", "x",
                               "1", "0"], check=False)
        assert leak.returncode != 0 and "unreachable" in leak.stderr.lower(), leak
        echo.kill()


def test_hole_punch_cone_cone_succeeds() -> None:
    with nat_topology("cone", "cone") as net:
        left, right, mapped = punch(net, seconds=3.0)
    assert mapped == [f"{net.left_wan_ip}:42000", f"{net.right_wan_ip}:42000"]
    assert left.startswith("result ok") and right.startswith("result ok"), (left, right)


@pytest.mark.parametrize("left_nat,right_nat", [("random", "random"), ("cone", "random")])
def test_hole_punch_fails_with_random_nat(left_nat: str, right_nat: str) -> None:
    with nat_topology(left_nat, right_nat) as net:
        left, right, _ = punch(net, seconds=1.0)
    assert left == "result fail" and right == "result fail", (left, right)


# ---- clean-up -------------------------------------------------------------------------------


def test_teardown_even_when_the_body_raises() -> None:
    names: list[str] = []
    sleeper: subprocess.Popen | None = None
    with pytest.raises(RuntimeError, match="boom"):
        with nat_topology("cone", "random") as net:
            names = [ns.name for ns in net.namespaces()]
            sleeper = net.left_host.popen([sys.executable, "-c", "import time; time.sleep(30)"])
            assert len(ours(names)) == 6
            raise RuntimeError("boom")
    assert names and ours(names) == []
    assert sleeper is not None and sleeper.poll() is not None
    with pytest.raises(RuntimeError, match="boom"):
        with lan_segment(3) as hosts:
            names = [ns.name for ns in hosts]
            raise RuntimeError("boom")
    assert ours(names) == []
    assert live_namespaces() == []


def test_cleanup_stale_spares_live_runs() -> None:
    # A leftover of a crashed run (its pid cannot exist) goes; one of a live run stays.
    dead = f"{PREFIX}4194999-dead-x-1"
    alive = f"{PREFIX}{os.getppid()}-live-x-1"
    for name in (dead, alive):
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        removed = cleanup_stale(older_than=time.time() + 5)
        assert dead in removed and alive not in removed
        assert ours([dead, alive]) == [alive]
        later = cleanup_stale()  # both are younger than this process: neither goes
        assert dead not in later and alive not in later
    finally:
        for name in (dead, alive):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)
    assert ours([dead, alive]) == []


def test_namespace_run_and_delete() -> None:
    ns = Namespace("solo")
    try:
        assert ns.name.startswith(PREFIX) and ns.name in live_namespaces()
        links = ns.run(["ip", "-o", "link"]).stdout
        assert "lo:" in links and "eth0" not in links  # nothing but loopback: no way out
        assert ns.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
    finally:
        ns.delete()
    assert ours([ns.name]) == []
    ns.delete()  # idempotent
