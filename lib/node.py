"""A Node owns everything one identity needs: keys, store, events, contacts, transport.

Nothing here is global: tests may run several nodes in one process. The API server and the
UI are attached from outside (chatp2p.py) and reach the node only through the command table.
"""

from __future__ import annotations

import getpass
import logging
import pathlib
import time
from typing import Any

import gevent

from . import __version__
from .crypto import identity as ident, pqc
from .config import Config
from .services.contacts import ContactBook
from .events import EventBus
from .net.lan import LanDiscovery
from .lockfile import DataDirLock
from .net.nat import NatSettings, NatTraversal, TurnServer
from .services.messaging import Messenger
from .net.peers import LinkState, Network, NetworkConfig, parse_address
from .store import Store
from .services.transfer import Transfers
from .net.transport import Transport
from .util import ensure_private_dir

log = logging.getLogger("chatp2p.node")

EVENTS_SOCKET = "events.sock"
RECONNECT_INTERVAL = 30.0   # seconds between attempts to reach contacts that are offline


class Node:
    """Start with `start()`, stop with `stop()`; `status()` is the API's status answer."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir: pathlib.Path = config.data_path
        self.name: str = config.name or _login_name()
        self.started_at = time.time()
        self.ipc_address: tuple[str, int] | None = None
        self.backend: pqc.Backend | None = None
        self.available_backends: list[str] = []
        self.identity: ident.Identity | None = None
        self.rollover: ident.Rollover | None = None  # how our previous key handed over to this one
        self.store: Store | None = None
        self.events: EventBus | None = None
        self.contacts: ContactBook | None = None
        self.transport: Transport | None = None
        self.network: Network | None = None
        self.messenger: Messenger | None = None
        self.transfers: Transfers | None = None
        self.lan: LanDiscovery | None = None
        self.nat: NatTraversal | None = None
        self.turn_override: tuple | None = None   # TURN servers given to `p2p start`
        self._reconnector: gevent.Greenlet | None = None
        self.p2p_port: int | None = None
        self._lock = DataDirLock(self.data_dir)
        self._identity_view: dict | None = None
        self._status_cache: dict | None = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Lock the data dir, load or create the identity, open the store, bind sockets."""
        ensure_private_dir(self.data_dir)
        self._lock.acquire()
        try:
            self.backend = pqc.select_backend(self.config.crypto_backend)
            self.available_backends = pqc.available_backends()  # probes the disk: once
            self.identity = ident.load_or_create(self.data_dir, self.backend)
            self.rollover = ident.load_rollover(self.data_dir, self.identity, self.backend)
            self.store = Store(self.data_dir / "chatp2p.db")
            self.events = EventBus(self._event_endpoints())
            self.contacts = ContactBook(self.store, self.identity.fingerprint, self.events.publish,
                                        is_online=self._is_online)
            if self.config.autostart:
                self.start_p2p()
        except BaseException:
            self.stop()
            raise

    def _event_endpoints(self) -> list[str]:
        endpoints = [f"ipc://{self.data_dir / EVENTS_SOCKET}"]
        if self.config.events_port is not None:
            endpoints.append(f"tcp://127.0.0.1:{self.config.events_port}")
        return endpoints

    def _rollover_bytes(self) -> bytes | None:
        return self.rollover.encode() if self.rollover is not None else None

    def _contact_view(self, contact) -> dict:
        assert self.contacts is not None
        return self.contacts.view(contact)

    def rotate_identity(self) -> tuple[ident.Identity, ident.Identity]:
        """Replace the identity by a new one, signed over by the old key (`identity.rotate`).

        Every session and handshake is ended so the next ones present the new key (with the
        statement, which contacts check against the old key they know); returns (old, new)."""
        assert self.identity is not None and self.backend is not None and self.contacts is not None
        old = self.identity
        new, statement = ident.rotate(self.data_dir, old, self.backend, time.time())
        self.identity, self.rollover = new, statement
        self._identity_view = self._status_cache = None
        self.contacts.own_fingerprint = new.fingerprint
        if self.network is not None:
            self.network.set_identity(new, self._rollover_bytes())
        if self.lan is not None:
            # Contacts that have not followed yet look for the old tag: they still reach us at
            # the addresses they remember, and find the new tag once they have followed.
            self.lan.fingerprint = new.fingerprint
        self.publish("identity_changed", {"fingerprint": new.id, "previous_fingerprint": old.id})
        return old, new

    def _is_online(self, contact_id: int) -> bool:
        return self.network is not None and self.network.is_online(contact_id)

    @property
    def p2p_running(self) -> bool:
        return self.transport is not None and self.transport.running

    def start_p2p(self) -> None:
        """Bind the UDP socket and start the link and messaging layers (idempotent)."""
        if self.p2p_running:
            return
        assert self.identity is not None and self.store is not None and self.backend is not None
        transport = Transport(self.config.p2p_host, self.config.p2p_port)
        transport.start()
        self.transport = transport
        self.p2p_port = transport.port  # asked once: status is answered often
        self.network = Network(self.identity, self.backend, self.store, transport, self.publish,
                               NetworkConfig(keepalive_interval=self.config.keepalive_interval),
                               rollover=self._rollover_bytes(), contact_view=self._contact_view)
        self.messenger = Messenger(self.store, self.network, self.publish,
                                   message_ttl=self.config.message_ttl_days * 86400)
        self.transfers = Transfers(self.store, self.network, self.publish, self.config.downloads_dir,
                                   auto_accept=self.config.auto_accept_files,
                                   upload_limit=self.config.upload_limit * 1024)
        self.transfers.start()
        self.nat = NatTraversal(self.identity, self.store, self.network, transport, self.publish,
                                self._nat_settings())
        self.network.start()
        self.nat.start()
        self._reconnector = gevent.spawn(self._reconnect_loop)
        if self.config.lan_discovery:
            self.lan = LanDiscovery(self.identity.fingerprint, transport.port, self._lan_contacts, self._lan_found,
                                    port=self.config.lan_port)
            try:
                self.lan.start()
            except OSError as exc:
                log.warning("LAN discovery unavailable on port %d: %s", self.config.lan_port, exc)
                self.lan = None
        self.publish("p2p_started", {"port": transport.port, "lan_discovery": self.lan is not None})

    def _nat_settings(self) -> NatSettings:
        config = self.config
        turn = (TurnServer(config.turn_url, config.turn_username, config.turn_credential),) \
            if config.turn_url else ()
        return NatSettings(tuple(config.stun_urls), tuple(config.rendezvous_servers),
                           self.turn_override if self.turn_override is not None else turn,
                           config.serve_rendezvous)

    def reach(self, contact) -> None:
        """Reach a contact without an address: ask the rendezvous servers to introduce us."""
        if self.nat is not None:
            self.nat.reach(contact)

    def restart_p2p(self, **changes) -> None:
        """`p2p start`: apply new settings and (re)start, keeping the bound port when it was 0."""
        port = self.transport.port if self.transport is not None and self.transport.running else None
        self.stop_p2p()
        if changes:
            self.config = self.config.replace(**changes)
        if port is not None and self.config.p2p_port == 0:
            self.config = self.config.replace(p2p_port=port)
            try:
                self.start_p2p()
            finally:
                self.config = self.config.replace(p2p_port=0)
        else:
            self.start_p2p()

    def _lan_contacts(self) -> list[tuple[bytes, bytes | None]]:
        """(ID, LAN pair secret or None) of every unblocked contact (lan.LanContact)."""
        assert self.store is not None
        return [(c.fingerprint, c.lan_secret) for c in self.store.contacts.all() if not c.blocked]

    def _lan_found(self, fingerprint: bytes, address: tuple) -> None:
        """A contact announced itself on the LAN: connect unless a session is already up."""
        if self.store is None or self.network is None:
            return
        contact = self.store.contacts.find_by_fingerprint(fingerprint)
        if contact is None or contact.blocked:
            return
        link = self.network.link_for_contact(contact)
        if link.connected:
            if link.address == address and link.path != "lan":
                link.candidates.set_path(address, "lan", time.monotonic())
                link.path = "lan"  # the session it opened to us runs on this segment
            return
        if not link.candidates.add(address, "lan", time.monotonic()):
            return  # dropped after repeated identity failures (net/candidates.py)
        self.network.connect(contact, [address], path="lan")

    def _reconnect_loop(self) -> None:
        """Reach every contact that is not connected: at start (a restarted node picks its
        sessions up again and its queued messages go out) and then every RECONNECT_INTERVAL,
        at its last known addresses and through the rendezvous servers."""
        gevent.sleep(0.2)
        while self.network is not None and self.store is not None:
            network, store = self.network, self.store
            for contact in store.contacts.all():
                link = network.links.get(contact.fingerprint)
                if contact.blocked or (link is not None and link.state != LinkState.OFFLINE):
                    continue
                addresses = [a for a in (parse_address(text) for text in contact.addresses) if a]
                if addresses:
                    network.connect(contact, addresses)
                if self.nat is not None:
                    self.nat.reach(contact)
            gevent.sleep(RECONNECT_INTERVAL)

    def stop_p2p(self) -> None:
        if self._reconnector is not None:
            self._reconnector.kill(block=False)
            self._reconnector = None
        if self.nat is not None:
            self.nat.stop()
            self.nat = None
        if self.lan is not None:
            self.lan.stop()
            self.lan = None
        if self.transfers is not None:
            self.transfers.stop()  # first: it flushes received data and records it
            self.transfers = None
        if self.network is not None:
            self.network.stop()
        if self.transport is not None and self.transport.running:
            self.transport.stop()
            self.publish("p2p_stopped", {})
        if self.messenger is not None:
            self.messenger.stop()
        self.network = None
        self.messenger = None

    def stop(self) -> None:
        """Close everything in reverse order; safe to call twice or after a failed start."""
        self.stop_p2p()
        if self.events is not None:
            self.events.close()
            self.events = None
            (self.data_dir / EVENTS_SOCKET).unlink(missing_ok=True)
        if self.store is not None:
            self.store.close()
            self.store = None
        self._lock.release()

    # -- views ------------------------------------------------------------------------------
    def publish(self, name: str, data: Any) -> None:
        if self.events is not None:
            self.events.publish(name, data)

    def identity_view(self) -> dict:
        assert self.identity is not None
        if self._identity_view is None:  # changes only with rotate_identity(): build it once
            self._identity_view = self._build_identity_view()
        return dict(self._identity_view)

    def _build_identity_view(self) -> dict:
        assert self.identity is not None
        return {
            "name": self.name,
            "fingerprint": self.identity.id,
            "short_id": ident.short_id(self.identity.fingerprint),
            "public_key": self.identity.bundle.to_base64(),
        }

    def status(self) -> dict:
        assert self.store is not None and self.events is not None and self.backend is not None
        static = self._static_status()
        transport = self.transport
        running = bool(transport and transport.running)
        return {
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "identity": static["identity"],
            "p2p": {
                "running": running,
                "port": self.p2p_port if running else None,
                "counters": dict(transport.counters) if transport else {},
                "lan_discovery": self.lan.counters if self.lan else None,
                **(self.nat.status() if self.nat else {"public_address": None, "mapping": "unknown",
                                                       "nat_type": "unknown"}),
            },
            "ipc": static["ipc"],
            "events": static["events"],
            "contacts": self.store.contacts.count(),
            "peers": self.network.connected_count() if self.network else 0,
            "crypto": static["crypto"],
            "data_dir": static["data_dir"],
        }

    def _static_status(self) -> dict:
        """The parts of `status` that change only with the identity or the API address, built
        once (every status answer, a frequent request, would rebuild them)."""
        cached = self._status_cache
        if cached is None or cached["ipc_address"] != self.ipc_address:
            assert self.events is not None and self.backend is not None
            address = self.ipc_address
            cached = self._status_cache = {
                "ipc_address": address,
                "identity": self.identity_view(),
                "ipc": {"host": address[0], "port": address[1]} if address else None,
                "events": {"endpoint": self.events.endpoints[0], "endpoints": list(self.events.endpoints)},
                "crypto": {"backend": self.backend.name, "available": list(self.available_backends)},
                "data_dir": str(self.data_dir),
            }
        return cached


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "me"
