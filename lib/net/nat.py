"""NAT traversal for one node: STUN discovery, rendezvous registration and introductions,
hole punching, and the TURN relay fallback.

This is glue between the pure protocol modules (stun, turn, rendezvous, natinfo) and the
link layer (peers.Network): it owns the STUN/TURN clients on the node's shared socket, the
sessions with the rendezvous servers (service links), and, in rendezvous mode, the server.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import socket
import time
from typing import Callable, Optional

import gevent

from ..errors import Invalid
from ..crypto import identity as ident
from . import natinfo, rendezvous as rv, stun, turn
from ..codec.addresses import GLOBAL, is_ipv6, plain_address, scope_or_none
from ..codec.stun import StunError, parse_server_url
from ..codec import wire
from .hostaddrs import global_ipv6_addresses
from .peers import Link, Network, _fmt
from ..store import Contact, Store
from .transport import UNSPECIFIED_HOSTS, Transport
from ..codec.wire import RawRecord
from ..util import Address

log = logging.getLogger("chatp2p.nat")

SERVICE_RETRY = 5.0          # seconds between attempts to reach a rendezvous server
NAT_TYPE_TIMEOUT = 8.0
STUN_RETRY = 60.0            # seconds before asking STUN servers again when none answered
TURN_CLOSE_TIMEOUT = 1.0     # stopping waits this long at most for the allocation's deletion
ALLOCATE_ATTEMPTS = 5        # rounds over the TURN servers while one answers 437 (mismatch)
MISMATCH_RETRY = 0.5         # seconds between those rounds
INTRO_PENDING = 10.0         # an unanswered introduction request is not repeated for this long
INTRO_SLOTS = 8              # the server's cap on a requester's requests, each held 10 s (PROTOCOL §9.1)
INTRO_SLOT_HOLD = 10.5       # how long we count a sent request against that cap (its 10 s, and latency)
RV_TYPES = range(0x10, 0x18)
MAX_IPV6_HOSTS = 2           # IPv6 host candidates offered (temporary and stable address, say)

Publish = Callable[[str, object], None]


class NatConfigError(Invalid):
    """A STUN/TURN/rendezvous setting is malformed (message names it)."""


@dataclasses.dataclass(frozen=True)
class TurnServer:
    url: str
    username: str
    credential: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class NatSettings:
    stun_urls: tuple[str, ...] = ()
    rendezvous: tuple[str, ...] = ()          # "host:port" or "host:port#ID"
    turn_servers: tuple[TurnServer, ...] = ()
    serve_rendezvous: bool = False


def turn_servers_from(items: list) -> tuple[TurnServer, ...]:
    """WebRTC's shape: [{"url"|"urls": "turn:host:port", "username": ..., "credential": ...}]."""
    servers = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise NatConfigError(f"turn_servers[{i}] must be an object with url, username, credential")
        url = item.get("url") or item.get("urls")
        if isinstance(url, list):
            url = url[0] if url else None
        username, credential = item.get("username"), item.get("credential")
        if not all(isinstance(v, str) and v for v in (url, username, credential)):
            raise NatConfigError(f"turn_servers[{i}] needs url, username and credential (strings)")
        try:
            turn.parse_turn_url(url)
        except turn.TurnError as exc:
            raise NatConfigError(f"turn_servers[{i}]: {exc}") from None
        servers.append(TurnServer(url, username, credential))
    return tuple(servers)


def check_settings(settings: NatSettings) -> None:
    """Refuse malformed URLs before anything is sent (the API turns this into an error)."""
    for url in settings.stun_urls:
        try:
            parse_server_url(url)
        except StunError as exc:
            raise NatConfigError(f"stun_urls: {exc}") from None
    for spec in settings.rendezvous:
        try:
            rv.parse_server(spec)
        except (rv.RendezvousError, ValueError) as exc:
            raise NatConfigError(f"rendezvous: {exc}") from None


