"""The running P2P network as one object, and the use cases that need it.

`P2P.start` binds the UDP socket and builds every part (transport, network, messenger,
transfers, NAT traversal, connector); `stop` ends them all. The node holds one `P2P` while
the network runs and none while it is stopped (the API's `p2p stop` / `p2p start` drop it and
build a new one), so no part is ever missing inside a running `P2P`.
"""

from __future__ import annotations

from typing import Any, Callable

import gevent.event

from ..config import Config
from ..crypto import identity as ident, pqc
from ..errors import Refused
from ..net.dht import Dht, DhtSettings
from ..net.nat import NatSettings, NatTraversal
from ..net.peers import Network, NetworkConfig
from ..net.transport import Transport
from ..store import Contact, DuplicateError, Message, Store
from .connect import Connector
from .groups.service import GroupService
from .messaging import Messenger
from .online import OnlineDiscovery
from .transfer import Outgoing, Transfers

Publish = Callable[[str, Any], Any]

STOPPED_TEXT = "The P2P network is stopped: start it with p2p start"


class P2PStopped(Refused):
    """An action that needs the P2P network while it is stopped."""

    def __init__(self) -> None:
        super().__init__(STOPPED_TEXT)


class P2P:
    """Every part of the running P2P network; see the module docstring."""

    def __init__(self, transport: Transport, network: Network, messenger: Messenger, transfers: Transfers,
                 nat: NatTraversal, connector: Connector, publish: Publish,
                 online: OnlineDiscovery | None = None, groups: GroupService | None = None) -> None:
        self.transport = transport
        self.network = network
        self.messenger = messenger
        self.transfers = transfers
        self.nat = nat
        self.connector = connector
        self.publish = publish
        self.online = online   # None in private mode
        # start() always gives one; tests that build a P2P by hand may leave parts out (None)
        self.groups: GroupService = groups  # type: ignore[assignment]
        port = transport.port
        assert port is not None, "a P2P is built on a started transport"
        self.port: int = port  # asked once: status is answered often

    @classmethod
    def start(cls, config: Config, identity: ident.Identity, backend: pqc.Backend, store: Store,
              publish: Publish, nat_settings: NatSettings, rollover: bytes | None,
              contact_view: Callable[[Contact], dict], dht_settings: DhtSettings | None = None) -> P2P:
        """Bind the socket (OSError if it cannot be) and start every part; online mode (its
        DHT) when `dht_settings` are given."""
        transport = Transport(config.p2p_host, config.p2p_port, batching=config.udp_batching)
        transport.start()
        try:
            network = Network(identity, backend, store, transport, publish,
                              NetworkConfig(keepalive_interval=config.keepalive_interval),
                              rollover=rollover, contact_view=contact_view)
            messenger = Messenger(store, network, publish, message_ttl=config.message_ttl_days * 86400)
            transfers = Transfers(store, network, publish, config.downloads_dir,
                                  auto_accept=config.auto_accept_files, upload_limit=config.upload_limit * 1024)
            transfers.start()
            groups = GroupService(identity, backend, store, network, transfers, publish,
                                  retention=config.group_retention_days * 86400)
            nat = NatTraversal(identity, store, network, transport, publish, nat_settings)
            online = OnlineDiscovery(identity, store, network, nat, Dht(dht_settings), publish,
                                     lookup_fast=config.dht_lookup_interval) \
                if dht_settings is not None else None
            network.start()
            nat.start()
            if online is not None:
                online.start()
            connector = Connector(network, nat, messenger, transfers, store, online)
            connector.start()
            groups.connect_contact = connector.connect_if_possible
        except BaseException:
            transport.stop()
            raise
        return cls(transport, network, messenger, transfers, nat, connector, publish, online, groups)

    def stop(self) -> None:
        """Stop every part (received file data is flushed first); publishes p2p_stopped."""
        self.connector.stop()
        if self.online is not None:
            self.online.stop()
        self.nat.stop()
        self.transfers.stop()  # first of the chat layers: it flushes received data and records it
        self.network.stop()
        if self.transport.running:
            self.transport.stop()
            self.publish("p2p_stopped", {})
        self.messenger.stop()
        if self.groups is not None:
            self.groups.stop()

    # -- use cases --------------------------------------------------------------------------
    def send_message(self, contact: Contact, body: str, message_id: str | None) -> gevent.event.AsyncResult:
        """Queue a message for the messenger's next group commit; `message_stored` reads the
        result (without a greenlet waiting meanwhile)."""
        return self.messenger.submit(contact, body, message_id)

    def message_stored(self, contact: Contact, message_id: str | None,
                       done: gevent.event.AsyncResult) -> tuple[Message, bool]:
        """(message, sent now) once committed; a queued message makes us reach the contact."""
        try:
            message, sent = done.get()
        except DuplicateError:
            raise DuplicateError(f"message_id {message_id!r} was already used for {contact.name}") from None
        if not sent:
            self.connector.connect_if_possible(contact)
        return message, sent

    def send_file(self, contact: Contact, file_path: str, chunk_size: int | None,
                  transfer_id: str | None) -> tuple[Outgoing, bool]:
        """Offer a file, (transfer, offered now); a queued offer makes us reach the contact."""
        transfer, offered = self.transfers.send_file(contact, file_path, chunk_size, transfer_id)
        if not offered:
            self.connector.connect_if_possible(contact)
        return transfer, offered
