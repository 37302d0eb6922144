"""The shape of each action's answer, attached to its row in the command table (`answer=`).

Why here: answers are the API's own; the views they share with events (contacts, transfers)
live in `contract`. `docs.py` and `schema.py` read these declarations; handlers return plain
dicts of these shapes (TypedDicts cost nothing at run time).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional, TypedDict

from ..contract import GroupMessageView, LinkState, NatView, Path


class TopLevel(NamedTuple):
    """An answer whose response carries keys beside `data` (e.g. `message_id`)."""

    data: Any
    extra: Any          # a TypedDict of the extra top-level keys


# -- status -----------------------------------------------------------------------------------
class IdentityInfo(TypedDict):
    name: str
    fingerprint: str
    short_id: str
    public_key: str


class RendezvousInfo(TypedDict):
    server: str
    connected: bool
    registered: bool
    observed: Optional[str]
    error: Optional[str]


class TurnInfo(TypedDict):
    server: Optional[str]
    relayed_address: Optional[str]
    state: Optional[str]        # idle | allocating | allocated | failed | closed
    error: Optional[str]


class P2pInfo(NatView, total=False):
    """The P2P part of status; the NAT fields appear once NAT traversal runs."""

    running: bool
    port: Optional[int]
    counters: dict[str, int]
    lan_discovery: Optional[dict[str, int]]
    rendezvous: list[RendezvousInfo]
    turn: Optional[TurnInfo]
    serving_rendezvous: dict[str, Any]


class DhtPublish(TypedDict):
    at: float                   # Unix time of the last publication
    result: str                 # stored | not stored
    slots: int
    candidates: int
    stored_on: int              # DHT nodes that stored it (the fewest over its slots)


class PortMappingInfo(TypedDict):
    state: str                  # off | trying | mapped | unavailable
    protocol: Optional[str]     # natpmp | upnp
    external: Optional[str]
    error: Optional[str]


class DhtInfo(TypedDict, total=False):
    """Online mode's DHT; in private mode only `mode` and `running` (false)."""

    mode: str                   # online | private
    running: bool
    port: Optional[int]         # the DHT's own UDP port (not the P2P port)
    nodes: int                  # nodes in the routing table
    lookups_in_flight: int
    puts_in_flight: int
    last_publish: Optional[DhtPublish]
    port_mapping: Optional[PortMappingInfo]
    traffic: dict[str, int]     # bytes_in, bytes_out since start
    counters: dict[str, int]
    settings: dict[str, Any]    # what the libtorrent session was given that could contact a host
    error: Optional[str]


class IpcInfo(TypedDict):
    host: str
    port: int
    tls_fingerprint: Optional[str]  # SHA-256 of the API's TLS certificate (remote API only)


class EventsInfo(TypedDict):
    endpoint: str
    endpoints: list[str]


class CryptoInfo(TypedDict):
    backend: str
    available: list[str]


class Status(TypedDict):
    version: str
    uptime_s: float
    identity: IdentityInfo
    p2p: P2pInfo
    dht: DhtInfo
    ipc: Optional[IpcInfo]
    events: EventsInfo
    contacts: int
    peers: int
    group_peers: int
    crypto: CryptoInfo
    data_dir: str


# -- contacts ---------------------------------------------------------------------------------
class KeyNegotiation(TypedDict):
    peer: str
    fingerprint: str
    safety_number: str
    verified: bool
    suite: Optional[str]
    key_exchange: str
    signatures: str
    role: Optional[str]
    address: Optional[str]
    path: Optional[Path]
    rtt_ms: Optional[float]


# -- p2p --------------------------------------------------------------------------------------
class ConnectStarted(TypedDict):
    peer: str
    state: LinkState
    address: Optional[str]


class MarkedRead(TypedDict):
    peer: str
    marked: int


class MessagesDeleted(TypedDict):
    peer: str
    deleted: int        # messages removed from the history and the search index
    kept: int           # outgoing messages still in flight (queued or sent), not deleted


class MessageIdKey(TypedDict):
    message_id: str


class TransferIdKey(TypedDict):
    transfer_id: str


# -- group ------------------------------------------------------------------------------------
class GroupMessageSubmitted(TypedDict):
    """A group message was written (signed, sealed, stored): `sent` when it went to at least
    one connected member, `queued` when none is connected (anti-entropy sends it later)."""

    group: str
    message_id: str
    state: Literal["sent", "queued"]


class GroupHistory(TypedDict):
    """A page of a group's history in the group's order, oldest first; the next older page is
    asked with `before` = the first message's `hash`."""

    group: str
    name: str
    messages: list[GroupMessageView]


class GroupMarkedRead(TypedDict):
    group: str
    marked: int


class GroupFileSent(TypedDict):
    """A file was announced in the group; each member gets an offer (a transfer of its own)
    once it holds the announcement, now or when it next connects while this node runs."""

    group: str
    message_id: str
    file_id: str
    name: str
    size: int
    offered: list[str]          # IDs of the members it is offered to


# -- crypto -----------------------------------------------------------------------------------
class KeyPair(TypedDict):
    public_key: str
    private_key: str
    algorithm: str
    fingerprint: str


class Encrypted(TypedDict):
    encrypted_data: str


class EventsSubscribed(TypedDict):
    """The events this connection now streams (empty: all of them), one JSON line each."""

    events: list[str]


class Decrypted(TypedDict):
    message: str


class IdentityRotated(TypedDict):
    fingerprint: str
    previous_fingerprint: str
    public_key: str


MESSAGE_SENT = TopLevel(Literal["Message sent", "Message queued"], MessageIdKey)
GROUP_MESSAGE_SENT = TopLevel(GroupMessageSubmitted, MessageIdKey)
FILE_SENT = TopLevel(Literal["File transfer started", "File transfer queued"], TransferIdKey)
