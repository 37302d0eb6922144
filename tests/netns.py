"""Test helper: throwaway network-namespace topologies (LAN segments, NATs) for real-network tests.

Needs root, `ip` (iproute2) and, for NATs, `iptables`. Nothing here touches the host's own
network: every interface is a veth created inside namespaces this module owns, addresses come
from the documentation prefixes only (192.0.2.0/24 LAN, 198.51.100.0/24 "internet",
203.0.113.0/25 and 203.0.113.128/25 private LANs), and `ip_forward` is switched on only inside
router namespaces.

Clean-up is belt and braces, because a leaked namespace outlives the test run: the context
managers delete what they built even when the body raises, an `atexit` hook deletes whatever
is still registered, and `cleanup_stale()` (run once per process before the first build)
deletes leftovers of crashed runs. Names are `cp2p-<pid>-<random>-<role>-<n>`, so parallel runs
never clash and a stale namespace can be told from a live run's by its creator's pid.

    ok, reason = netns_available(iptables=True)
    with nat_topology("cone", "cone") as net:
        echo = net.public.python(ECHO_SCRIPT, "40000")
        net.left_host.run([sys.executable, "-c", CLIENT, net.public_ip])

A router that maps ports (miniupnpd; `miniupnpd_available()` says whether it can run here):

    with nat_topology() as net, \
            stun_server(net.public, (net.public_ip, net.public_ip2), tmpdir) as stun, \
            natpmp_router(net.left_router, (net.public_ip, net.public_ip2, stun.port),
                          tmpdir, upnp=False) as router:
        ...  # a host on the left maps a port by NAT-PMP; router.mappings() lists them
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import ipaddress
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Iterator, Sequence

from coturn import Coturn
from poll import wait_for

PREFIX = "cp2p-"
NETNS_DIR = "/run/netns"
COMMAND_TIMEOUT = 15.0  # seconds; every command run here is bounded
NAT_KINDS = ("cone", "random")

LAN_NET = "192.0.2"  # lan_segment hosts: 192.0.2.10, .11, ...
WAN_NET = "198.51.100"  # the "internet" of nat_topology
PUBLIC_IP, PUBLIC_IP2 = f"{WAN_NET}.1", f"{WAN_NET}.2"
LEFT_WAN_IP, RIGHT_WAN_IP = f"{WAN_NET}.11", f"{WAN_NET}.12"
LEFT_ROUTER_LAN_IP, LEFT_HOST_IP = "203.0.113.1", "203.0.113.10"  # 203.0.113.0/25
RIGHT_ROUTER_LAN_IP, RIGHT_HOST_IP = "203.0.113.129", "203.0.113.138"  # 203.0.113.128/25
# ipv6_topology: 2001:db8::/32 only (documentation prefix). The "internet" is one /64, each
# home gets its own /64 (a real ISP delegates a /56 or /48; one /64 is what a LAN uses).
V6_WAN_NET = "2001:db8:100::"
V6_PUBLIC_IP = "2001:db8:100::1"
V6_LEFT_WAN_IP, V6_RIGHT_WAN_IP = "2001:db8:100::11", "2001:db8:100::12"
V6_LEFT_NET, V6_RIGHT_NET = "2001:db8:1::/64", "2001:db8:2::/64"
V6_LEFT_ROUTER_LAN_IP, V6_LEFT_HOST_IP = "2001:db8:1::1", "2001:db8:1::10"
V6_RIGHT_ROUTER_LAN_IP, V6_RIGHT_HOST_IP = "2001:db8:2::1", "2001:db8:2::10"

_RUN = f"{os.getpid()}-{secrets.token_hex(2)}"
_live: dict[str, "Namespace"] = {}  # every namespace this process created and not yet deleted
_serial = itertools.count(1)  # so two topologies alive in one process never share a name
_stale_checked = False
_available: dict[bool, tuple[bool, str]] = {}


class NetnsError(RuntimeError):
    """A namespace command failed; the message carries the command and its stderr."""


def _check(cmd: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a host-side command (ip, iptables), return stdout, raise NetnsError on failure."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(cmd)}: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


# ---- availability ---------------------------------------------------------------------------


def netns_available(iptables: bool = False) -> tuple[bool, str]:
    """(True, "") when namespaces can be built here, else (False, why) for `pytest.skip`.
    Probes once per process by creating and deleting a namespace."""
    if iptables in _available:
        return _available[iptables]
    result = (True, "")
    if not sys.platform.startswith("linux"):
        result = (False, "network namespaces need Linux")
    elif os.geteuid() != 0:
        result = (False, "network namespaces need root")
    elif shutil.which("ip") is None:
        result = (False, "`ip` (iproute2) is not installed")
    elif iptables and shutil.which("iptables") is None:
        result = (False, "`iptables` is not installed")
    else:
        probe = f"{PREFIX}{_RUN}-probe"
        try:
            _check(["ip", "netns", "add", probe])
            try:
                _check(["ip", "netns", "exec", probe, "ip", "link", "set", "lo", "up"])
                if iptables:
                    _check(["ip", "netns", "exec", probe, "iptables", "-w", "5", "-t", "nat",
                            "-A", "POSTROUTING", "-o", "lo", "-j", "MASQUERADE", "--random"])
            finally:
                _check(["ip", "netns", "delete", probe])
        except NetnsError as exc:
            result = (False, f"network namespaces unusable: {exc}")
    _available[iptables] = result
    return result


# ---- one namespace --------------------------------------------------------------------------


class Namespace:
    """One network namespace owned by this process; commands run inside it with `ip netns
    exec`. Processes started with `popen()` are killed when the namespace is deleted."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.name = f"{PREFIX}{_RUN}-{role}-{next(_serial)}"
        self.addresses: list[str] = []  # IPv4 addresses given to its interfaces, first = main
        self.addresses6: list[str] = []  # IPv6 ones (add_address6)
        self._procs: list[subprocess.Popen] = []
        _check(["ip", "netns", "add", self.name])
        _live[self.name] = self  # registered at once, so even a half-built topology is cleaned
        self.ip("link", "set", "lo", "up")

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, {self.addresses})"

    @property
    def address(self) -> str:
        """The main IPv4 address (the first one assigned)."""
        return self.addresses[0]

    def ip(self, *args: str) -> str:
        """`ip -n NAME ...`, checked."""
        return _check(["ip", "-n", self.name, *args])

    def iptables(self, *args: str) -> str:
        """`iptables ...` inside the namespace, checked (`-w` in case of the legacy lock)."""
        return _check(["ip", "netns", "exec", self.name, "iptables", "-w", "5", *args])

    def ip6tables(self, *args: str) -> str:
        """`ip6tables ...` inside the namespace, checked."""
        return _check(["ip", "netns", "exec", self.name, "ip6tables", "-w", "5", *args])

    def sysctl(self, setting: str) -> None:
        """`sysctl -w key=value` inside the namespace: per-namespace keys stay in it."""
        _check(["ip", "netns", "exec", self.name, "sysctl", "-q", "-w", setting])

    def add_address(self, dev: str, cidr: str, broadcast: bool = True) -> None:
        args = ["addr", "add", cidr, "dev", dev] + (["brd", "+"] if broadcast else [])
        self.ip(*args)
        self.addresses.append(cidr.split("/")[0])

    def add_address6(self, dev: str, cidr: str) -> None:
        """An IPv6 address usable at once: `nodad` skips duplicate address detection (which
        keeps a new address tentative, unusable as a source, for about a second)."""
        self.ip("-6", "addr", "add", cidr, "dev", dev, "nodad")
        self.addresses6.append(cidr.split("/")[0])

    def run(self, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        """subprocess.run inside the namespace; defaults: check, text, capture, 15 s timeout."""
        kw.setdefault("check", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", COMMAND_TIMEOUT)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], **kw)

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen:
        """subprocess.Popen inside the namespace (`ip netns exec` execs, so .pid is the
        program's own); killed at teardown if still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)
        self._procs.append(proc)
        return proc

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.Popen:
        """Run `python -c code args...` (this interpreter) inside the namespace, with text
        pipes for stdin/stdout by default."""
        kw.setdefault("stdin", subprocess.PIPE)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("text", True)
        return self.popen([sys.executable, "-c", code, *args], **kw)

    def pids(self) -> list[int]:
        """Every process currently inside the namespace."""
        return _ns_pids(self.name)

    def delete(self) -> None:
        """Kill what runs inside, then delete the namespace (its veths go with it). Idempotent."""
        if _live.pop(self.name, None) is None:
            return
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=1.0)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        _delete_namespace(self.name)


def _ns_pids(name: str) -> list[int]:
    try:
        return [int(p) for p in _check(["ip", "netns", "pids", name], timeout=5.0).split()]
    except NetnsError:
        return []


def _delete_namespace(name: str) -> None:
    """SIGKILL what is left inside (processes our tests started there), then delete."""
    for pid in _ns_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(20):  # a namespace with live processes lingers: give SIGKILL a moment
        if not _ns_pids(name):
            break
        time.sleep(0.05)
    with contextlib.suppress(NetnsError):
        _check(["ip", "netns", "delete", name])


def list_namespaces() -> list[str]:
    """Names of every namespace on the machine (`ip netns list`)."""
    out = _check(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def live_namespaces() -> list[str]:
    """Names of the namespaces this process created and has not deleted yet."""
    return list(_live)


@atexit.register
def _cleanup_all() -> None:
    """Last resort for a run that skipped its context managers (e.g. an interrupted test)."""
    for ns in reversed(list(_live.values())):
        with contextlib.suppress(Exception):
            ns.delete()


# ---- leftovers of crashed runs --------------------------------------------------------------


def _start_time(pid: int) -> float | None:
    """Wall-clock start of a process, from /proc; None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def cleanup_stale(prefix: str = PREFIX, older_than: float | None = None) -> list[str]:
    """Delete namespaces named `prefix...` left by crashed runs; returns their names.

    A namespace is stale when it was created before `older_than` (default: this process's
    start) and its creator (the pid in its name) is gone, so a parallel run is never hit."""
    cutoff = older_than if older_than is not None else (_start_time(os.getpid()) or time.time())
    removed = []
    for name in list_namespaces():
        if not name.startswith(prefix) or name in _live:
            continue
        try:
            created = os.stat(os.path.join(NETNS_DIR, name)).st_mtime
        except OSError:
            continue
        if created >= cutoff:
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        creator = _start_time(int(pid_text)) if pid_text.isdigit() else None
        if creator is not None and creator <= created + 1:
            continue  # its creator still runs (the +1 s absorbs clock-tick rounding)
        _delete_namespace(name)
        removed.append(name)
    return removed


def _cleanup_stale_once() -> None:
    global _stale_checked
    if not _stale_checked:
        _stale_checked = True
        cleanup_stale()


@contextlib.contextmanager
def _building() -> Iterator[list[Namespace]]:
    """Collects the namespaces of one topology and deletes them all on exit, error or not."""
    _cleanup_stale_once()
    built: list[Namespace] = []
    try:
        yield built
    finally:
        for ns in reversed(built):
            ns.delete()


def _bridge(switch: Namespace) -> None:
    """A bridge `br0` in `switch`; multicast snooping off so multicast simply floods."""
    switch.ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
    switch.ip("link", "set", "br0", "up")


def _plug(switch: Namespace, port: str, ns: Namespace, dev: str) -> None:
    """A veth from the switch's bridge (end `port`) into `ns` (end `dev`), both ends up."""
    switch.ip("link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns.name)
    switch.ip("link", "set", port, "master", "br0", "up")
    ns.ip("link", "set", dev, "up")


def _wire(a: Namespace, dev_a: str, b: Namespace, dev_b: str) -> None:
    """A direct veth between two namespaces, both ends up."""
    a.ip("link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", b.name)
    a.ip("link", "set", dev_a, "up")
    b.ip("link", "set", dev_b, "up")


# ---- a LAN segment --------------------------------------------------------------------------


@contextlib.contextmanager
def lan_segment(n: int) -> Iterator[list[Namespace]]:
    """n namespaces on one bridge (which lives in its own namespace), 192.0.2.10+i/24 on
    `eth0`, with a multicast route so discovery broadcasts and link-local multicast work;
    they cannot leave the segment, which reaches nothing else."""
    if not 1 <= n <= 200:
        raise ValueError("a segment holds 1 to 200 hosts")
    with _building() as built:
        switch = Namespace("lansw")
        built.append(switch)
        _bridge(switch)
        hosts = []
        for i in range(n):
            host = Namespace(f"lan{i}")
            built.append(host)
            _plug(switch, f"p{i}", host, "eth0")
            host.add_address("eth0", f"{LAN_NET}.{10 + i}/24")
            host.ip("route", "add", "224.0.0.0/4", "dev", "eth0")
            hosts.append(host)
        yield hosts


# ---- two NATed hosts and a public host --------------------------------------------------------


@dataclasses.dataclass
class NatTopology:
    """Two private hosts, each behind its own NAT router, and a public host, all on one
    "internet" segment (198.51.100.0/24). The public side cannot route to private addresses."""

    public: Namespace
    public_ip: str
    public_ip2: str  # a second address on `public`, for RFC 3489 change-address STUN tests
    left_router: Namespace
    left_wan_ip: str
    left_host: Namespace
    left_host_ip: str
    right_router: Namespace
    right_wan_ip: str
    right_host: Namespace
    right_host_ip: str
    left_nat: str
    right_nat: str
    switch: Namespace

    def namespaces(self) -> list[Namespace]:
        return [self.switch, self.public, self.left_router, self.left_host,
                self.right_router, self.right_host]


def _make_router(router: Namespace, nat: str) -> None:
    """Forwarding on, MASQUERADE out of `wan` (`--random` for "random": a new port for every
    new destination), and nothing unsolicited in: a NEW inbound packet that reached the router
    itself would otherwise create a conntrack entry that makes the NAT pick another port for
    the host's later outbound packet, breaking hole punching (checked in DESIGN.md)."""
    router.sysctl("net.ipv4.ip_forward=1")
    masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
    router.iptables(*masquerade, *(["--random"] if nat == "random" else []))
    router.iptables("-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW",
                    "-j", "DROP")
    router.iptables("-A", "FORWARD", "-i", "wan", "-o", "lan", "-m", "conntrack",
                    "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
    router.iptables("-A", "FORWARD", "-i", "wan", "-j", "DROP")


@contextlib.contextmanager
def nat_topology(left_nat: str = "cone", right_nat: str = "cone") -> Iterator[NatTopology]:
    """Build the NAT topology; "cone" is plain MASQUERADE (port-preserving, port-restricted
    filtering: cone/cone hole punching works), "random" adds `--random` (punching fails)."""
    for nat in (left_nat, right_nat):
        if nat not in NAT_KINDS:
            raise ValueError(f"NAT kind must be one of {NAT_KINDS}, got {nat!r}")
    with _building() as built:

        def make(role: str) -> Namespace:
            ns = Namespace(role)
            built.append(ns)
            return ns

        switch = make("wansw")
        _bridge(switch)
        public = make("public")
        _plug(switch, "ppub", public, "eth0")
        public.add_address("eth0", f"{PUBLIC_IP}/24")
        public.add_address("eth0", f"{PUBLIC_IP2}/24")

        sides = {}
        for side, nat, wan_ip, router_lan, host_ip, prefix in (
            ("left", left_nat, LEFT_WAN_IP, LEFT_ROUTER_LAN_IP, LEFT_HOST_IP, 25),
            ("right", right_nat, RIGHT_WAN_IP, RIGHT_ROUTER_LAN_IP, RIGHT_HOST_IP, 25),
        ):
            router = make(f"{side[0]}rtr")
            _plug(switch, f"p{side}", router, "wan")
            router.add_address("wan", f"{wan_ip}/24")
            host = make(f"{side[0]}host")
            _wire(router, "lan", host, "eth0")
            router.add_address("lan", f"{router_lan}/{prefix}")
            host.add_address("eth0", f"{host_ip}/{prefix}")
            host.ip("route", "add", "default", "via", router_lan)
            _make_router(router, nat)
            sides[side] = (router, host)

        yield NatTopology(
            public=public, public_ip=PUBLIC_IP, public_ip2=PUBLIC_IP2,
            left_router=sides["left"][0], left_wan_ip=LEFT_WAN_IP,
            left_host=sides["left"][1], left_host_ip=LEFT_HOST_IP,
            right_router=sides["right"][0], right_wan_ip=RIGHT_WAN_IP,
            right_host=sides["right"][1], right_host_ip=RIGHT_HOST_IP,
            left_nat=left_nat, right_nat=right_nat, switch=switch,
        )


# ---- one host with nothing but loopback -------------------------------------------------------


@contextlib.contextmanager
def isolated_host() -> Iterator[Namespace]:
    """One namespace with only `lo` (127.0.0.1 and ::1): a daemon bound to every address
    ("::") there is reachable from nowhere else."""
    with _building() as built:
        ns = Namespace("solo")
        built.append(ns)
        ns.sysctl("net.ipv6.conf.lo.disable_ipv6=0")
        yield ns


# ---- two IPv6 homes behind stateful firewalls, and a public host --------------------------------


@dataclasses.dataclass
class Ipv6Topology:
    """Like NatTopology in IPv6, as in a home with IPv6: no NAT, every host has a global
    address, and each home's router forwards inbound only what belongs to a flow its host
    started (conntrack ESTABLISHED,RELATED). The public host is on the "internet" /64."""

    public: Namespace
    public_ip: str
    left_router: Namespace
    left_host: Namespace
    left_host_ip: str
    right_router: Namespace
    right_host: Namespace
    right_host_ip: str
    switch: Namespace

    def namespaces(self) -> list[Namespace]:
        return [self.switch, self.public, self.left_router, self.left_host, self.right_router, self.right_host]


def _make_ipv6_firewall(router: Namespace) -> None:
    """IPv6 forwarding on (this namespace only); out of the home anything goes, into it only
    replies (and the ICMPv6 errors that belong to a flow): what simultaneous sends must open."""
    router.sysctl("net.ipv6.conf.all.forwarding=1")
    router.ip6tables("-A", "FORWARD", "-i", "wan", "-o", "lan", "-m", "conntrack",
                     "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
    router.ip6tables("-A", "FORWARD", "-i", "wan", "-j", "DROP")


@contextlib.contextmanager
def ipv6_topology() -> Iterator[Ipv6Topology]:
    """Build the IPv6 topology (addresses in 2001:db8::/32, see the V6_* constants)."""
    with _building() as built:

        def make(role: str) -> Namespace:
            ns = Namespace(role)
            built.append(ns)
            for conf in ("all", "default"):  # link-local addresses usable at once too (NDP)
                ns.sysctl(f"net.ipv6.conf.{conf}.accept_dad=0")
            return ns

        switch = make("wan6sw")
        _bridge(switch)
        public = make("public6")
        _plug(switch, "ppub", public, "eth0")
        public.add_address6("eth0", f"{V6_PUBLIC_IP}/64")
        sides = {}
        for side, wan_ip, net, router_lan, host_ip in (
            ("left", V6_LEFT_WAN_IP, V6_LEFT_NET, V6_LEFT_ROUTER_LAN_IP, V6_LEFT_HOST_IP),
            ("right", V6_RIGHT_WAN_IP, V6_RIGHT_NET, V6_RIGHT_ROUTER_LAN_IP, V6_RIGHT_HOST_IP),
        ):
            router = make(f"{side[0]}rtr6")
            _plug(switch, f"p{side}", router, "wan")
            router.add_address6("wan", f"{wan_ip}/64")
            host = make(f"{side[0]}host6")
            _wire(router, "lan", host, "eth0")
            router.add_address6("lan", f"{router_lan}/64")
            host.add_address6("eth0", f"{host_ip}/64")
            host.ip("-6", "route", "add", "default", "via", router_lan)
            _make_ipv6_firewall(router)
            sides[side] = (router, host, net, wan_ip)
        # The "internet" routes each home's /64 to its router; each router reaches the other
        # home through it the same way.
        for side, (router, _, net, wan_ip) in sides.items():
            public.ip("-6", "route", "add", net, "via", wan_ip)
            for other, (other_router, _, other_net, other_wan) in sides.items():
                if other != side:
                    router.ip("-6", "route", "add", other_net, "via", other_wan)
        yield Ipv6Topology(
            public=public, public_ip=V6_PUBLIC_IP,
            left_router=sides["left"][0], left_host=sides["left"][1], left_host_ip=V6_LEFT_HOST_IP,
            right_router=sides["right"][0], right_host=sides["right"][1], right_host_ip=V6_RIGHT_HOST_IP,
            switch=switch,
        )


# ---- a STUN server and a port-mapping router --------------------------------------------------

STUN_PORT = 3478
NATPMP_PORT = 5351  # RFC 6886: the router listens here on its LAN side
MINIUPNPD_TABLE = "miniupnpd"  # its own nftables table (inet family), never iptables' tables

# Waits until coturn answers on each address. A new socket (source port) for every half second:
# now and then coturn never answers the one client address whose first request came while it
# was still starting (seen about once in 30 starts), while every other source port gets answers.
WAIT_STUN = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from coturn import wait_for_binding
deadline = time.monotonic() + 15

def answers(host):
    while time.monotonic() < deadline:
        if wait_for_binding((host, int(sys.argv[2])), min(deadline, time.monotonic() + 0.5)):
            return True
    return False
sys.exit(0 if all(answers(host) for host in sys.argv[3:]) else 1)
"""

# miniupnpd (nftables backend) adds rules to these chains but does not create them, and
# Debian's nft_init.sh fails here: they are written by hand. Both policies accept: the router's
# own filtering stays in iptables (see _make_router), these only carry miniupnpd's rules.
_MINIUPNPD_NFT = """table inet {table} {{
  chain forward {{ type filter hook forward priority 0; policy accept; jump miniupnpd; }}
  chain miniupnpd {{ }}
  chain prerouting {{ type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }}
  chain postrouting {{ type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }}
  chain prerouting_miniupnpd {{ }}
  chain postrouting_miniupnpd {{ }}
}}
"""

# ext_perform_stun: miniupnpd refuses to map when its WAN address is reserved (every
# documentation prefix is) unless a STUN test (with change-request, hence coturn on two
# addresses) says that address is public and unfiltered.
_MINIUPNPD_CONF = """ext_ifname=wan
listening_ip=lan
http_port=0
enable_natpmp=yes
enable_upnp={upnp}
ext_perform_stun=yes
ext_stun_host={stun_host}
ext_stun_port={stun_port}
upnp_table_name={table}
upnp_nat_table_name={table}
secure_mode=yes
system_uptime=yes
min_lifetime=120
max_lifetime=86400
uuid=3c8a2d5e-6b1f-4f6a-9a3e-0c2b5d7e8f90
{allow}deny 0-65535 0.0.0.0/0 0-65535
"""
_MINIUPNPD_READY = "Listening for NAT-PMP/PCP traffic"
_MINIUPNPD_DISABLED = "Port forwarding is now disabled"


def miniupnpd_available() -> tuple[bool, str]:
    """(True, "") when miniupnpd and nft are installed (Debian miniupnpd, nftables)."""
    for tool, package in (("miniupnpd", "miniupnpd"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return False, f"`{tool}` (Debian {package}) is not installed"
    return True, ""


@contextlib.contextmanager
def stun_server(ns: Namespace, addresses: Sequence[str], directory: str, port: int = STUN_PORT,
                **options: Any) -> Iterator[Coturn]:
    """A coturn (tests/coturn.py options) listening on `addresses`:`port` inside `ns`; yields
    once it answers a Binding on every address, stops it on exit. Its files go in `directory`."""
    server = Coturn(addresses=addresses, **options)
    server.directory = os.path.join(directory, f"coturn-{ns.role}")
    os.makedirs(server.directory, exist_ok=True)
    server.port = port
    with open(os.path.join(server.directory, "turn.log"), "wb") as log:
        proc = ns.popen(server.command(), stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, cwd=server.directory)
        try:
            tests_dir = os.path.dirname(os.path.abspath(__file__))
            done = ns.run([sys.executable, "-c", WAIT_STUN, tests_dir, str(port), *addresses],
                          check=False, timeout=20)
            if done.returncode != 0:
                raise NetnsError(f"coturn did not answer in {ns.name}:\n{server.read_log()}")
            yield server
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Terminate a process, kill it after a grace period. A killed process may still take a
    while to go: on a machine busy with namespaces its exit can wait in the kernel for seconds
    (seen: state D in synchronize_rcu_expedited)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60.0)


@dataclasses.dataclass
class PortMappingRouter:
    """A NAT router of nat_topology running miniupnpd: NAT-PMP (and UPnP-IGD if asked) on its
    LAN side, mappings as DNAT rules in its own nftables table."""

    router: Namespace
    log_path: str
    proc: subprocess.Popen

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def mappings(self) -> list[tuple[str, int, str, int]]:
        """The live port mappings: (protocol, external port, internal ip, internal port).
        `nft` is given a minute: while the kernel is still tearing down earlier namespaces it
        has been seen to wait more than 15 s (state D, like the process exits in _stop)."""
        out = self.router.run(["nft", "list", "chain", "inet", MINIUPNPD_TABLE,
                               "prerouting_miniupnpd"], timeout=60.0).stdout
        found = []
        for line in out.splitlines():
            # e.g. iif "wan" @nh,72,8 0x11 th dport 40000 dnat ip to 203.0.113.10:40000
            match = re.search(r"@nh,72,8 (0x[0-9a-f]+) th dport (\d+) dnat ip to ([\d.]+):(\d+)",
                              line)
            if match:
                proto = {6: "tcp", 17: "udp"}.get(int(match.group(1), 16), match.group(1))
                found.append((proto, int(match.group(2)), match.group(3), int(match.group(4))))
        return found


def _lan_cidr(router: Namespace) -> str:
    """The router's LAN prefix (e.g. 203.0.113.0/25), from the address on its `lan` veth."""
    out = router.ip("-4", "-o", "addr", "show", "dev", "lan")
    return str(ipaddress.ip_interface(out.split()[3]).network)


@contextlib.contextmanager
def natpmp_router(router: Namespace, stun: tuple[str, str, int], directory: str,
                  upnp: bool = False, refuse: bool = False,
                  timeout: float = 15.0) -> Iterator[PortMappingRouter]:
    """Run miniupnpd on a nat_topology router (`left_router`/`right_router`) so that hosts on
    its LAN can map ports by NAT-PMP. `stun` is (address, second address, port) of a coturn
    in the internet namespace (`stun_server` on `public` with both public addresses).
    `refuse`: the router answers every mapping request with "not authorized".

    The router also lets the STUN server's answers in (miniupnpd's change-request test) and
    forwards what its DNAT rules send to the LAN (the FORWARD chain drops the rest from `wan`).
    Everything added is removed on exit."""
    stun_a, stun_b, stun_port = stun
    os.makedirs(directory, exist_ok=True)
    conf = os.path.join(directory, f"miniupnpd-{router.role}.conf")
    nft = os.path.join(directory, f"miniupnpd-{router.role}.nft")
    log_path = os.path.join(directory, f"miniupnpd-{router.role}.log")
    with open(conf, "w") as handle:
        handle.write(_MINIUPNPD_CONF.format(upnp="yes" if upnp else "no", stun_host=stun_a,
                                            stun_port=stun_port, table=MINIUPNPD_TABLE,
                                            allow="" if refuse else
                                            f"allow 1024-65535 {_lan_cidr(router)} 1024-65535\n"))
    with open(nft, "w") as handle:
        handle.write(_MINIUPNPD_NFT.format(table=MINIUPNPD_TABLE))
    rules = [("INPUT", "-i", "wan", "-p", "udp", "-s", f"{stun_a},{stun_b}",
              "--sport", f"{stun_port}:{stun_port + 1}", "-j", "ACCEPT"),
             ("FORWARD", "-i", "wan", "-o", "lan", "-m", "conntrack", "--ctstate", "DNAT",
              "-j", "ACCEPT")]
    added: list[tuple[str, ...]] = []
    proc = None
    router.run(["nft", "-f", nft])
    try:
        for chain, *rule in rules:
            router.iptables("-I", chain, "1", *rule)
            added.append((chain, *rule))
        with open(log_path, "wb") as log:
            proc = router.popen(["miniupnpd", "-d", "-f", conf,
                                 "-P", os.path.join(directory, f"miniupnpd-{router.role}.pid")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        mapper = PortMappingRouter(router=router, log_path=log_path, proc=proc)

        def ready() -> bool:
            text = mapper.log()
            if _MINIUPNPD_DISABLED in text or proc.poll() is not None:
                raise NetnsError(f"miniupnpd will not map ports in {router.name}:\n{text}")
            return _MINIUPNPD_READY in text

        wait_for(ready, timeout, "miniupnpd to listen for NAT-PMP")
        yield mapper
    finally:
        if proc is not None:  # its rules go with the table below: no need to wait for it
            _stop(proc, grace=0.5)
        for chain, *rule in added:
            with contextlib.suppress(NetnsError):
                router.iptables("-D", chain, *rule)
        with contextlib.suppress(subprocess.SubprocessError):
            router.run(["nft", "delete", "table", "inet", MINIUPNPD_TABLE], check=False)


# -- a daemon inside a namespace ----------------------------------------------------------------
from daemon import Daemon  # noqa: E402  (tests/daemon.py)


class NsDaemon(Daemon):
    """A chatp2pd (tests/daemon.py Daemon) inside a network namespace. Its API listens on that
    namespace's loopback, so `request` runs chatp2pctl there; its ipc:// event socket is a
    file, reachable from here (tests/events.py Events works as for any Daemon)."""

    def __init__(self, ns: Namespace, tmpdir: str, *extra_args: str) -> None:
        super().__init__(tmpdir, *extra_args)
        self.ns = ns

    def command(self, data_dir, *extra_args):  # type: ignore[override]
        return ["ip", "netns", "exec", self.ns.name, *super().command(data_dir, *extra_args)]

    def request(self, command: str, action: str | None = None, data: Any = None) -> dict:
        body = json.dumps({"command": command, "action": action, "data": data})
        done = self.ns.run([sys.executable, "-c", "import chatp2p, sys; sys.exit(chatp2p.main_ctl())",
                            "--data-dir", self.data_dir, "--json", "raw", body], check=False, timeout=60)
        assert done.stdout, f"chatp2pctl failed: {done.stderr}"
        return json.loads(done.stdout)


# -- two daemons on a veth pair (path MTU, offloads, loss) --------------------------------------
PAIR_A_IP, PAIR_B_IP = f"{LAN_NET}.201", f"{LAN_NET}.202"


def set_udp_segmentation(ns: Namespace, dev: str, on: bool) -> None:
    """`ethtool -K DEV tx-udp-segmentation on|off` inside `ns`. Off, the kernel segments a GSO
    super-packet in software before the veth, so the peer sees every datagram (a NIC without
    UDP segmentation offload); on (the default), the super-packet crosses whole."""
    ethtool = shutil.which("ethtool") or shutil.which("ethtool", path="/usr/sbin:/sbin")
    if ethtool is None:
        raise NetnsError("ethtool is not installed (Debian ethtool)")
    ns.run([ethtool, "-K", dev, "tx-udp-segmentation", "on" if on else "off"])


@contextlib.contextmanager
def veth_pair(mtu: int = 1500, udp_segmentation: bool = True) -> Iterator[tuple[Namespace, Namespace]]:
    """Two namespaces joined by one veth pair (`eth0`, PAIR_A_IP and PAIR_B_IP /24) with the
    given MTU; `udp_segmentation=False` turns the UDP segmentation offload off on both ends."""
    with _building() as built:
        ns_a, ns_b = Namespace("paira"), Namespace("pairb")
        built += [ns_a, ns_b]
        _wire(ns_a, "eth0", ns_b, "eth0")
        for ns, address in ((ns_a, PAIR_A_IP), (ns_b, PAIR_B_IP)):
            ns.ip("link", "set", "eth0", "mtu", str(mtu))
            ns.add_address("eth0", f"{address}/24")
            if not udp_segmentation:
                set_udp_segmentation(ns, "eth0", False)
        yield ns_a, ns_b


def start_ns_pair(ns_a: Namespace, ns_b: Namespace, root: str, args_a: Sequence[str] = (),
                  args_b: Sequence[str] = ()) -> tuple["NsDaemon", "NsDaemon", Any, Any]:
    """A chatp2pd in each namespace of a `veth_pair`, contacts of each other ("Bob" is B) and
    connected; returns (a, b, events of a, events of b). Stop them with close_pair."""
    from events import Events  # tests/events.py

    args = ("--keepalive-interval", "1", "--p2p-host", "0.0.0.0")
    a = NsDaemon(ns_a, os.path.join(root, "pair-a"), *args, "--downloads-dir",
                 os.path.join(root, "pair-a", "dl"), *args_a)
    b = NsDaemon(ns_b, os.path.join(root, "pair-b"), *args, "--downloads-dir",
                 os.path.join(root, "pair-b", "dl"), *args_b)
    ev_a = ev_b = None
    try:
        a.start()
        b.start()
        sa, sb = a.request("status")["data"], b.request("status")["data"]
        for daemon, name, other in ((a, "Bob", sb), (b, "Alice", sa)):
            reply = daemon.request("contacts", "add", {"peer": name, "public_key": other["identity"]["public_key"]})
            assert reply["success"], reply
        ev_a, ev_b = Events(a), Events(b)
        address = f"{PAIR_B_IP}:{sb['p2p']['port']}"
        for reply in (a.request("p2p", "connect", {"peer": "Bob", "address": address}),
                      a.request("contacts", "negotiate_keys", {"peer": "Bob", "timeout": 30})):
            assert reply["success"], reply
    except BaseException:
        for collector in (ev_a, ev_b):
            if collector is not None:
                collector.close()
        for daemon in (a, b):
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()
        raise
    return a, b, ev_a, ev_b
