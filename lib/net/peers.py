"""Peer links: drives handshakes and sessions over the node's UDP socket.

This is the I/O layer around the pure protocol modules (wire, handshake, session). It owns,
per peer identity, a `Link`: its state (offline -> connecting -> connected), the address and
path in use, the session, the RTT estimate and the keepalive clock. A single tick greenlet
resends handshake flights, sends keepalives and notices silent peers; everything else happens
when a datagram arrives.

Upper layers (messaging, later files) see only `send_records(link, records)` and the
callbacks of `LinkObserver`.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import secrets
import time
from itertools import repeat
from typing import Callable, Iterable, Optional, Protocol, Sequence, Union

import gevent
import gevent.event

from ..contract import LinkState
from ..crypto import identity as ident
from ..codec import wire
from ..crypto.handshake import (Authenticated, Established, Failed, FailReason, Initiator, InitiatorState,
                                Listener, ListenerConfig, Output, accept_incoming, host_key)
from ..crypto.session import Session, SessionConfig, SessionError
from ..errors import Invalid, Refused
from ..store import Contact, Store, StoreError
from .rtt import RttEstimator
from . import lan
from .candidates import CandidateList
from .transport import Transport
from ..codec.wire import (FILE_RECORD_TYPES, Close, PacketType, PathChallenge, PathResponse, Ping, Pong, RawRecord,
                          Record, WireError)
from ..util import Address

log = logging.getLogger("chatp2p.peers")

TICK = 0.02                   # seconds between timer passes
INITIAL_RTO = 0.25            # handshake/message retransmission before any RTT sample
MIN_RTO = 0.1                 # acknowledgements wait for a database commit: keep spurious resends rare
MAX_RTO = 3.0
HANDSHAKE_TRIES = 8           # flights of one handshake before it is abandoned
MAX_STRANGERS = 32            # sessions with identities that are not contacts
MAX_GROUP_PEERS = 128         # links with members of our groups who are not contacts (PROTOCOL §13.7)
MAX_SERVICE_CLIENTS = 10000   # rendezvous mode: sessions with nodes using this one as a service
RELAY_DELAY = 2.0             # punching: relay candidates join the probes after this long
UPGRADE_PROBE_INTERVAL = 5.0  # relayed sessions look for a direct path this often
DIRECT_HOLD = 10.0            # a direct path heard from this recently is not given up for the relay
MAX_RELAY_PEERS = 1024        # addresses routed through our relay (each needs a TURN permission)
MAX_PENDING_PATHS = 4         # new addresses being validated per session at once
PATH_CHALLENGE_TRIES = 4      # challenges per pending path
PATH_CHALLENGE_INTERVAL = 0.2  # s between challenges (each needs a new frame from the path)
PATH_VALIDATION_TIMEOUT = 10.0  # s: an unanswered pending path starts over
KNOWN_HOST_SECONDS = 30 * 86400  # a contact's host keeps its reserved handshake capacity this long
MAX_MISMATCH_REPORTS = 256    # (address, key) pairs whose key_mismatch was published: each once


@dataclasses.dataclass
class PendingPath:
    """A new address (or route) an authentic frame came from, not yet proven to reach the peer:
    the session moves there only when it echoes our challenge. Until then it is sent no more
    bytes than it sent (the amplification rule of PROTOCOL §1)."""

    token: bytes
    started: float
    received: int = 0          # bytes of authentic frames from it
    sent: int = 0              # bytes of challenges sent to it
    tries: int = 0
    challenged_at: float = -1e9


@dataclasses.dataclass
class Link:
    """Everything about our connection with one peer identity."""

    fingerprint: bytes
    name: str
    contact_id: Optional[int]           # None: a stranger or a group peer (not in contacts)
    state: LinkState = LinkState.OFFLINE
    address: Optional[Address] = None
    path: str = "direct"
    session: Optional[Session] = None
    bundle: Optional[ident.Bundle] = None
    initiator: Optional[Initiator] = None
    initiator_address: Optional[Address] = None
    flight_sent: float = 0.0
    flight_tries: int = 0
    candidates: CandidateList = dataclasses.field(default_factory=CandidateList)  # bounded, ordered
    rtt: RttEstimator = dataclasses.field(default_factory=lambda: RttEstimator(INITIAL_RTO, MIN_RTO, MAX_RTO))
    last_rx: float = 0.0
    last_tx: float = 0.0
    last_ping: float = 0.0
    connected_at: float = 0.0
    last_seen_wall: Optional[float] = None
    established: gevent.event.Event = dataclasses.field(default_factory=gevent.event.Event)
    failure: Optional[str] = None
    service: bool = False                # a rendezvous session (client or server side), not a chat peer
    via_relay: bool = False              # the session's datagrams go through our TURN allocation
    last_direct_rx: float = 0.0          # last frame that came on a direct (not relayed) route
    probes: list = dataclasses.field(default_factory=list)        # addresses the HELLO goes to
    relay_probes: list = dataclasses.field(default_factory=list)  # relay candidates, after RELAY_DELAY
    punch_started: float = 0.0
    last_upgrade_probe: float = 0.0
    pending_paths: dict = dataclasses.field(default_factory=dict)  # (address, relayed) -> PendingPath
    lan_secret: Optional[bytes] = None   # this session's LAN pair secret, stored once the peer is heard
    group_peer: bool = False             # not a contact, a member of a group we are in (PROTOCOL §13.7)
    request_raised: bool = False         # contact_request was published for this session

    _id_text: tuple = dataclasses.field(default=(b"", ""), repr=False, compare=False)

    @property
    def id_text(self) -> str:
        """The peer's ID as text (format_id costs ~0.1 ms), kept until the fingerprint changes."""
        fingerprint, text = self._id_text
        if fingerprint != self.fingerprint:
            text = ident.format_id(self.fingerprint)
            self._id_text = (self.fingerprint, text)
        return text

    @property
    def candidate_paths(self) -> dict:
        """address -> "lan" | "direct" | "relayed" (read only: change through `candidates`)."""
        return self.candidates.paths

    @property
    def is_stranger(self) -> bool:
        return self.contact_id is None and not self.service and not self.group_peer

    @property
    def connected(self) -> bool:
        return self.state == LinkState.CONNECTED and self.session is not None


