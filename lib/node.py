"""A Node owns everything one identity needs: keys, store, events, contacts, transport.

Nothing here is global: tests may run several nodes in one process. The API server and the
UI are attached from outside (chatp2p.py) and reach the node only through the command table.
"""

from __future__ import annotations

import getpass
import logging
import pathlib
import time
from typing import Any, Callable

from . import __version__
from .config import Config
from .crypto import identity as ident, pqc
from .errors import Busy
from .events import EventBus
from .runtime import RuntimeFiles
from .lockfile import DataDirLock
from .net import nat
from .net.dht import DhtSettings
from .net.hostaddrs import outward_addresses
from .net.lan import LanDiscovery
from .services.contacts import ContactBook
from .services.p2p import P2P, P2PStopped
from .store import Contact, Store
from .util import ensure_private_dir

log = logging.getLogger("chatp2p.node")

EVENTS_SOCKET = "events.sock"


class P2PStartFailed(Busy):
    """`p2p start` could not bind its socket (the port is in use, or not ours to take)."""


class Node:
    """Start with `start()`, stop with `stop()`; `status()` is the API's status answer.

    A started node always has its identity, store, events and contacts (the API runs only
    against a started node, so handlers never check them). The P2P network is `p2p`, which
    raises P2PStopped while it is stopped; LAN discovery, which is optional, runs beside it.
    """

    # Set by start():
    backend: pqc.Backend
    identity: ident.Identity
    store: Store
    events: EventBus
    contacts: ContactBook

    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir: pathlib.Path = config.data_path
        self.runtime_dir: pathlib.Path = config.runtime_path   # the event socket's (XDG_RUNTIME_DIR)
        self.name: str = config.name or _login_name()
        self.started_at = time.time()
        self.ipc_address: tuple[str, int] | None = None
        self.ipc_tls_fingerprint: str | None = None   # the API's certificate pin, when it serves TLS
        self.available_backends: list[str] = []
        self.rollover: ident.Rollover | None = None  # how our previous key handed over to this one
        self.turn_override: tuple | None = None   # TURN servers given to `p2p start`
        self._p2p: P2P | None = None
        self._lan: LanDiscovery | None = None
        self._closers: list[Callable[[], None]] = []   # what start() opened, closed in reverse by stop()
        self._publishing = False
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
            self._closers.append(self.store.close)
            # A tcp:// events endpoint is open to every local user: it asks for the API token.
            tcp_token = RuntimeFiles(self.data_dir).ensure_token() if self.config.events_port is not None else None
            ensure_private_dir(self.runtime_dir)
            self.events = EventBus(self._event_endpoints(), tcp_token=tcp_token)
            self._closers.append(self._close_events)
            self._publishing = True
            self.contacts = ContactBook(self.store, self.identity.fingerprint, self.events.publish,
                                        is_online=self._is_online, running_p2p=lambda: self._p2p)
            if self.config.autostart:
                self.start_p2p()
        except BaseException:
            self.stop()
            raise

    def _event_endpoints(self) -> list[str]:
        endpoints = [f"ipc://{self.runtime_dir / EVENTS_SOCKET}"]
        if self.config.events_port is not None:
            endpoints.append(f"tcp://127.0.0.1:{self.config.events_port}")
        return endpoints

    def _close_events(self) -> None:
        self._publishing = False
        self.events.close()
        (self.runtime_dir / EVENTS_SOCKET).unlink(missing_ok=True)

    def _rollover_bytes(self) -> bytes | None:
        return self.rollover.encode() if self.rollover is not None else None

    def _contact_view(self, contact: Contact) -> dict:
        return self.contacts.view(contact)

    def rotate_identity(self) -> tuple[ident.Identity, ident.Identity]:
        """Replace the identity by a new one, signed over by the old key (`identity.rotate`).

        Every session and handshake is ended so the next ones present the new key (with the
        statement, which contacts check against the old key they know); returns (old, new)."""
        old = self.identity
        new, statement = ident.rotate(self.data_dir, old, self.backend, time.time())
        self.identity, self.rollover = new, statement
        self._identity_view = self._status_cache = None
        self.contacts.own_fingerprint = new.fingerprint
        if self._p2p is not None:
            self._p2p.network.set_identity(new, self._rollover_bytes())
        if self._lan is not None:
            # Contacts that have not followed yet look for the old tag: they still reach us at
            # the addresses they remember, and find the new tag once they have followed.
            self._lan.fingerprint = new.fingerprint
        self.publish("identity_changed", {"fingerprint": new.id, "previous_fingerprint": old.id})
        return old, new

    def _is_online(self, contact_id: int) -> bool:
        p2p = self._p2p
        return p2p is not None and p2p.network.is_online(contact_id)

    # -- the P2P network --------------------------------------------------------------------
    @property
    def p2p(self) -> P2P:
        """The running P2P network; P2PStopped ("... start it with p2p start") when stopped."""
        p2p = self._p2p
        if p2p is None:
            raise P2PStopped()
        return p2p

    @property
    def running_p2p(self) -> P2P | None:
        """The P2P network, or None while it is stopped (for views that show both states)."""
        return self._p2p

    @property
    def p2p_running(self) -> bool:
        return self._p2p is not None

    def start_p2p(self) -> None:
        """Bind the UDP socket and start the P2P network and LAN discovery (idempotent)."""
        if self._p2p is not None:
            return
        p2p = self._p2p = P2P.start(self.config, self.identity, self.backend, self.store, self.publish,
                                    self._nat_settings(), self._rollover_bytes(), self._contact_view,
                                    self._dht_settings())
        if self.config.lan_discovery_on:
            lan = LanDiscovery(self.identity.fingerprint, p2p.port, self._lan_contacts,
                               p2p.connector.found_on_lan, port=self.config.lan_port,
                               interval=self.config.lan_interval)
            try:
                lan.start()
                self._lan = lan
            except OSError as exc:
                log.warning("LAN discovery unavailable on port %d: %s", self.config.lan_port, exc)
        self.publish("p2p_started", {"port": p2p.port, "lan_discovery": self._lan is not None,
                                     "online": p2p.online is not None})

    def _dht_settings(self) -> DhtSettings | None:
        """Online mode's DHT session, or None in private mode."""
        config = self.config
        if not config.online_mode:
            return None
        port = config.dht_port
        # The outward addresses, not the unspecified ones: libtorrent runs one DHT node per
        # address it listens on, and nodes on loopback or link-local addresses answer nothing
        # but make every lookup wait out their timeouts (15 s).
        listen = tuple(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in outward_addresses()) \
            or (f"0.0.0.0:{port}", f"[::]:{port}")
        return DhtSettings(listen=listen, bootstrap=tuple(config.dht_bootstrap),
                           port_mapping=config.port_mapping, private_swarm=config.dht_private_swarm)

    def _nat_settings(self) -> nat.NatSettings:
        config = self.config
        turn = (nat.TurnServer(config.turn_url, config.turn_username, config.turn_credential),) \
            if config.turn_url else ()
        return nat.NatSettings(tuple(config.effective_stun_urls), tuple(config.rendezvous_servers),
                               self.turn_override if self.turn_override is not None else turn,
                               config.serve_rendezvous)

    def restart_p2p(self, stun_urls: list[str] | None = None, rendezvous_servers: list[str] | None = None,
                    turn_servers: list | None = None, online: bool | None = None) -> None:
        """`p2p start`: check and apply new settings (None keeps a setting), then (re)start,
        keeping the bound port when it was 0."""
        changes: dict[str, Any] = {}
        if stun_urls is not None:
            changes["stun_urls"] = stun_urls
        if rendezvous_servers is not None:
            changes["rendezvous_servers"] = rendezvous_servers
        if online is not None:
            changes["online"] = online
        turn = nat.turn_servers_from(turn_servers) if turn_servers is not None else None
        nat.check_settings(nat.NatSettings(tuple(changes.get("stun_urls", self.config.stun_urls)),
                                           tuple(changes.get("rendezvous_servers", self.config.rendezvous_servers))))
        if turn is not None:
            self.turn_override = turn
        port = self._p2p.port if self._p2p is not None else None
        self.stop_p2p()
        if changes:
            self.config = self.config.replace(**changes)
        try:
            if port is not None and self.config.p2p_port == 0:
                self.config = self.config.replace(p2p_port=port)
                try:
                    self.start_p2p()
                finally:
                    self.config = self.config.replace(p2p_port=0)
            else:
                self.start_p2p()
        except OSError as exc:
            raise P2PStartFailed(f"Cannot start the P2P network: {exc.strerror or exc}") from None

    def _lan_contacts(self) -> list[tuple[bytes, bytes | None]]:
        """(ID, LAN pair secret or None) of every unblocked contact (lan.LanContact)."""
        return [(c.fingerprint, c.lan_secret) for c in self.store.contacts.all() if not c.blocked]

    def stop_p2p(self) -> None:
        """Stop LAN discovery and the P2P network (`node.p2p` raises from now on)."""
        if self._lan is not None:
            self._lan.stop()
            self._lan = None
        p2p, self._p2p = self._p2p, None
        if p2p is not None:
            p2p.stop()

    def stop(self) -> None:
        """Close everything in reverse order; safe to call twice or after a failed start."""
        self.stop_p2p()
        while self._closers:
            self._closers.pop()()
        self._lock.release()

    # -- views ------------------------------------------------------------------------------
    def publish(self, name: str, data: Any) -> None:
        if self._publishing:
            self.events.publish(name, data)

    def identity_view(self) -> dict:
        if self._identity_view is None:  # changes only with rotate_identity(): build it once
            self._identity_view = self._build_identity_view()
        return dict(self._identity_view)

    def _build_identity_view(self) -> dict:
        return {
            "name": self.name,
            "fingerprint": self.identity.id,
            "short_id": ident.short_id(self.identity.fingerprint),
            "public_key": self.identity.bundle.to_base64(),
        }

    def status(self) -> dict:
        static = self._static_status()
        p2p, lan = self._p2p, self._lan
        return {
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "identity": static["identity"],
            "p2p": {
                "running": p2p is not None,
                "port": p2p.port if p2p is not None else None,
                "counters": dict(p2p.transport.counters) if p2p is not None else {},
                "lan_discovery": lan.counters if lan is not None else None,
                **(p2p.nat.status() if p2p is not None else {"public_address": None, "mapping": "unknown",
                                                             "nat_type": "unknown"}),
            },
            "dht": p2p.online.status() if p2p is not None and p2p.online is not None else
            {"mode": "online" if self.config.online_mode else "private", "running": False},
            "ipc": static["ipc"],
            "events": static["events"],
            "contacts": self.store.contacts.count(),
            "peers": p2p.network.connected_count() if p2p is not None else 0,
            "group_peers": p2p.network.group_peer_count() if p2p is not None else 0,
            "crypto": static["crypto"],
            "data_dir": static["data_dir"],
        }

    def _static_status(self) -> dict:
        """The parts of `status` that change only with the identity or the API address, built
        once (every status answer, a frequent request, would rebuild them)."""
        cached = self._status_cache
        if cached is None or cached["ipc_address"] != self.ipc_address:
            address = self.ipc_address
            cached = self._status_cache = {
                "ipc_address": address,
                "identity": self.identity_view(),
                "ipc": {"host": address[0], "port": address[1],
                        "tls_fingerprint": self.ipc_tls_fingerprint} if address else None,
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