def _local_ip_towards(address: Address) -> Optional[str]:
    """Our interface address used to reach `address` (a UDP connect sends nothing)."""
    try:
        probe = socket.socket(socket.AF_INET6 if is_ipv6(address[0]) else socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        probe.connect((address[0], address[1] or 9))
        return plain_address(probe.getsockname())[0]
    except OSError:
        return None
    finally:
        probe.close()


@dataclasses.dataclass
class _Service:
    """One configured rendezvous server and our client state with it."""

    spec: rv.ServerSpec
    address: Optional[Address] = None
    client: Optional[rv.RendezvousClient] = None
    link: Optional[Link] = None
    next_attempt: float = 0.0
    error: Optional[str] = None
    asked: dict = dataclasses.field(default_factory=dict)   # target fingerprint -> when we asked (monotonic)
    sent: collections.deque = dataclasses.field(default_factory=collections.deque)  # when each request went
    waiting: dict = dataclasses.field(default_factory=dict)  # targets to ask when a slot frees (in order)


class NatTraversal:
    """A LinkObserver for service sessions; see the module docstring."""

    wants_service_links = True

    def __init__(self, identity: ident.Identity, store: Store, network: Network, transport: Transport,
                 publish: Publish, settings: NatSettings) -> None:
        self.identity = identity
        self.store = store
        self.network = network
        self.transport = transport
        self.publish = publish
        self.settings = settings
        self.stun = stun.StunClient(transport.send)
        self.turn: Optional[turn.TurnClient] = None
        self.turn_error: Optional[str] = None
        self.server: Optional[rv.RendezvousServer] = rv.RendezvousServer() if settings.serve_rendezvous else None
        self.services = [_Service(rv.parse_server(spec)) for spec in settings.rendezvous]
        self.public_address: Optional[Address] = None   # IPv4, from STUN or a rendezvous
        self.public_address6: Optional[Address] = None  # IPv6, from STUN or a rendezvous
        self.mapping = stun.MAPPING_UNKNOWN if hasattr(stun, "MAPPING_UNKNOWN") else "unknown"
        self.nat_type = "unknown"
        self.nat_detail = "no STUN server configured" if not settings.stun_urls else "discovering"
        self.counters = network.counters
        self._greenlets: list[gevent.Greenlet] = []
        self._last_expire = 0.0
        transport.register("stun", lambda d: wire.classify(d) == wire.Kind.STUN, self._on_stun)
        transport.register("turn", lambda d: wire.classify(d) == wire.Kind.TURN_CHANNEL, self._on_relay_data)
        network.accept_services = settings.serve_rendezvous
        network.observers.append(self)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.stun_urls:
            self._greenlets.append(gevent.spawn(self._discover))
        if self.settings.turn_servers:
            self._greenlets.append(gevent.spawn(self._allocate))

    def stop(self) -> None:
        for service in self.services:
            if service.client is not None and service.link is not None and service.link.connected:
                self.network.send_records(service.link, [service.client.unregister_record(time.time())])
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        if self.turn is not None:
            # Delete the allocation now, while the socket is open and answers still reach the
            # client (through self.turn): else the server keeps it for its whole lifetime and
            # refuses a new one from this address and port (437) after a `p2p start`.
            relay = self.turn
            self.network.relay = None
            with gevent.Timeout(TURN_CLOSE_TIMEOUT, False):
                _quietly(relay.close)
            self.turn = None

    # -- STUN and TURN ----------------------------------------------------------------------
    def _on_stun(self, data: bytes, address: Address) -> None:
        if self.stun.handle(data, address):
            return
        self._on_relay_data(data, address)

    def _on_relay_data(self, data: bytes, address: Address) -> None:
        relay = self.turn
        if relay is None or tuple(address[:2]) != tuple(relay.server):
            self.counters["dropped_stray_stun"] += 1
            return
        relayed = relay.handle(data, address)
        if relayed is not None:
            peer, payload = relayed
            self.network.on_relayed(payload, tuple(peer))

    def _discover(self) -> None:
        """Discover until a STUN server answers: at start, then every STUN_RETRY seconds."""
        while not self._discover_once():
            gevent.sleep(STUN_RETRY)

    def _discover_once(self) -> bool:
        try:
            found = self.stun.discover(list(self.settings.stun_urls), families=self.transport.families)
        except StunError as exc:
            self.nat_detail = f"STUN failed: {exc}"
            log.warning("STUN discovery failed: %s", exc)
            self.publish("nat_detected", self._nat_view())
            return False
        if found.mapped is not None:
            self.public_address = tuple(found.mapped)
        if found.mapped6 is not None:
            self.public_address6 = tuple(found.mapped6)
        self.mapping = found.mapping
        if found.errors and not found.answers and not found.answers6:
            self.nat_detail = "no STUN server answered: " + "; ".join(f"{k}: {v}" for k, v in found.errors.items())
        else:
            first = parse_server_url(next(iter(found.answers))) if found.answers else None
            info = natinfo.classify_nat(first, timeout=NAT_TYPE_TIMEOUT) if first else None
            if info is not None:
                self.nat_type, self.nat_detail = info.nat_type, info.detail
        log.info("NAT: public %s (IPv6 %s), mapping %s, type %s", _fmt(self.public_address),
                 _fmt(self.public_address6), self.mapping, self.nat_type)
        self.publish("nat_detected", self._nat_view())
        return bool(found.answers or found.answers6)

    def _allocate(self) -> None:
        for attempt in range(ALLOCATE_ATTEMPTS):
            mismatch, error = False, None
            for server in self.settings.turn_servers:
                try:
                    address = turn.parse_turn_url(server.url)
                    client = turn.TurnClient(self.transport.send, address, server.username, server.credential,
                                             on_lost=self._relay_lost)
                    self.turn = client  # before allocate(): its answers arrive through _on_relay_data
                    client.allocate()
                except (turn.TurnError, StunError, OSError) as exc:
                    self.turn = None
                    error = str(exc)
                    # 437: our previous allocation from this address and port (a restart on the
                    # same port) is still known to the server, for about a second after its deletion.
                    mismatch = mismatch or getattr(exc, "code", None) == 437
                    log.log(logging.DEBUG if mismatch else logging.WARNING, "TURN %s: %s", server.url, exc)
                    continue
                self.turn_error = None
                self.network.relay = client
                log.info("TURN relay allocated at %s", _fmt(client.relayed))
                return
            if not mismatch or attempt == ALLOCATE_ATTEMPTS - 1:
                self.turn_error = error
                return
            gevent.sleep(MISMATCH_RETRY)

    def _relay_lost(self, reason: str) -> None:
        log.warning("TURN allocation lost: %s", reason)
        self.turn_error = reason
        self.network.relay = None
        self.turn = None
        self._greenlets.append(gevent.spawn_later(SERVICE_RETRY, self._allocate))

    def _permit(self, addresses: list[Address]) -> None:
        relay = self.turn
        if relay is None or relay.relayed is None:
            return
        for ip in {a[0] for a in addresses}:
            try:
                relay.permit((ip, 0))
            except (turn.TurnError, StunError) as exc:
                log.debug("TURN permission for %s failed: %s", ip, exc)

    # -- candidates -------------------------------------------------------------------------
    def candidates(self, towards: Optional[Address] = None) -> list[rv.Candidate]:
        """Our addresses, best first, at most 8: host (the interface address towards
        `towards`, and global IPv6 addresses when the socket has IPv6), server-reflexive,
        relayed."""
        port = self.transport.port
        found: list[rv.Candidate] = []

        def add(kind: rv.CandidateType, address: Optional[Address]) -> None:
            if address and all(c.address != tuple(address) for c in found) and len(found) < rv.MAX_CANDIDATES:
                try:
                    found.append(rv.Candidate(kind, tuple(address)))
                except (rv.RendezvousError, ValueError):
                    pass

        if port:
            for host in self._host_ips(towards):
                add(rv.CandidateType.HOST, (host, port))
        add(rv.CandidateType.SRFLX, self.public_address)
        add(rv.CandidateType.SRFLX, self.public_address6)
        for service in self.services:
            if service.client is not None and service.client.observed:
                add(rv.CandidateType.SRFLX, service.client.observed)
        if self.turn is not None and self.turn.relayed is not None:
            add(rv.CandidateType.RELAY, self.turn.relayed)
        return found

    def _host_ips(self, towards: Optional[Address]) -> list[str]:
        """The IPv4 host address (the one bound, or the interface towards `towards`), then at
        most MAX_IPV6_HOSTS global IPv6 ones (the one the kernel would use towards an IPv6
        `towards` first): an IPv6 address is only worth offering when it is global."""
        host, families = self.transport.host, self.transport.families
        ips: list[str] = []
        if host not in UNSPECIFIED_HOSTS:
            return [host] if not is_ipv6(host) or scope_or_none(host) == GLOBAL else []
        if towards is not None and socket.AF_INET in families and not is_ipv6(towards[0]):
            ips += [ip for ip in [_local_ip_towards(towards)] if ip]
        if socket.AF_INET6 in families:
            v6 = global_ipv6_addresses()
            preferred = _local_ip_towards(towards) if towards is not None and is_ipv6(towards[0]) else None
            if preferred in v6:
                v6.remove(preferred)
                v6.insert(0, preferred)
            ips += v6[:MAX_IPV6_HOSTS]
        return ips

    @staticmethod
    def _punch_list(observed: Address, candidates: tuple) -> list[tuple[Address, str]]:
        paths = {rv.CandidateType.HOST: "direct", rv.CandidateType.SRFLX: "direct",
                 rv.CandidateType.RELAY: "relayed"}
        result = [(tuple(c.address), paths.get(c.kind, "direct")) for c in candidates
                  if c.kind != rv.CandidateType.RELAY]
        result.append((tuple(observed), "direct"))
        result += [(tuple(c.address), "relayed") for c in candidates if c.kind == rv.CandidateType.RELAY]
        unique: dict[Address, str] = {}
        for address, path in result:
            unique.setdefault(address, path)
        return list(unique.items())

    # -- reaching a contact -----------------------------------------------------------------
    def reach(self, contact: Contact) -> int:
        """Ask every registered rendezvous to introduce us to `contact` (now, or as soon as the
        server's limits allow); returns how many will."""
        wall, now = time.time(), time.monotonic()
        asked = 0
        for service in self.services:
            client, link = service.client, service.link
            if client is None or link is None or not link.connected or not client.registered(wall):
                continue
            # One request per contact and server at a time: every queued message and every
            # reconnection pass calls this, and the server holds each request 10 s whatever
            # becomes of it, with at most 8 per requester (more get RATE_LIMITED): the rest wait.
            since = now - service.asked.get(contact.fingerprint, -INTRO_PENDING)
            if 0 <= since < INTRO_PENDING or contact.fingerprint in service.waiting:
                asked += 1
            elif not self._slot_free(service, now):
                service.waiting[contact.fingerprint] = True
                asked += 1
            elif self._request_intro(service, contact, wall, now):
                asked += 1
        return asked

    @staticmethod
    def _slot_free(service: _Service, now: float) -> bool:
        while service.sent and now - service.sent[0] >= INTRO_SLOT_HOLD:
            service.sent.popleft()
        return len(service.sent) < INTRO_SLOTS

    def _request_intro(self, service: _Service, contact: Contact, wall: float, now: float) -> bool:
        assert service.client is not None and service.link is not None
        bundle = ident.Bundle.from_base64(contact.bundle) if contact.bundle else None
        try:
            _, records = service.client.request_intro(contact.fingerprint, bundle,
                                                      self.candidates(service.address), wall)
        except rv.RendezvousError as exc:
            log.debug("no introduction to %s via %s: %s", contact.name, _fmt(service.address), exc)
            return False
        self.network.send_records(service.link, records)
        service.asked[contact.fingerprint] = now
        service.sent.append(now)
        return True

    def _ask_waiting(self, service: _Service, wall: float, now: float) -> None:
        """Requests that waited for a slot, in the order they were asked for."""
        while service.waiting and self._slot_free(service, now):
            fingerprint = next(iter(service.waiting))
            del service.waiting[fingerprint]
            contact = self.store.contacts.find_by_fingerprint(fingerprint)
            link = self.network.links.get(fingerprint)
            if contact is None or contact.blocked or (link is not None and link.connected):
                continue
            self._request_intro(service, contact, wall, now)

    # -- link observer (service sessions only) ----------------------------------------------
    def link_up(self, link: Link) -> None:
        for service in self.services:
            if service.link is link and service.client is not None:
                service.error = None
                self.network.send_records(link, [service.client.register_record(rv.DEFAULT_TTL, time.time())])

    def link_down(self, link: Link) -> None:
        if self.server is not None and self.network.clients.get(link.fingerprint) is link:
            self.server.forget(link.fingerprint)
            self.network.clients.pop(link.fingerprint, None)

    def path_changed(self, link: Link) -> None:
        pass  # a service session keeps its registration wherever it goes

    def records(self, link: Link, records: list) -> None:
        for record in records:
            if not isinstance(record, RawRecord) or record.rtype not in RV_TYPES:
                continue
            if self.server is not None and self.network.clients.get(link.fingerprint) is link:
                self._serve(link, record)
                continue
            for service in self.services:
                if service.link is link and service.client is not None:
                    self._client_output(service, service.client.on_record(record.rtype, record.body, time.time()))

    def _serve(self, link: Link, record: RawRecord) -> None:
        assert self.server is not None and link.address is not None
        deliveries = self.server.on_record(link.fingerprint, link.address, record.rtype, record.body, time.time())
        for delivery in deliveries:
            target = self.network.clients.get(delivery.fingerprint)
            if target is not None and target.connected:
                self.network.send_records(target, [delivery.record])

    def _client_output(self, service: _Service, output: rv.Output) -> None:
        if output.send and service.link is not None:
            self.network.send_records(service.link, list(output.send))
        for event in output.events:
            if isinstance(event, rv.Registered):
                service.error = None if event.ttl else "registration refused (the server is full); retrying"
                if event.ttl and is_ipv6(event.observed[0]) and self.public_address6 is None:
                    self.public_address6 = tuple(event.observed)
                elif event.ttl and not is_ipv6(event.observed[0]) and self.public_address is None:
                    self.public_address = tuple(event.observed)
                log.info("registered with rendezvous %s for %d s (seen as %s)", _fmt(service.address),
                         event.ttl, _fmt(event.observed))
            elif isinstance(event, rv.IntroReceived):
                self._on_intro(service, event)
            elif isinstance(event, rv.IntroAnswered):
                service.asked.pop(event.target, None)
                self._on_answer(event)
            elif isinstance(event, (rv.IntroFailed, rv.IntroTimedOut)):
                service.asked.pop(event.target, None)
                self.counters["intro_unanswered"] += 1
                if isinstance(event, rv.IntroFailed):  # our own input or the server's load, never the target's
                    self.counters[f"intro_failed_{event.code.name.lower()}"] += 1
                    log.info("introduction refused by rendezvous %s: %s", _fmt(service.address), event.code.name)

    def _on_intro(self, service: _Service, event: rv.IntroReceived) -> None:
        """Someone asks for us: answer only a contact, with our candidates, and punch at once."""
        contact = self.store.contacts.find_by_fingerprint(event.requester)
        if contact is None or contact.blocked:
            self.counters["intro_ignored"] += 1
            return  # silence: the requester cannot tell this from our absence
        bundle = ident.Bundle.from_base64(contact.bundle) if contact.bundle else None
        try:
            records = service.client.accept_intro(event, self.candidates(service.address), bundle, time.time())
        except rv.RendezvousError as exc:
            log.debug("cannot accept an introduction: %s", exc)
            return
        self.network.send_records(service.link, records)
        self.punch(contact, self._punch_list(event.requester_observed, event.candidates))

    def _on_answer(self, event: rv.IntroAnswered) -> None:
        contact = self.store.contacts.find_by_fingerprint(event.target)
        if contact is None or contact.blocked:
            return
        self.punch(contact, self._punch_list(event.target_observed, event.candidates))

    def punch(self, contact: Contact, targets: list[tuple[Address, str]]) -> None:
        """Punch towards `targets` ((address, path) pairs from an introduction or a DHT
        record), asking our TURN server to let them in too (a relayed session needs that)."""
        gevent.spawn(self._permit, [a for a, _ in targets])
        self.network.punch(contact, targets)

    def tick(self, now: float) -> None:
        wall = time.time()
        for service in self.services:
            self._tick_service(service, now, wall)
        if self.server is not None and now - self._last_expire >= 1.0:
            self._last_expire = now
            self.server.expire(wall)

    def _tick_service(self, service: _Service, now: float, wall: float) -> None:
        link = service.link
        if link is None or (not link.connected and (link.initiator is None or link.initiator.done)):
            if link is not None and link.failure:  # kept until a session is up: status says why
                service.error = _SERVICE_FAILURES.get(link.failure, f"handshake failed: {link.failure}")
            if now < service.next_attempt:
                return
            service.next_attempt = now + SERVICE_RETRY
            if service.address is None:
                try:
                    service.address = stun.resolve((service.spec.host, service.spec.port), self.transport.families)
                except (StunError, OSError) as exc:
                    service.error = str(exc)
                    return
            if service.client is None:
                service.client = rv.RendezvousClient(self.identity)
            service.link = self.network.connect_service(service.address, service.spec.fingerprint)
            return
        if not link.connected or service.client is None:
            return
        client = service.client
        if client.next_refresh(wall) <= wall:
            self.network.send_records(link, [client.register_record(rv.DEFAULT_TTL, wall)])
        output = client.tick(wall)
        if output.send or output.events:
            self._client_output(service, output)
        if service.waiting and client.registered(wall):
            self._ask_waiting(service, wall, now)

    # -- views ------------------------------------------------------------------------------
    def _nat_view(self) -> dict:
        return {"public_address": _fmt(self.public_address), "public_address6": _fmt(self.public_address6),
                "mapping": self.mapping,
                "nat_type": self.nat_type, "detail": self.nat_detail}

    def status(self) -> dict:
        wall = time.time()
        view = self._nat_view()
        view["rendezvous"] = [{
            "server": _fmt((service.spec.host, service.spec.port)),
            "connected": bool(service.link and service.link.connected),
            "registered": bool(service.client and service.client.registered(wall)),
            "observed": _fmt(service.client.observed) if service.client else None,
            "error": service.error,
        } for service in self.services]
        view["turn"] = {
            "server": self.turn and _fmt(self.turn.server),
            "relayed_address": _fmt(self.turn.relayed) if self.turn and self.turn.relayed else None,
            "state": self.turn.state.value if self.turn else None,
            "error": self.turn_error,
        } if self.settings.turn_servers else None
        if self.server is not None:
            view["serving_rendezvous"] = {"registrations": self.server.registrations,
                                          "clients": len(self.network.clients),
                                          "counters": dict(self.server.counters)}
        return view


_SERVICE_FAILURES = {
    "key_mismatch": "key mismatch: the server is not the identity given after '#' in its address",
    "timeout": "no answer to the handshake (server down or unreachable)",
}


def _quietly(function: Callable[[], object]) -> None:
    try:
        function()
    except Exception as exc:
        log.debug("ignored during shutdown: %s", exc)