class GroupPeerDirectory(Protocol):
    """Who may have a session as a group peer: the group service answers from the groups'
    operations (PROTOCOL §13.7)."""

    def group_peer_bundle(self, fingerprint: bytes) -> Optional[bytes]:
        """The encoded bundle of `fingerprint` if it is a member of a group we are in (and not
        a contact), else None."""
        ...


class LinkObserver(Protocol):
    """What the upper layers hear from the link layer. `records` gets the records of a
    session's frames in order: the file protocol's (0x20-0x3F) only if the observer has
    `takes_file_records = True` (the transfers), every other kind only if it has not, so a
    datagram of a file is looked at once."""

    def link_up(self, link: Link) -> None: ...
    def link_down(self, link: Link) -> None: ...
    def records(self, link: Link, records: list[Record]) -> None: ...
    def tick(self, now: float) -> None: ...

    def path_changed(self, link: Link) -> None:
        """The session moved to a new, validated address: what was learnt about the old path
        (its datagram size above all) no longer holds."""
        ...


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    keepalive_interval: float = 15.0
    max_datagram: int = wire.MAX_DATAGRAM
    session: SessionConfig = SessionConfig()


Publish = Callable[[str, object], None]


class Network:
    """All links of one node, and the routing of ChatP2P datagrams to them."""

    def __init__(self, identity: ident.Identity, backend, store: Store, transport: Transport,
                 publish: Publish, config: NetworkConfig = NetworkConfig(), rollover: Optional[bytes] = None,
                 contact_view: Optional[Callable[[Contact], dict]] = None) -> None:
        self.identity = identity
        self.rollover = rollover                         # our own statement, sent in every handshake
        self.contact_view = contact_view                 # the contact events' payload (ContactBook.view)
        self.backend = backend
        self.store = store
        self.transport = transport
        self.publish = publish
        self.config = config
        self.links: dict[bytes, Link] = {}               # by peer fingerprint
        self._by_conn: dict[bytes, Link] = {}            # local conn id of a session -> link
        self._initiators: dict[bytes, Link] = {}         # initiator conn id -> link
        self.services: dict[Address, Link] = {}          # our sessions with rendezvous servers
        self.clients: dict[bytes, Link] = {}             # rendezvous mode: nodes using us, by fingerprint
        self.accept_services = False                     # rendezvous mode: accept any identity as a client
        self.group_peers: Optional[GroupPeerDirectory] = None  # who is accepted as a group peer
        self.relay = None                                # a TurnClient when a relay is allocated
        self.relay_peers: set = set()                    # addresses that reached us through the relay,
                                                         # only while the relay permits them
        self._mismatches_reported: dict[tuple, None] = {}  # (address, key) -> published once
        # Hosts where a contact's session was lately: the handshake limits keep room for them.
        self._known_hosts: dict[str, float] = self._load_known_hosts()
        self.listener = self._make_listener(identity, rollover)
        self.observers: list[LinkObserver] = []
        self.counters = transport.counters
        self._ticker: Optional[gevent.Greenlet] = None
        transport.register("chatp2p", wire.is_chatp2p, self._on_datagram,
                           self._on_datagrams)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._ticker = gevent.spawn(self._tick_loop)

    def stop(self) -> None:
        for link in list(self.links.values()):
            if link.connected:
                self._send(link, [Close(0, "shutting down")])
            self._set_down(link, notify=False)
        if self._ticker is not None:
            self._ticker.kill(block=False)
            self._ticker = None

    def set_identity(self, identity: ident.Identity, rollover: Optional[bytes]) -> None:
        """The node rotated its keys: end every session and handshake, so that the next ones
        (peers reconnect when they need to) present the new key, with `rollover` in each."""
        for link in list(self.links.values()):
            if link.connected:
                self._send(link, [Close(0, "identity changed")])
            self._set_down(link)
        self.identity, self.rollover = identity, rollover
        self.listener = self._make_listener(identity, rollover)

    def _make_listener(self, identity: ident.Identity, rollover: Optional[bytes]) -> Listener:
        return Listener(identity, self.backend, ListenerConfig(max_datagram=self.config.max_datagram),
                        rollover=rollover, is_known_host=self.is_known_host)

    def _load_known_hosts(self) -> dict[str, float]:
        hosts: dict[str, float] = {}
        for contact in self.store.contacts.all():
            if contact.blocked or not contact.last_seen:
                continue
            for text in contact.addresses:
                address = parse_address(text)
                if address is not None:
                    key = host_key(address)
                    hosts[key] = max(hosts.get(key, 0.0), contact.last_seen)
        return hosts

    def is_known_host(self, host: str) -> bool:
        """A contact's session was at this host (IPv4 address, IPv6 /64) in the last 30 days."""
        seen = self._known_hosts.get(host)
        return seen is not None and time.time() - seen < KNOWN_HOST_SECONDS

    def set_group_peers(self, directory: Optional[GroupPeerDirectory]) -> None:
        """Members of our groups who are not contacts are accepted (and reached) as group peers
        while `directory` knows them."""
        self.group_peers = directory

    # -- queries ----------------------------------------------------------------------------
    def link_for_contact(self, contact: Contact) -> Link:
        link = self.links.get(contact.fingerprint)
        if link is None:
            link = Link(contact.fingerprint, contact.name, contact.id)
            if contact.bundle:
                link.bundle = ident.Bundle.from_base64(contact.bundle)
            self.links[contact.fingerprint] = link
        link.name, link.contact_id = contact.name, contact.id
        link.group_peer = False  # a group peer the user added is a contact from now on
        return link

    def rename_link(self, fingerprint: bytes, name: str) -> None:
        """A contact was renamed: its link (if any) shows the new name from now on."""
        link = self.links.get(fingerprint)
        if link is not None:
            link.name = name

    def mark_connecting(self, link: Link) -> None:
        """Introductions were asked for an offline link: it counts as connecting until they
        answer or time out."""
        if link.state == LinkState.OFFLINE:
            link.state = LinkState.CONNECTING

    def found_on_lan(self, contact: Contact, address: Address) -> None:
        """A contact announced itself on the LAN: connect there unless a session is up (a
        session it opened to us from that address now counts as a LAN path)."""
        link = self.link_for_contact(contact)
        now = time.monotonic()
        if link.connected:
            if link.address == address and link.path != "lan":
                link.candidates.set_path(address, "lan", now)
                link.path = "lan"
            return
        if not link.candidates.add(address, "lan", now):
            return  # dropped after repeated identity failures (net/candidates.py)
        self.connect(contact, [address], path="lan")

    def is_online(self, contact_id: int) -> bool:
        return any(l.connected for l in self.links.values() if l.contact_id == contact_id)

    def connected_count(self) -> int:
        return sum(1 for l in self.links.values() if l.connected)

    def group_peer_count(self) -> int:
        """Group peers with a live session."""
        return sum(1 for l in self.links.values() if l.group_peer and l.connected)

    def link_for_fingerprint(self, fingerprint: bytes) -> Optional[Link]:
        """The link with this identity (contact, group peer or stranger), if any."""
        return self.links.get(fingerprint)

    def connected_fingerprints(self) -> set[bytes]:
        """Contacts and group peers with a live session (strangers are not counted)."""
        return {fp for fp, l in self.links.items() if l.connected and (l.contact_id is not None or l.group_peer)}

    @staticmethod
    def remote_address(link: Link) -> Optional[Address]:
        """Where the peer's session is (the address its frames come from), while connected."""
        return link.address if link.connected else None

    def raise_contact_request(self, link: Link) -> None:
        """A group peer wrote to us one to one: like a stranger, it asks to be a contact (once
        per session). A stranger's request is raised when its session begins."""
        if link.contact_id is not None or link.service or link.request_raised or link.bundle is None:
            return
        link.request_raised = True
        self.publish("contact_request", {"fingerprint": link.id_text, "bundle": link.bundle.to_base64(),
                                         "address": _fmt(link.address)})

    def forget(self, fingerprint: bytes) -> None:
        """A contact was removed or blocked: close its session and drop its link."""
        link = self.links.pop(fingerprint, None)
        if link is not None:
            if link.connected:
                self._send(link, [Close(1, "closed")])
            self._set_down(link)

    # -- connecting -------------------------------------------------------------------------
    def connect(self, contact: Contact, addresses: Iterable[Address], path: str = "direct") -> Link:
        """Start a handshake with `contact` at the first of `addresses` (others are tried next)."""
        link = self.link_for_contact(contact)
        if contact.blocked:
            return link
        now = time.monotonic()
        for address in addresses:
            if address:  # a LAN sighting goes after the addresses proven by a session (candidates.py)
                link.candidates.add(address, path, now)
        if link.connected or (link.initiator is not None and not link.initiator.done):
            return link
        head = link.candidates.head()
        if head is not None:
            self._start_handshake(link, head)
        return link

    def punch(self, contact: Contact, candidates: list[tuple[Address, str]]) -> Link:
        """Hole punching: one handshake whose HELLO goes to every candidate at once (relay
        candidates only after RELAY_DELAY); the first address that answers carries it on."""
        link = self.link_for_contact(contact)
        if contact.blocked:
            return link
        return self._punch(link, candidates)

    def connect_group_peer(self, fingerprint: bytes, bundle: bytes, candidates: list[tuple[Address, str]]) -> Link:
        """Punch (like `punch`) to a group peer known by its bundle: the handshake checks it
        presents that identity. A contact is reached as the contact. Invalid if the bundle is
        not this fingerprint's; Refused at MAX_GROUP_PEERS or if it is a blocked contact."""
        try:
            decoded = ident.Bundle.decode(bundle)
        except (ident.IdentityError, ValueError) as exc:
            raise Invalid(f"not a bundle: {exc}") from None
        if decoded.fingerprint() != fingerprint:
            raise Invalid("the bundle is not this member's")
        contact = self.store.contacts.find_by_fingerprint(fingerprint)
        if contact is not None:
            if contact.blocked:
                raise Refused(f"{contact.name} is blocked")
            return self.punch(contact, candidates)
        link = self.links.get(fingerprint)
        if link is None or not link.group_peer:
            if not self._room_for_group_peer():
                self.counters["refused_group_peers_cap"] += 1
                raise Refused(f"too many group peers (at most {MAX_GROUP_PEERS})")
            if link is None:
                link = Link(fingerprint, ident.short_id(fingerprint), None)
                self.links[fingerprint] = link
            link.group_peer = True  # a stranger's link (if any) becomes a group peer's
        link.bundle = decoded
        return self._punch(link, candidates)

    def close_group_peer(self, fingerprint: bytes) -> None:
        """It is no longer a member of a group we are in: end its session (CLOSE 1) and drop
        its link. Nothing for a contact or an unknown identity."""
        link = self.links.get(fingerprint)
        if link is not None and link.group_peer and link.contact_id is None:
            self.forget(fingerprint)

    def _room_for_group_peer(self) -> bool:
        return sum(1 for l in self.links.values() if l.group_peer) < MAX_GROUP_PEERS

    def _is_group_peer(self, fingerprint: bytes) -> bool:
        directory = self.group_peers
        if directory is None:
            return False
        try:
            return directory.group_peer_bundle(fingerprint) is not None
        except Exception:  # the directory's bug must not take the handshake path down
            log.exception("group peer directory failed")
            return False

    def _punch(self, link: Link, candidates: list[tuple[Address, str]]) -> Link:
        if link.connected:
            return link
        direct = [a for a, path in candidates if path != "relayed"]
        relayed = [a for a, path in candidates if path == "relayed"]
        now = time.monotonic()
        for address, path in candidates:
            link.candidates.add(address, path, now, overwrite_path=True)
        if link.initiator is not None and not link.initiator.done:
            if link.initiator.state == InitiatorState.WAIT_COOKIE:
                link.probes.extend(a for a in direct if a not in link.probes)
                link.relay_probes.extend(a for a in relayed if a not in link.relay_probes)
                for address in direct:
                    self._emit(link.initiator.pending, address, self._flight_route(address))
            return link
        targets = direct or relayed
        if not targets:
            return link
        self._start_handshake(link, targets[0], probes=targets, relay_probes=relayed if direct else [])
        return link

    def connect_service(self, address: Address, expected: Optional[bytes]) -> Link:
        """A session with a rendezvous server (its ID checked when `expected` is given)."""
        link = self.services.get(address)
        if link is None:
            link = Link(expected or b"", f"rendezvous {_fmt(address)}", None, service=True)
            self.services[address] = link
        if link.connected or (link.initiator is not None and not link.initiator.done):
            return link
        self._start_handshake(link, address, expected=expected)
        return link

    def _start_handshake(self, link: Link, address: Address, probes: Optional[list] = None,
                         relay_probes: Optional[list] = None, expected: Optional[bytes] = b"") -> None:
        now = time.monotonic()
        if link.initiator is not None:
            self._initiators.pop(link.initiator.conn_id, None)
        # The stored bundle lets the handshake check a rollover statement from this contact's key.
        bundle = link.bundle if link.bundle is not None and link.bundle.fingerprint() == link.fingerprint else None
        expected_fingerprint = link.fingerprint if expected == b"" else expected
        initiator = Initiator(self.identity, self.backend, expected_fingerprint=expected_fingerprint,
                              expected_bundle=bundle, rollover=self.rollover,
                              max_datagram=self.config.max_datagram)
        link.initiator, link.initiator_address = initiator, address
        link.probes = list(probes or [address])
        link.relay_probes = list(relay_probes or [])
        link.punch_started = now
        link.flight_tries, link.flight_sent = 1, now
        link.failure = None
        self._initiators[initiator.conn_id] = link
        if link.state == LinkState.OFFLINE:
            link.state = LinkState.CONNECTING
        flight = initiator.start(now)
        for target in link.probes:
            self._emit(flight, target, self._flight_route(target))

    # -- sending: the one place where sealed frames become datagrams -------------------------
    def _emit(self, datagrams: Sequence[bytes], address: Address, relayed: bool) -> None:
        """Datagrams to `address` by the route the caller owns: through our TURN allocation
        (one ChannelData each) when `relayed`, else from the socket, batched when several.
        A session's route is `Link.via_relay`; nothing here guesses it from the address."""
        relay = self.relay
        if relayed and relay is not None:
            for datagram in datagrams:
                try:
                    relay.send_to(address, datagram)
                    self.counters["relay_sent"] += 1
                except Exception as exc:  # relay lost or no permission: counted, like a lost datagram
                    self.counters["relay_send_errors"] += 1
                    log.debug("relay send to %s failed: %s", address, exc)
            return
        # Not relayed, or the relay went: straight to the address (a cone NAT may let it in).
        if len(datagrams) == 1:
            self.transport.send(datagrams[0], address)
        else:
            self.transport.send_many(datagrams, address)

    def _flight_route(self, address: Address) -> bool:
        """Whether a handshake flight we start goes through our relay: only to an address that
        reached us through it (the peer's NAT lets nothing else in), while the relay permits
        it. The session then keeps the route its answer came by (`_on_initiator`)."""
        if address not in self.relay_peers:
            return False
        if self.relay is None or not self.relay.permits(address):
            self.relay_peers.discard(address)  # the permission expired (or the relay went)
            return False
        return True

    def on_relayed(self, payload: bytes, peer: Address) -> None:
        """A datagram the TURN server relayed to us from `peer` (one it permits: the client
        drops the others)."""
        if len(self.relay_peers) >= MAX_RELAY_PEERS:
            self.relay_peers = {a for a in self.relay_peers if self.relay is not None and self.relay.permits(a)}
        if len(self.relay_peers) < MAX_RELAY_PEERS:
            self.relay_peers.add(peer)
        if wire.classify(payload) == wire.Kind.CHATP2P:
            self._on_datagram(payload, peer, relayed=True)

    def send_records(self, link: Link, records: list[Record], max_datagram: Optional[int] = None,
                     pad: bool = False) -> bool:
        """Seal and send `records` to a connected link; False if it is not connected.

        `max_datagram` above the configured size is only for paths whose MTU the caller probed
        (file transfers); `pad` fills each datagram to that size (the probe itself)."""
        if not link.connected:
            return False
        return self._send(link, records, pad, max_datagram)

    def send_payloads(self, link: Link, payloads: Sequence[bytes]) -> bool:
        """Seal each of `payloads` (records already encoded, each fitting one datagram of the
        size the caller chose: its probed path MTU) in one pass and send them all on the link's
        route; False if it is not connected. The fast path of file DATA and FILE_ACK: no record
        objects, one concatenation per datagram."""
        session, address = link.session, link.address
        if not link.connected or session is None or address is None:
            return False
        now = time.monotonic()
        try:
            datagrams = session.seal_payloads(payloads, now)
        except SessionError as exc:  # frame counter exhausted: a new handshake is needed
            log.warning("cannot seal for %s: %s", link.name, exc)
            self._set_down(link)
            return False
        self._emit(datagrams, address, link.via_relay)
        link.last_tx = now
        return True

    def _send(self, link: Link, records: list[Record], pad: bool = False,
              max_datagram: Optional[int] = None) -> bool:
        assert link.session is not None and link.address is not None
        now = time.monotonic()
        try:
            datagrams = link.session.seal(records, now, max_datagram or self.config.max_datagram, pad=pad)
        except SessionError as exc:
            log.warning("cannot seal for %s: %s", link.name, exc)
            self._set_down(link)
            return False
        self._emit(datagrams, link.address, link.via_relay)
        link.last_tx = now
        return True

    # -- receiving --------------------------------------------------------------------------
    def _on_datagrams(self, datagrams: list[bytes], address: Address) -> None:
        """The datagrams of one GRO buffer (one sender, in order): each run of DATA frames of
        one session is opened in one pass and its records handled together (one decision
        about acknowledgements above, one pass of path checks here); anything else one by one."""
        now = time.monotonic()
        start, count = 0, len(datagrams)
        while start < count:
            first = datagrams[start]
            conn_id = _data_conn_id(first)
            end = start + 1
            if conn_id is None:
                self._on_datagram(first, address)
            else:
                prefix = first[:wire.PREFIX_LEN]  # version, DATA, conn id: the same for the run
                if start == 0 and all(map(bytes.startswith, datagrams, repeat(prefix, count))):
                    end = count  # the usual buffer: all of it one run (each checked in open_many)
                while end < count and datagrams[end][:wire.PREFIX_LEN] == prefix \
                        and len(datagrams[end]) > wire.PREFIX_LEN:
                    end += 1
                self._on_data(datagrams[start:end], conn_id, address, now)
            start = end

    def _on_datagram(self, data: bytes, address: Address, relayed: bool = False) -> None:
        conn_id = _data_conn_id(data)
        if conn_id is not None:
            # Most datagrams (every one of a file) are DATA: routed without parsing objects.
            self._on_data([data], conn_id, address, time.monotonic(), relayed)
            return
        try:
            ptype, conn_id = wire.parse_prefix(data)
        except WireError:
            self.counters["dropped_malformed"] += 1
            return
        now = time.monotonic()
        if ptype == PacketType.DATA:
            self._on_data([data], conn_id, address, now, relayed)
        elif ptype in (PacketType.HELLO, PacketType.INIT, PacketType.AUTH):
            self._on_listener(self.listener.receive(data, address, now), address, now, relayed)
        else:  # COOKIE, RESP, DONE: answers to one of our handshakes
            link = self._initiators.get(conn_id)
            if link is not None and link.initiator is not None and address != link.initiator_address \
                    and link.initiator.state == InitiatorState.WAIT_COOKIE and address in link.probes:
                link.initiator_address = address  # punching: the first candidate to answer wins
            if link is None or link.initiator is None or address != link.initiator_address:
                self.counters["dropped_unexpected_handshake"] += 1
                return
            self._on_initiator(link, link.initiator.receive(data, now), address, now, relayed)

    def _on_data(self, datagrams: Sequence[bytes], conn_id: bytes, address: Address, now: float,
                 relayed: bool = False) -> None:
        """DATA frames for the session `conn_id` names, from one sender, in order."""
        link = self._by_conn.get(conn_id)
        if link is None or link.session is None:
            self.counters["dropped_unknown_session"] += len(datagrams)
            return
        opened = link.session.open_many(datagrams, now)
        for reason in opened.dropped:
            self.counters[f"dropped_{reason.value}"] += 1
        if not opened.frames:
            return
        records = opened.records
        link.last_rx = now
        if link.lan_secret is not None:
            self._store_lan_secret(link)
        path = self._path_of(link, address, relayed)
        if path != "relayed":
            link.last_direct_rx = now
        moving = address != link.address or relayed != link.via_relay
        if moving and path == "relayed" and link.path != "relayed" and now - link.last_direct_rx < DIRECT_HOLD:
            moving = False  # a straggler on the relay while the direct path works: stay direct
        if moving:
            # An authenticated frame from a new address or route: the peer's NAT rebound, it
            # moved, a direct path opened under a relayed session -- or someone on the path
            # replayed a frame from a spoofed source. Challenge the address before moving.
            self._challenge_path(link, address, relayed, opened.size, now)
        upper: list[Record] = []
        files: list[Union[Record, bytes]] = []  # the file protocol's: only for the observer that takes them
        if opened.encoded == len(records):
            files = records  # nothing but file records (a burst of file data): no pass over them
            records = []
        for record in records:
            if type(record) is bytes:  # a file record still encoded: every datagram of a file
                files.append(record)
            elif type(record) is RawRecord and record.rtype in FILE_RECORD_TYPES:
                files.append(record)
            elif isinstance(record, PathChallenge):
                # Echo to where it came from (the same size: no amplification).
                self._send_on_path(link, [PathResponse(record.data)], address, relayed, now)
            elif isinstance(record, PathResponse):
                self._path_answered(link, record.data, address, relayed)
            elif isinstance(record, Ping):
                self._send(link, [Pong(record.timestamp)])
            elif isinstance(record, Pong):
                sent = record.echo / 1e6
                if 0 <= now - sent < 60:
                    link.rtt.sample(now - sent)
            elif isinstance(record, Close):
                log.info("%s closed the session: %s", link.name, record.reason)
                self._set_down(link)
                return
            else:
                upper.append(record)
        if upper or files:
            for observer in self._observers_for(link):
                wanted = files if getattr(observer, "takes_file_records", False) else upper
                if wanted:
                    observer.records(link, wanted)

    # -- path validation (PROTOCOL §5) -----------------------------------------------------
    def _challenge_path(self, link: Link, address: Address, relayed: bool, size: int, now: float) -> None:
        key = (address, relayed)
        pending = link.pending_paths.get(key)
        if pending is not None and now - pending.started > PATH_VALIDATION_TIMEOUT:
            pending = None
        if pending is None:
            if len(link.pending_paths) >= MAX_PENDING_PATHS:
                oldest = min(link.pending_paths, key=lambda k: link.pending_paths[k].started)
                del link.pending_paths[oldest]
            pending = link.pending_paths[key] = PendingPath(secrets.token_bytes(wire.PATH_TOKEN_LEN), now)
            self.counters["path_challenges_started"] += 1
        pending.received += size
        if pending.tries >= PATH_CHALLENGE_TRIES or now - pending.challenged_at < PATH_CHALLENGE_INTERVAL:
            return
        assert link.session is not None
        datagrams = link.session.seal([PathChallenge(pending.token)], now, self.config.max_datagram)
        cost = sum(len(d) for d in datagrams)
        if pending.sent + cost > pending.received:
            return  # not more than it sent us: wait for more frames from it
        pending.sent += cost
        pending.tries += 1
        pending.challenged_at = now
        self._emit(datagrams, address, relayed)

    def _send_on_path(self, link: Link, records: list[Record], address: Address, relayed: bool,
                      now: float) -> None:
        if link.session is None:
            return
        self._emit(link.session.seal(records, now, self.config.max_datagram), address, relayed)

    def _path_answered(self, link: Link, token: bytes, address: Address, relayed: bool) -> None:
        pending = link.pending_paths.get((address, relayed))
        if pending is None or not hmac.compare_digest(token, pending.token):
            self.counters["dropped_path_response"] += 1
            return
        link.pending_paths.clear()
        self._move(link, address, relayed)

    def _move(self, link: Link, address: Address, relayed: bool) -> None:
        """The peer proved it receives at `address`: the session goes there from now on."""
        log.info("%s moved from %s to %s%s", link.name, link.address, address, " (relayed)" if relayed else "")
        self.counters["paths_validated"] += 1
        path = self._path_of(link, address, relayed)
        link.address, link.via_relay = address, relayed
        self._remember_address(link, address)
        if path != link.path and not link.service:
            link.path = path
            self.publish("path_changed", {"peer": link.name, "fingerprint": link.id_text,
                                          "path": path, "address": _fmt(address)})
        for observer in self._observers_for(link):
            observer.path_changed(link)
    def _store_lan_secret(self, link: Link) -> None:
        """The session's first authenticated frame from the peer: it holds the session keys,
        so both ends now store the same LAN pair secret (§8) and announce a pair tag."""
        secret, link.lan_secret = link.lan_secret, None
        if link.contact_id is None or link.service:
            return
        try:
            self.store.contacts.set_lan_secret(link.contact_id, secret)
        except StoreError as exc:  # the contact was removed meanwhile
            log.debug("LAN secret for %s not stored: %s", link.name, exc)

    def _observers_for(self, link: Link) -> list:
        """Chat layers hear about chat peers, the rendezvous layer about service sessions."""
        return [o for o in self.observers if getattr(o, "wants_service_links", False) == link.service]

    def _path_of(self, link: Link, address: Address, relayed: bool = False) -> str:
        if relayed or link.candidate_paths.get(address) == "relayed":
            return "relayed"
        return link.candidate_paths.get(address, "direct")

    def _on_initiator(self, link: Link, out: Output, address: Address, now: float, relayed: bool) -> None:
        if out.send:
            self._emit(out.send, address, relayed)
        if out.send:
            link.flight_sent, link.flight_tries = now, 1
        event = out.event
        if isinstance(event, Established):
            self._initiators.pop(link.initiator.conn_id, None) if link.initiator else None
            if event.rollover is not None and (link.contact_id is None
                                               or self._follow_rollover(link, event.rollover) is None):
                # A genuine rollover to a key we cannot take (already another contact, or a
                # group peer's: the group knows its members by the key its operations name).
                event = Failed(FailReason.KEY_MISMATCH, event.bundle, "rollover to a key we cannot take")
            else:
                self._establish(link, event, address, now, relayed)
        if isinstance(event, Failed):
            self._initiators.pop(link.initiator.conn_id, None) if link.initiator else None
            if event.reason == FailReason.KEY_MISMATCH:
                got = ident.format_id(event.bundle.fingerprint()) if event.bundle else None
                if link.group_peer:  # an address a member gave (HINT): no dialog for the user
                    self.counters["group_peer_key_mismatch"] += 1
                else:
                    self._report_mismatch(link, address, got)
                link.candidates.mismatch(address, now)  # to the back; dropped after repeated ones
                head = link.candidates.head()
                if not link.connected and head is not None and head != address:
                    self._start_handshake(link, head)  # the next candidate, as after a timeout
                    return
            link.failure = event.reason.value
            if not link.connected:
                self._unreached(link)
            link.established.set()  # wake waiters: they look at link.connected
            link.established = gevent.event.Event()  # a set one would make the next waiter spin

    def _report_mismatch(self, link: Link, address: Address, got: Optional[str]) -> None:
        """Publish key_mismatch once per (address, key): a forged LAN sighting retried would
        raise the same dialog again and again."""
        key = (tuple(address), got)
        if key in self._mismatches_reported:
            self.counters["key_mismatch_repeated"] += 1
            return
        if len(self._mismatches_reported) >= MAX_MISMATCH_REPORTS:
            del self._mismatches_reported[next(iter(self._mismatches_reported))]
        self._mismatches_reported[key] = None
        log.warning("key mismatch for %s at %s: got %s", link.name, address, got)
        self.publish("key_mismatch", {"peer": link.name, "expected": link.id_text,
                                      "got": got, "address": _fmt(address)})

    def _on_listener(self, out: Output, address: Address, now: float, relayed: bool = False) -> None:
        event = out.event
        if isinstance(event, Authenticated):
            out = self._decide(event, address, now)
            event = out.event
        if out.send:
            self._emit(out.send, address, relayed)
        if out.dropped:
            self.counters[f"dropped_handshake_{out.dropped}"] += 1
        if isinstance(event, Established):
            link = self.links.get(event.fingerprint) or self.clients.get(event.fingerprint)
            if link is not None:
                self._establish(link, event, address, now, relayed)

    def _decide(self, event: Authenticated, address: Address, now: float) -> Output:
        """An initiator proved its identity: accept a contact, hold a stranger, refuse the blocked."""
        contact = self.store.contacts.find_by_fingerprint(event.fingerprint)
        if contact is None and event.rollover is not None:
            contact = self._rollover_contact(event.rollover)
        if contact is not None and contact.blocked:
            event.responder.reject()
            self.counters["refused_blocked"] += 1
            return Output()
        if contact is None and self.accept_services:
            client = self.clients.get(event.fingerprint)
            if client is None:
                if len(self.clients) >= MAX_SERVICE_CLIENTS:
                    event.responder.reject()
                    self.counters["refused_service_cap"] += 1
                    return Output()
                client = Link(event.fingerprint, "client " + ident.short_id(event.fingerprint), None, service=True)
                self.clients[event.fingerprint] = client
            client.bundle = event.bundle
            return event.responder.accept(now)
        if contact is None:
            link = self._non_contact_link(event.fingerprint)
            if link is None:
                event.responder.reject()
                return Output()
        else:
            link = self.link_for_contact(contact)
        outgoing = link.initiator
        if outgoing is not None and outgoing.state in (InitiatorState.START, InitiatorState.WAIT_COOKIE):
            # Ours was never answered (typically: still knocking at the peer's old address after
            # it restarted elsewhere). The peer holds no state for it, so dropping it for the
            # peer's handshake cannot leave the two sides with different sessions.
            outgoing = None
        elif outgoing is not None and outgoing.established_at is not None \
                and event.responder.created > outgoing.established_at:
            # The peer began this handshake after ours was complete: not the other half of a
            # simultaneous open (the peer abandons its own before ours completes) but a new
            # session, typically after it restarted and lost the old one. Refusing it would
            # leave the peer locked out until our session is `window` seconds old.
            outgoing = None
        if not accept_incoming(self.identity.fingerprint, event.fingerprint, outgoing, now):
            event.responder.reject()
            self.counters["refused_simultaneous_open"] += 1
            return Output()
        if link.initiator is not None and not link.initiator.done:
            link.initiator.abandon()
            self._initiators.pop(link.initiator.conn_id, None)
        link.bundle = event.bundle
        return event.responder.accept(now)

    def _non_contact_link(self, fingerprint: bytes) -> Optional[Link]:
        """The link for an identity that is not a contact: a group peer's if the directory
        knows it (capped at MAX_GROUP_PEERS), else a stranger's (capped at MAX_STRANGERS, the
        least recently heard giving way). None when refused."""
        link = self.links.get(fingerprint)
        group_peer = self._is_group_peer(fingerprint)
        if link is not None and link.group_peer == group_peer:
            return link
        if group_peer and not self._room_for_group_peer():
            self.counters["refused_group_peers_cap"] += 1
            return None
        if link is None:
            if not group_peer and not self._room_for_stranger():
                self.counters["refused_strangers_cap"] += 1
                return None
            link = Link(fingerprint, ident.short_id(fingerprint), None)
            self.links[fingerprint] = link
        link.group_peer = group_peer  # a stranger became a member of a group of ours, or left it
        return link

    def _rollover_contact(self, statement: ident.Rollover) -> Optional[Contact]:
        """The contact whose key an initiator's statement hands over from, if the statement is
        signed by the bundle stored for it; followed to the new key unless blocked (a blocked
        contact is returned as it is, and refused: the block follows the person)."""
        old = self.store.contacts.find_by_fingerprint(statement.old_fingerprint)
        if old is None or old.bundle is None:
            return None
        try:
            old_bundle = ident.Bundle.from_base64(old.bundle)
        except ident.IdentityError:
            return None
        if not ident.verify_rollover(statement, old_bundle, self.backend):
            self.counters["rollover_rejected"] += 1
            return None
        if old.blocked:
            return old
        return self._follow_rollover(self.link_for_contact(old), statement)

    def _follow_rollover(self, link: Link, statement: ident.Rollover) -> Optional[Contact]:
        """A verified rollover from a contact's key: store the new key (name, history and
        `verified` stay: the change is signed by the key the user verified), move the link to
        it and publish contact_updated. None if the new key is already another contact."""
        assert link.contact_id is not None
        old, new = statement.old_fingerprint, statement.new_fingerprint
        if link.fingerprint == new:  # followed already (e.g. by the other handshake of a simultaneous open)
            return self.store.contacts.get_by_id(link.contact_id)
        try:
            contact = self.store.contacts.replace_key(link.contact_id, new, statement.new_bundle.to_base64())
        except StoreError as exc:
            log.warning("%s rolled over to %s, not followed: %s", link.name, ident.format_id(new), exc)
            return None
        other = self.links.pop(new, None)
        if other is not None and other is not link:
            self._set_down(other, notify=False)  # a stranger link under the new key
        if self.links.get(old) is link:
            del self.links[old]
        link.fingerprint, link.bundle = new, statement.new_bundle
        self.links[new] = link
        self.counters["rollover_followed"] += 1
        log.info("%s rolled over from %s to %s", link.name, ident.format_id(old), ident.format_id(new))
        view = self.contact_view(contact) if self.contact_view else {
            "name": contact.name, "fingerprint": ident.format_id(new)}
        self.publish("contact_updated", dict(view, previous_fingerprint=ident.format_id(old), reason="key_rollover"))
        return contact

    def _establish(self, link: Link, event: Established, address: Address, now: float,
                   relayed: bool = False) -> None:
        if link.session is not None:
            self._by_conn.pop(link.session.keys.local_conn_id, None)
        was_connected = link.connected
        link.session = Session(event.keys, now, self.config.session)
        link.bundle = event.bundle
        link.address = address
        link.via_relay = relayed
        link.path = self._path_of(link, address, relayed)
        link.state = LinkState.CONNECTED
        link.connected_at = link.last_rx = link.last_tx = now
        link.last_seen_wall = time.time()
        link.failure = None
        link.request_raised = False
        self._by_conn[event.keys.local_conn_id] = link
        if link.service:
            link.fingerprint = event.fingerprint
            self._ping(link, now)
            link.established.set()
            link.established = gevent.event.Event()
            for observer in self._observers_for(link):
                observer.link_up(link)
            return
        if link.contact_id is not None:
            contact = self.store.contacts.get_by_id(link.contact_id)
            if contact.bundle is None:
                self.store.contacts.set_bundle(contact.id, event.bundle.to_base64())
            link.candidates.proven(address, link.path)
            link.lan_secret = lan.pair_secret(event.keys)  # stored when the peer's first frame shows it has it too
        elif link.group_peer:
            link.candidates.proven(address, link.path)
        self._remember_address(link, address)
        self._ping(link, now)
        log.info("session with %s at %s", link.name, _fmt(address))
        if link.is_stranger:
            self.raise_contact_request(link)
        elif not was_connected and not link.group_peer:  # the group service tells about members
            self.publish("peer_connected", {"peer": link.name, "fingerprint": link.id_text,
                                            "address": _fmt(address), "path": link.path})
        link.established.set()
        link.established = gevent.event.Event()
        for observer in self._observers_for(link):
            observer.link_up(link)

    def _room_for_stranger(self) -> bool:
        """Stranger links are live sessions only (a stranger's link goes when its session
        ends), at most MAX_STRANGERS; at the cap, the one heard from least recently gives way
        to the newcomer: 32 throwaway identities cannot shut every real newcomer out."""
        strangers = [l for l in self.links.values() if l.is_stranger]
        if len(strangers) < MAX_STRANGERS:
            return True
        victim = min(strangers, key=lambda l: (l.connected, l.last_rx))
        self.counters["strangers_evicted"] += 1
        if victim.connected:
            self._send(victim, [Close(0, "busy")])
        self._set_down(victim)
        return True

    def _remember_address(self, link: Link, address: Address) -> None:
        if link.contact_id is not None:
            now = time.time()
            self.store.contacts.touch(link.contact_id, now, _fmt(address))
            self._known_hosts[host_key(address)] = now

    def _set_down(self, link: Link, notify: bool = True) -> None:
        was_connected = link.connected
        if link.session is not None:
            self._by_conn.pop(link.session.keys.local_conn_id, None)
        if link.initiator is not None:
            self._initiators.pop(link.initiator.conn_id, None)
            link.initiator.abandon()
        link.session = None
        link.pending_paths.clear()
        link.state = LinkState.OFFLINE
        link.established.set()
        link.established = gevent.event.Event()
        if was_connected:
            link.last_seen_wall = time.time()
            if notify and not link.is_stranger and not link.service and not link.group_peer:
                self.publish("peer_disconnected", {"peer": link.name,
                                                   "fingerprint": link.id_text})
            for observer in self._observers_for(link):
                observer.link_down(link)
        if link.contact_id is None and not link.service and self.links.get(link.fingerprint) is link:
            del self.links[link.fingerprint]  # a stranger's or group peer's link lives as long as its session

    # -- timers -----------------------------------------------------------------------------
    def _ping(self, link: Link, now: float) -> None:
        link.last_ping = now
        self._send(link, [Ping(int(now * 1e6))])

    def _tick_loop(self) -> None:
        while True:
            gevent.sleep(TICK)
            now = time.monotonic()
            try:
                self._tick(now)
                for observer in self.observers:
                    observer.tick(now)
            except Exception:
                log.exception("timer pass failed")

    def _tick(self, now: float) -> None:
        interval = self.config.keepalive_interval
        for link in [*self.links.values(), *self.services.values(), *self.clients.values()]:
            initiator = link.initiator
            if initiator is not None and not initiator.done and initiator.pending:
                waiting = initiator.state == InitiatorState.WAIT_COOKIE
                if waiting and link.relay_probes and now - link.punch_started >= RELAY_DELAY:
                    link.probes.extend(link.relay_probes)  # no direct answer yet: try the relays too
                    link.relay_probes = []
                    link.flight_sent = 0.0
                if now - link.flight_sent > INITIAL_RTO * (2 ** (link.flight_tries - 1)):
                    if link.flight_tries >= HANDSHAKE_TRIES:
                        self._handshake_gave_up(link)
                    else:
                        link.flight_tries += 1
                        link.flight_sent = now
                        for target in (link.probes if waiting else [link.initiator_address]):
                            self._emit(initiator.pending, target, self._flight_route(target))
            if link.connected and link.path == "relayed" and now - link.last_upgrade_probe > UPGRADE_PROBE_INTERVAL:
                self._probe_direct(link, now)
            if link.connected:
                if now - link.last_rx > 3 * interval:
                    log.info("%s went silent", link.name)
                    self._set_down(link)
                    self._reconnect(link)
                elif now - link.last_ping > interval or (now - link.last_tx > interval):
                    self._ping(link, now)
        if int(now) != int(now - TICK):
            self.listener.expire(now)

    def _probe_direct(self, link: Link, now: float) -> None:
        """A relayed session pings the peer's direct candidates: if one gets through, the peer
        sees an authenticated frame from a new address and moves there (and so do we)."""
        link.last_upgrade_probe = now
        assert link.session is not None
        for address in link.candidates:
            if link.candidate_paths.get(address) != "relayed":
                self._emit(link.session.seal([Ping(int(now * 1e6))], now, self.config.max_datagram),
                           address, False)

    def _handshake_gave_up(self, link: Link) -> None:
        initiator = link.initiator
        assert initiator is not None
        self._initiators.pop(initiator.conn_id, None)
        initiator.abandon()
        tried = link.initiator_address
        link.failure = "timeout"
        others = [a for a in link.candidates if a != tried]
        if tried in link.candidates and others:
            link.candidates.timed_out(tried)
            self._start_handshake(link, link.candidates[0])
            return
        if not link.connected:
            self._unreached(link)
        link.established.set()
        link.established = gevent.event.Event()

    def _unreached(self, link: Link) -> None:
        """A handshake to an offline link ended without a session. A group peer's link goes
        (the group service tries again when it learns an address)."""
        link.state = LinkState.OFFLINE
        if link.group_peer and self.links.get(link.fingerprint) is link:
            del self.links[link.fingerprint]

    def _reconnect(self, link: Link) -> None:
        if link.group_peer and link.bundle is not None and link.address is not None \
                and self._is_group_peer(link.fingerprint):
            try:  # went silent: knock once more where it was (its link went with the session)
                self.connect_group_peer(link.fingerprint, link.bundle.encode(), [(link.address, link.path)])
            except (Invalid, Refused) as exc:
                log.debug("group peer %s not reconnected: %s", link.name, exc)
            return
        if link.contact_id is None:
            return  # strangers call again; service sessions are renewed by their owner
        try:
            contact = self.store.contacts.get_by_id(link.contact_id)
        except Exception:
            return
        addresses = [link.address] + [parse_address(a) for a in contact.addresses]
        self.connect(contact, [a for a in addresses if a])

    # -- views ------------------------------------------------------------------------------
    def view(self, link: Link) -> dict:
        return {
            "name": link.name,
            "fingerprint": link.id_text,
            "state": link.state.value,
            "path": link.path if link.connected else None,
            "address": _fmt(link.address or (link.initiator_address if link.state == LinkState.CONNECTING else None)),
            "rtt_ms": round(link.rtt.srtt * 1000, 3) if link.rtt.srtt is not None else None,
            "stranger": link.is_stranger,
        }


def _data_conn_id(data: bytes) -> Optional[bytes]:
    """The connection id of a DATA datagram (read from its prefix, nothing parsed), else None."""
    if type(data) is bytes and len(data) > wire.PREFIX_LEN and data[0] == wire.VERSION_BYTE \
            and data[1] == PacketType.DATA:
        return data[2:wire.PREFIX_LEN]
    return None


def _fmt(address: Optional[Address]) -> Optional[str]:
    if not address:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> Optional[Address]:
    """'host:port' or '[v6]:port' -> (host, port); None when malformed."""
    text = (text or "").strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
        if ":" in host:  # an IPv6 address needs its brackets: "2001:db8::1" has no port
            return None
    if not host or not port_text.isdigit():
        return None
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    return (host, port)
