"""The node's Mainline DHT client: one libtorrent session, driven from gevent.

libtorrent runs its own threads and its own UDP socket (not the P2P socket: DHT traffic and
chat traffic never share a port). Nothing here blocks the gevent hub: libtorrent writes a
byte to a pipe when alerts arrive (`set_alert_fd`), a greenlet waits on that pipe, pops the
alerts and completes the waiting puts and gets. `wait_for_alert` is never called.

libtorrent's defaults reach the public internet (a bootstrap router, local service discovery,
UPnP and NAT-PMP): `session_settings` sets every one of them explicitly, from `DhtSettings`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import time
from typing import Callable, Iterable, Optional

import gevent
import gevent.event
from gevent import socket as gsocket

from ..errors import Internal
from ..util import Address

log = logging.getLogger("chatp2p.dht")

REFILL_FAST = 2.0           # seconds between re-adding the bootstrap nodes while the table is small
REFILL_SLOW = 60.0          # ... once the first minute has passed without filling it
REFILL_FAST_FOR = 60.0
WANTED_NODES = 8            # a routing table smaller than this is refilled from the bootstrap list
STATS_INTERVAL = 2.0        # seconds between session-stats snapshots (node count, traffic)
OPERATION_TIMEOUT = 60.0    # a put or get that libtorrent never finishes is given up
# A get ends when its traversal does, which waits out every node that never answers (15 s
# each: nodes behind NATs are common). A value found early is taken after this grace, in which
# a fresher copy from another node may still arrive.
FIRST_VALUE_GRACE = 1.5
# ... and while none is found, the lookup starts over this often: a fresh traversal asks the
# nodes that answer now instead of waiting for the ones that never will.
GET_REISSUE = 5.0
MAX_PENDING = 256           # puts and gets in flight at once
BLOCKED = 1                 # libtorrent ip_filter.blocked
PUBLIC_BOOTSTRAP = ("router.bittorrent.com:6881", "dht.transmissionbt.com:6881",
                    "router.utorrent.com:6881", "dht.libtorrent.org:25401")

AlertListener = Callable[[object], bool]
# The session settings that decide which hosts it may contact: read back after start and
# shown in `status` (a test checks them).
REACH_SETTINGS = ("listen_interfaces", "dht_bootstrap_nodes", "dht_read_only", "enable_lsd", "enable_upnp", "enable_natpmp",
                  "enable_incoming_tcp", "enable_outgoing_tcp", "dht_restrict_routing_ips",
                  "dht_restrict_search_ips", "dht_ignore_dark_internet", "dht_enforce_node_id")


class DhtUnavailable(Internal):
    """libtorrent is not installed, or its session could not start."""


@dataclasses.dataclass(frozen=True)
class DhtSettings:
    """What the session may do. `private_swarm`: the bootstrap nodes are a swarm of our own
    (tests, a closed network), added as plain nodes and re-added while the routing table is
    small, with the rules that keep a public DHT node from trusting odd addresses relaxed."""

    listen: tuple[str, ...] = ("0.0.0.0:0", "[::]:0")
    bootstrap: tuple[str, ...] = PUBLIC_BOOTSTRAP
    port_mapping: bool = False
    private_swarm: bool = False
    # BEP 43 read-only: the node asks but never answers. Off by default: libtorrent's puts from a
    # read-only node reported (and their values became readable) only after a 15 s timeout,
    # which delayed every publication; a serving node behind a NAT costs other DHT nodes a
    # timeout now and then, as most home nodes of the Mainline DHT do.
    read_only: bool = False


def session_settings(settings: DhtSettings) -> dict:
    """libtorrent settings with every setting that could contact a host set explicitly."""
    import libtorrent as lt

    category = lt.alert.category_t
    mask = category.dht_notification | category.dht_operation_notification | category.error_notification \
        | category.status_notification | category.port_mapping_notification
    relaxed = settings.private_swarm
    return {
        "listen_interfaces": ",".join(settings.listen),
        "enable_dht": True,
        "dht_read_only": settings.read_only,
        # Bootstrap nodes are "routers" to libtorrent, which never enters a router in a routing
        # table: a private swarm has no routers, its nodes are added as nodes (`Dht._refill`).
        "dht_bootstrap_nodes": "" if relaxed else ",".join(settings.bootstrap),
        "enable_lsd": False,                  # local service discovery: multicast on every LAN
        "enable_upnp": settings.port_mapping,
        "enable_natpmp": settings.port_mapping,
        "enable_incoming_tcp": False, "enable_outgoing_tcp": False,   # no torrents: no peers
        "enable_incoming_utp": False, "enable_outgoing_utp": False,
        "anonymous_mode": True,
        "dht_restrict_routing_ips": not relaxed,
        # One node per /24 (/64) joins a traversal from the answers, also in a private swarm
        # (whose nodes, all in one /24, join from our routing table, where the rule does not
        # apply). Off, a traversal that met a node's stale ID at the node's address (a fresh
        # node draws a new ID once it learns its address, BEP 42) asked that node ~50 times in
        # a few milliseconds, until its DoS guard banned us for 5 minutes, and it let NATed
        # chat nodes, which other chat nodes cannot reach, into every traversal of a small
        # swarm: both made puts and gets wait out libtorrent's 15 s timeout.
        "dht_restrict_search_ips": True,
        "dht_ignore_dark_internet": not relaxed,
        "dht_enforce_node_id": False if relaxed else True,
        # The IP filter keeps our own external address out of traversals (`Dht._exclude_self`).
        "apply_filter_to_dht": True,
        "alert_mask": mask,
    }


def own_address_filter(addresses: Iterable[str]) -> object:
    """A libtorrent IP filter that blocks exactly `addresses` (our external ones)."""
    import libtorrent as lt

    rules = lt.ip_filter()
    for address in addresses:
        rules.add_rule(address, address, BLOCKED)
    return rules


@dataclasses.dataclass
class _Pending:
    result: gevent.event.AsyncResult
    started: float
    best: Optional[tuple[int, bytes]] = None     # (BEP 44 seq, value) of the freshest answer so far
    first_value_at: Optional[float] = None
    issued_at: float = 0.0                        # when libtorrent was last asked (gets)


class Dht:
    """`start()`, then `put`/`get` from any greenlet; `stop()` ends the session."""

    def __init__(self, settings: DhtSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.session = None
        self.listeners: list[AlertListener] = []     # e.g. the port mapper: sees every alert first
        self.nodes = 0
        self.traffic = {"bytes_in": 0, "bytes_out": 0}
        self.error: Optional[str] = None
        self.applied: dict = {}      # REACH_SETTINGS as the running session has them
        self.started_at = 0.0
        self._gets: dict[tuple[bytes, bytes], _Pending] = {}
        self._puts: dict[tuple[bytes, bytes], _Pending] = {}
        self._pipe: Optional[tuple[int, int]] = None
        self._pump: Optional[gevent.Greenlet] = None
        self._last_refill = -1e9
        self._last_stats = -1e9
        self.own_addresses: dict[int, str] = {}     # address family -> our external address

    @property
    def running(self) -> bool:
        return self.session is not None

    @property
    def in_flight(self) -> int:
        return len(self._gets) + len(self._puts)

    def start(self) -> None:
        try:
            import libtorrent as lt
        except ImportError as exc:
            self.error = f"libtorrent is not installed: {exc}"
            raise DhtUnavailable(self.error) from None
        try:
            session = lt.session(session_settings(self.settings))
        except RuntimeError as exc:
            self.error = f"the DHT session did not start: {exc}"
            raise DhtUnavailable(self.error) from None
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        session.set_alert_fd(write_fd)
        actual = session.get_settings()
        self.applied = {name: actual.get(name) for name in REACH_SETTINGS}
        self.session, self._pipe = session, (read_fd, write_fd)
        self.started_at = self.clock()
        self._pump = gevent.spawn(self._pump_loop, read_fd)

    def stop(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.kill(block=pump is not gevent.getcurrent())
        session, self.session = self.session, None
        if session is not None:
            session.set_alert_fd(-1)
            del session   # libtorrent stops its threads when the last reference goes
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        for pending in list(self._gets.values()) + list(self._puts.values()):
            pending.result.set(None)
        self._gets.clear()
        self._puts.clear()

    # -- operations -------------------------------------------------------------------------
    def put(self, public_key: bytes, secret: bytes, salt: bytes, value: bytes) -> gevent.event.AsyncResult:
        """Store `value` under (public_key, salt); the result is how many nodes stored it
        (0: none; None: the DHT stopped or the put timed out)."""
        key = (public_key, salt)
        pending = self._puts.get(key) or self._start(self._puts, key)   # a newer value joins the put in flight
        if pending.result.ready() or self.session is None:
            return pending.result
        self.session.dht_put_mutable_item(secret, public_key, value, salt)
        return pending.result

    def get(self, public_key: bytes, salt: bytes) -> gevent.event.AsyncResult:
        """The freshest value stored under (public_key, salt): bytes, or None when nothing
        is there (or the DHT stopped, or the lookup timed out)."""
        key = (public_key, salt)
        pending = self._gets.get(key)
        if pending is not None:
            return pending.result
        pending = self._start(self._gets, key)
        if pending.result.ready() or self.session is None:
            return pending.result
        pending.issued_at = pending.started
        self.session.dht_get_mutable_item(public_key, salt)
        return pending.result

    def _start(self, table: dict, key: tuple[bytes, bytes]) -> _Pending:
        pending = _Pending(gevent.event.AsyncResult(), self.clock())
        if self.session is None or self.in_flight >= MAX_PENDING:
            pending.result.set(None)
            return pending
        table[key] = pending
        return pending

    def add_node(self, address: Address) -> None:
        if self.session is not None:
            self.session.add_dht_node((address[0], address[1]))

    # -- alerts -----------------------------------------------------------------------------
    def _pump_loop(self, read_fd: int) -> None:
        while self.session is not None:
            try:
                gsocket.wait_read(read_fd, timeout=1.0)
            except gsocket.timeout:
                pass
            try:
                while os.read(read_fd, 4096):
                    pass
            except BlockingIOError:
                pass
            session = self.session
            if session is None:
                return
            for alert in session.pop_alerts():
                try:
                    self._on_alert(alert)
                except Exception:   # one odd alert must not stop the pump
                    log.exception("DHT alert %s", type(alert).__name__)
            try:
                self._housekeeping(self.clock())
            except Exception:       # nor a failed housekeeping pass: the waiting gets need the pump
                log.exception("DHT housekeeping")

    def _on_alert(self, alert: object) -> None:
        import libtorrent as lt

        if isinstance(alert, lt.external_ip_alert):   # before the listeners: the port mapper takes it too
            self._exclude_self(str(alert.external_address))
        for listener in self.listeners:
            if listener(alert):
                return
        if isinstance(alert, lt.dht_mutable_item_alert):
            pending = self._gets.get((bytes(alert.key), bytes(alert.salt)))
            if pending is None:   # settled early (FIRST_VALUE_GRACE), or not ours
                return
            item = bytes(alert.item) if alert.item else b""
            if item and (pending.best is None or alert.seq >= pending.best[0]):
                pending.best = (alert.seq, item)
                if pending.first_value_at is None:
                    pending.first_value_at = self.clock()
            if alert.authoritative:
                del self._gets[(bytes(alert.key), bytes(alert.salt))]
                pending.result.set(pending.best[1] if pending.best else None)
        elif isinstance(alert, lt.dht_put_alert):
            pending = self._puts.pop((bytes(alert.public_key), bytes(alert.salt)), None)
            if pending is not None:
                pending.result.set(int(alert.num_success))
        elif isinstance(alert, lt.session_stats_alert):
            values = alert.values
            self.traffic = {"bytes_in": int(values.get("dht.dht_bytes_in", 0)),
                            "bytes_out": int(values.get("dht.dht_bytes_out", 0))}
        elif isinstance(alert, lt.listen_failed_alert):
            self.error = f"DHT socket: {alert.message()}"
            log.warning("%s", self.error)

    def _exclude_self(self, address: str) -> None:
        """Keep DHT nodes at our own external address out of every traversal (libtorrent's IP
        filter, `apply_filter_to_dht`). Other DHT nodes list us under that address once we have
        talked to them, and libtorrent does not skip its own ID there: behind a NAT that does not
        hairpin, the query to ourselves goes unanswered, and a traversal whose closest nodes
        include us waits out libtorrent's 15 s timeout before it completes, so a put stored
        its value only 15 s late. Any other node at that address is behind the same NAT: we
        could reach it only through the same hairpin."""
        try:
            family = ipaddress.ip_address(address).version
        except ValueError:
            return
        if self.session is None or self.own_addresses.get(family) == address:
            return
        self.own_addresses[family] = address
        self.session.set_ip_filter(own_address_filter(self.own_addresses.values()))
        log.debug("DHT: traversals skip our external address %s", address)

    def _housekeeping(self, now: float) -> None:
        session = self.session
        if session is None:
            return
        if now - self._last_stats >= STATS_INTERVAL:
            self._last_stats = now
            self.nodes = int(session.status().dht_nodes)   # the stats gauge lags: ask the session
            session.post_session_stats()
        for key, pending in list(self._gets.items()):
            settled = pending.first_value_at is not None and now - pending.first_value_at >= FIRST_VALUE_GRACE
            if settled or now - pending.started > OPERATION_TIMEOUT:
                del self._gets[key]
                pending.result.set(pending.best[1] if pending.best else None)
            elif pending.best is None and now - pending.issued_at >= GET_REISSUE:
                pending.issued_at = now
                session.dht_get_mutable_item(key[0], key[1])
        for key, pending in list(self._puts.items()):
            if now - pending.started > OPERATION_TIMEOUT:
                del self._puts[key]
                pending.result.set(None)
        if self.settings.private_swarm and self.nodes < WANTED_NODES:
            interval = REFILL_FAST if now - self.started_at < REFILL_FAST_FOR else REFILL_SLOW
            if now - self._last_refill >= interval:
                self._last_refill = now
                gevent.spawn(self._refill)

    def _refill(self) -> None:
        """Re-add the bootstrap nodes: behind a NAT a node changes its node ID once it learns
        its external address, and the nodes that knew the old one drop it."""
        for text in self.settings.bootstrap:
            host, _, port = text.rpartition(":")
            host = host.strip("[]")
            try:
                infos = gsocket.getaddrinfo(host, int(port), 0, gsocket.SOCK_DGRAM)
            except (OSError, ValueError) as exc:
                log.debug("DHT bootstrap %s: %s", text, exc)
                continue
            for info in infos[:2]:
                self.add_node(info[4][:2])

    # -- views ------------------------------------------------------------------------------
    def status(self) -> dict:
        port = self.session.listen_port() if self.session is not None else None
        return {"running": self.running, "port": port, "nodes": self.nodes, "lookups_in_flight": len(self._gets),
                "puts_in_flight": len(self._puts), "traffic": dict(self.traffic), "settings": dict(self.applied),
                "error": self.error}

