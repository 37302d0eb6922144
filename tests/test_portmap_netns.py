"""Port mapping through a real NAT router (lib/net/portmap.py, tests/netns.py natpmp_router).

Topology: tests/netns.py `nat_topology`; the left router runs miniupnpd (NAT-PMP, and UPnP-IGD
for the UPnP case), whose STUN check asks a coturn on both public addresses. A process in the
left host owns a libtorrent session and a PortMapper for its own UDP socket; datagrams sent from
the public namespace to the mapped address must reach that socket, and stop reaching it once the
mapping is deleted. Routers that refuse or offer nothing leave the mapper "unavailable".
The libtorrent session names no public host: DHT, LSD off, no bootstrap nodes; all of it runs
in namespaces with documentation-prefix addresses that route nowhere else.
"""
from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading

import pytest

from netns import (
    MINIUPNPD_TABLE,
    miniupnpd_available,
    nat_topology,
    natpmp_router,
    netns_available,
    stun_server,
)
from poll import wait_for

# A libtorrent session and a PortMapper for a UDP socket of this namespace. Prints one JSON
# line per event: {"port"}, {"settings"}, {"status"} on every change, {"change"} from
# on_change, {"got"} per datagram, {"bye"} once the session is deleted at the end of stdin;
# reads "stop" (delete the mapping), "listen ADDRESS:PORT" (new listen_interfaces) and "remap"
# from stdin.
MAPPER = r"""
import json, select, socket, sys
import libtorrent as lt
from chatp2p_core.net.portmap import PortMapper

host, deadline, protocols = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(",")

def emit(**item):
    sys.stdout.write(json.dumps(item) + "\n")
    sys.stdout.flush()

category = lt.alert.category_t
session = lt.session({
    "enable_dht": False, "enable_lsd": False, "dht_bootstrap_nodes": "",
    "enable_upnp": "upnp" in protocols, "enable_natpmp": "natpmp" in protocols,
    "listen_interfaces": f"{host}:0",
    "alert_mask": category.port_mapping_notification | category.port_mapping_log_notification
                  | category.status_notification | category.error_notification,
})
names = ("enable_dht", "enable_lsd", "dht_bootstrap_nodes", "listen_interfaces",
         "enable_upnp", "enable_natpmp")
emit(settings={name: session.get_settings()[name] for name in names})
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((host, 0))
mapper = PortMapper(session, sock.getsockname()[1], deadline=deadline,
                    on_change=lambda mapped: emit(change=mapped))
emit(port=sock.getsockname()[1])
mapper.start()
last = None
while True:
    for alert in session.pop_alerts():
        mapper.on_alert(alert)
    if mapper.status() != last:
        last = mapper.status()
        emit(status=last)
    ready, _, _ = select.select([sys.stdin, sock], [], [], 0.05)
    if sock in ready:
        emit(got=sock.recv(2048).decode())
    if sys.stdin in ready:
        line = sys.stdin.readline()
        if not line:
            break
        command, _, argument = line.strip().partition(" ")
        if command == "stop":
            mapper.stop()
        elif command == "listen":  # the session replaces its listen socket
            session.apply_settings({"listen_interfaces": argument})
        elif command == "remap":
            mapper.remap()

del mapper, session
emit(bye=True)
"""

