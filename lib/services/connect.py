"""The connection policy: how a contact is reached, and what leaving a contact undoes.

A `Connector` exists while the P2P network runs (it is part of `services.p2p.P2P`). It
decides which addresses to try, when to ask the rendezvous servers for an introduction,
retries contacts that are offline, and fans a removal or a block out to every layer that
keeps per-contact state.
"""

from __future__ import annotations

import socket

import gevent

from ..codec.addresses import plain_address
from ..errors import Busy, Invalid, NotFound, Refused
from ..net.nat import NatTraversal
from ..net.peers import Address, Link, LinkState, Network, parse_address
from ..store import Contact, Store
from .messaging import Messenger
from .online import OnlineDiscovery
from .transfer import Transfers

RECONNECT_INTERVAL = 30.0   # seconds between attempts to reach contacts that are offline


class ContactBlocked(Refused):
    """A blocked contact is never connected to."""


class NoKnownAddress(NotFound):
    """Nothing to try: no address known and no rendezvous server to ask."""


class Unreachable(Busy):
    """The handshake did not complete in time (or failed); the message says why."""


class KeyMismatch(Refused):
    """The node that answered is not the contact's ID."""


def resolve(text: str, families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)) -> Address:
    """A `host:port` or `[v6]:port` given by the user, resolved to an address of one of
    `families` (those the P2P socket can send to): the resolver's preferred one (RFC 6724
    order), with the text of an IPv4-mapped or zoned address kept as the socket writes it."""
    address = parse_address(text)
    if address is None:
        raise Invalid(f"Field 'address' must be host:port or [IPv6]:port, got {text!r}")
    family = families[0] if len(families) == 1 else socket.AF_UNSPEC
    try:
        infos = socket.getaddrinfo(address[0], address[1], family, socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise NotFound(f"Cannot resolve {address[0]}: {exc}") from None
    infos = [info for info in infos if info[0] in families]
    if not infos:
        raise NotFound(f"Cannot resolve {address[0]} to an address this node's socket can reach")
    return plain_address(infos[0][4])


class Connector:
    """Reaches contacts over the running network; `stop()` ends its retries."""

    def __init__(self, network: Network, nat: NatTraversal, messenger: Messenger, transfers: Transfers,
                 store: Store, online: OnlineDiscovery | None = None) -> None:
        self.network = network
        self.nat = nat
        self.online = online
        self.messenger = messenger
        self.transfers = transfers
        self.store = store
        self.running = False
        self._retrier: gevent.Greenlet | None = None

    def start(self) -> None:
        self.running = True
        self._retrier = gevent.spawn(self._retry_loop)

    def stop(self) -> None:
        self.running = False
        if self._retrier is not None:
            self._retrier.kill(block=False)
            self._retrier = None

    def connect(self, contact: Contact, address: str | None = None) -> Link:
        """Start reaching `contact`: at `address` if given, else at every address it was seen
        at and, in parallel, through introductions by the rendezvous servers and, in online
        mode, its DHT record (the LAN announces itself; a relay is one of the candidates an
        introduction or a record brings)."""
        if contact.blocked:
            raise ContactBlocked(f"{contact.name} is blocked")
        candidates = [resolve(address, self.nat.transport.families)] if address else []
        candidates += [a for a in (parse_address(t) for t in contact.addresses) if a]
        link = self.network.link_for_contact(contact)
        candidates += [a for a in link.candidates if a not in candidates]
        if link.connected:
            return link
        asked = 0
        if not address:
            asked = self.nat.reach(contact) + (self.online.reach(contact) if self.online is not None else 0)
        if not candidates and not asked:
            raise NoKnownAddress(f"No known address for {contact.name}, no rendezvous server to ask and "
                                 "online mode is off: use p2p connect with an address")
        if not candidates:
            self.network.mark_connecting(link)  # until the introductions answer or time out
            return link
        return self.network.connect(contact, candidates)

    def connect_if_possible(self, contact: Contact) -> None:
        """After queueing something for `contact`: reach it if there is any way to; otherwise
        the item waits until the contact shows up."""
        if not self.running:
            return
        try:
            self.connect(contact)
        except NoKnownAddress:
            pass

    def negotiate(self, contact: Contact, timeout: float) -> Link:
        """Connect and wait (at most `timeout` s) for the session; the connected link."""
        link = self.connect(contact)
        if not link.connected:
            with gevent.Timeout(timeout, False):
                while not link.connected and link.state == LinkState.CONNECTING:
                    link.established.wait()
        if not link.connected:
            reason = link.failure or "no answer"
            if reason == "key_mismatch":
                raise KeyMismatch(f"Key mismatch: the node answering for {contact.name} is not its ID "
                                  "(see key_mismatch)")
            raise Unreachable(f"Could not reach {contact.name}: {reason}")
        return link

    def disconnect(self, fingerprint: bytes) -> None:
        """A contact was removed or blocked: close its session, drop what is queued for it."""
        self.network.forget(fingerprint)
        self.messenger.contact_removed(fingerprint)
        self.transfers.contact_removed(fingerprint)

    def found_on_lan(self, fingerprint: bytes, address: Address) -> None:
        """LAN discovery heard a contact: connect there (never to a blocked one)."""
        if not self.running:
            return
        contact = self.store.contacts.find_by_fingerprint(fingerprint)
        if contact is None or contact.blocked:
            return
        self.network.found_on_lan(contact, address)

    def _retry_loop(self) -> None:
        """Reach every contact that is not connected: at start (a restarted node picks its
        sessions up again and its queued messages go out) and then every RECONNECT_INTERVAL,
        at its last known addresses and through the rendezvous servers."""
        gevent.sleep(0.2)
        while self.running:
            for contact in self.store.contacts.all():
                link = self.network.links.get(contact.fingerprint)
                if contact.blocked or (link is not None and link.state != LinkState.OFFLINE):
                    continue
                addresses = [a for a in (parse_address(text) for text in contact.addresses) if a]
                if addresses:
                    self.network.connect(contact, addresses)
                self.nat.reach(contact)
            gevent.sleep(RECONNECT_INTERVAL)