# One datagram from a fresh socket (so no earlier conntrack entry carries it).
SEND = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"""


def require(miniupnpd: bool = True) -> None:
    ok, reason = netns_available(iptables=True)
    if ok and miniupnpd:
        ok, reason = miniupnpd_available()
    if not ok:
        pytest.skip(reason)


class Mapper:
    """The MAPPER process in a namespace; its JSON lines collected by a thread."""

    def __init__(self, ns, host_ip: str, deadline: float, protocols: str = "natpmp,upnp") -> None:
        self.proc = ns.python(MAPPER, host_ip, str(deadline), protocols, stderr=subprocess.PIPE)
        self.items: list[dict] = []
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for line in self.proc.stdout:
            self.items.append(json.loads(line))

    def seen(self, key: str) -> list:
        return [item[key] for item in list(self.items) if key in item]

    def last(self, key: str):
        values = self.seen(key)
        return values[-1] if values else None

    def wait(self, key: str, predicate=lambda value: True, timeout: float = 15.0, what: str = ""):
        def found():
            if self.proc.poll() is not None:
                raise AssertionError(f"mapper exited {self.proc.returncode}: {self.proc.stderr.read()}")
            return next((v for v in self.seen(key) if predicate(v)), None)
        return wait_for(found, timeout, what or key)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """End of stdin: the process deletes its session and exits; it must not have died.
        The exit itself is given a minute: on a machine busy building and deleting namespaces,
        a process's exit now and then waits seconds to minutes in the kernel (seen: state D in
        synchronize_rcu_expedited, every thread and file already gone)."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
        wait_for(lambda: self.seen("bye") or self.proc.poll() is not None, 15, "the mapper's end")
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail("the mapper has not exited 60 s after deleting its session")
        assert self.proc.returncode == 0, self.proc.stderr.read()
        wait_for(lambda: self.seen("bye"), 5, "the mapper's last line")


def check_private_settings(settings: dict, host_ip: str) -> None:
    """The session in the test contacts no public host."""
    assert settings["enable_dht"] is False and settings["enable_lsd"] is False
    assert settings["dht_bootstrap_nodes"] == ""
    assert settings["listen_interfaces"] == f"{host_ip}:0"


def input_drops(router) -> int:
    """Packets the router dropped as unsolicited inbound (its INPUT `-i wan ... NEW` rule)."""
    out = router.iptables("-L", "INPUT", "-v", "-x", "-n")
    return sum(int(line.split()[0]) for line in out.splitlines()
               if "DROP" in line and "wan" in line and "NEW" in line)


@contextlib.contextmanager
def mapping_world(tmp_path, **router_options):
    """nat_topology (the right host behind a random NAT), coturn on both public addresses,
    miniupnpd on the left router."""
    with nat_topology("cone", "random") as net, \
            stun_server(net.public, (net.public_ip, net.public_ip2), str(tmp_path)) as stun, \
            natpmp_router(net.left_router, (net.public_ip, net.public_ip2, stun.port),
                          str(tmp_path), **router_options) as router:
        yield net, router


# (the protocol that must map, the router offers UPnP-IGD too, what the session tries)
PROTOCOLS = [("natpmp", False, "natpmp,upnp"), ("upnp", True, "upnp")]


@pytest.mark.parametrize("protocol, router_upnp, session_protocols", PROTOCOLS, ids=["natpmp", "upnp"])
def test_the_router_maps_the_port_and_the_internet_reaches_it(tmp_path, protocol, router_upnp,
                                                              session_protocols):
    require()
    with mapping_world(tmp_path, upnp=router_upnp) as (net, router):
        mapper = Mapper(net.left_host, net.left_host_ip, deadline=15, protocols=session_protocols)
        try:
            check_private_settings(mapper.wait("settings"), net.left_host_ip)
            port = mapper.wait("port")
            status = mapper.wait("status", lambda s: s["state"] == "mapped", what="mapped")
            assert status == {"state": "mapped", "protocol": protocol, "error": None,
                              "external": f"{net.left_wan_ip}:{port}"}
            assert mapper.seen("change") == [[net.left_wan_ip, port]]
            assert ("udp", port, net.left_host_ip, port) in router.mappings()

            def arrives(sender, text):
                sender.run([sys.executable, "-c", SEND, net.left_wan_ip, str(port), text])
                return text in mapper.seen("got")
            wait_for(lambda: arrives(net.public, "from the internet"), 10, "a datagram through the NAT")
            # a peer behind a random NAT (no hole punching possible) reaches it too
            wait_for(lambda: arrives(net.right_host, "from behind a NAT"), 10, "a datagram via two NATs")

            mapper.send("stop")
            mapper.wait("status", lambda s: s["state"] == "off", what="off")
            assert mapper.last("change") is None
            wait_for(lambda: not [m for m in router.mappings() if m[1] == port], 10,
                     "the router to delete the mapping")
            before = input_drops(net.left_router)
            net.public.run([sys.executable, "-c", SEND, net.left_wan_ip, str(port), "too late"])
            wait_for(lambda: input_drops(net.left_router) > before, 10, "the router to drop it")
            assert "too late" not in mapper.seen("got")
        finally:
            mapper.close()
    assert "Failed to add" not in router.log()


def test_a_router_without_natpmp_leaves_the_mapper_unavailable_and_running(tmp_path):
    require(miniupnpd=False)
    with nat_topology("cone", "cone") as net:
        mapper = Mapper(net.left_host, net.left_host_ip, deadline=2)
        try:
            check_private_settings(mapper.wait("settings"), net.left_host_ip)
            status = mapper.wait("status", lambda s: s["state"] == "unavailable", what="unavailable")
            assert status["protocol"] is None and status["external"] is None
            assert "no mapping from the router within 2 s" in status["error"]
            assert mapper.seen("change") == []
            mapper.send("stop")
            mapper.wait("status", lambda s: s["state"] == "off", what="off")
        finally:
            mapper.close()
        assert net.left_router.run(["nft", "list", "tables"]).stdout.count(MINIUPNPD_TABLE) == 0


def test_remap_maps_again_after_the_session_replaced_its_listen_socket(tmp_path):
    require()
    with mapping_world(tmp_path) as (net, router):
        mapper = Mapper(net.left_host, net.left_host_ip, deadline=15, protocols="natpmp")
        try:
            port = mapper.wait("port")
            mapper.wait("status", lambda s: s["state"] == "mapped", what="mapped")
            ours = ("udp", port, net.left_host_ip, port)
            assert ours in router.mappings()
            mapper.send(f"listen {net.left_host_ip}:6881")
            # libtorrent drops the mapping with the old socket, and says nothing
            wait_for(lambda: ("udp", 6881, net.left_host_ip, 6881) in router.mappings(), 10,
                     "libtorrent to map its new listen port")
            wait_for(lambda: ours not in router.mappings(), 10, "our mapping to go with the old socket")
            changes = len(mapper.seen("change"))
            mapper.send("remap")
            wait_for(lambda: ours in router.mappings(), 10, "the mapping again")
            mapper.wait("status", lambda s: s["state"] == "mapped", what="mapped again")
            wait_for(lambda: len(mapper.seen("change")) >= changes + 2, 10, "two changes")
            assert mapper.seen("change")[changes:] == [None, [net.left_wan_ip, port]]

            def arrives():
                net.public.run([sys.executable, "-c", SEND, net.left_wan_ip, str(port), "again"])
                return "again" in mapper.seen("got")
            wait_for(arrives, 10, "a datagram through the new mapping")
        finally:
            mapper.close()


# (the protocol refused, the router offers UPnP-IGD too, what the session tries, its deadline)
REFUSALS = [("natpmp", False, "natpmp,upnp", 3), ("upnp", True, "upnp", 60)]


@pytest.mark.parametrize("protocol, router_upnp, session_protocols, deadline", REFUSALS,
                         ids=["natpmp", "upnp"])
def test_a_router_that_refuses_leaves_the_mapper_unavailable_with_its_reason(
        tmp_path, protocol, router_upnp, session_protocols, deadline):
    require()
    with mapping_world(tmp_path, upnp=router_upnp, refuse=True) as (net, router):
        mapper = Mapper(net.left_host, net.left_host_ip, deadline=deadline,
                        protocols=session_protocols)
        try:
            mapper.wait("port")
            status = mapper.wait("status", lambda s: s["state"] == "unavailable", what="unavailable")
            assert status["protocol"] is None and status["external"] is None
            if protocol == "natpmp":  # libtorrent takes miniupnpd's PCP refusal for silence
                assert "no mapping from the router within 3 s" in status["error"]
            else:  # the UPnP error answer decides, long before the deadline
                assert status["error"].startswith("upnp: ") and "606" in status["error"], status
            assert mapper.seen("change") == [] and router.mappings() == []
            assert "port mapping rejected" in router.log()
        finally:
            mapper.close()
