"""The shapes the API and the events promise: state enums, shared views, the event catalog.

Why one module: a client in another language, the UI, `chatp2pctl schema` and docs/API.md all
read the same declarations, so an event or answer cannot drift into a second shape unnoticed.
It sits in the layer of `events` (below services and net), so every publisher can import it.
TypedDicts are plain dicts at run time (no cost on the hot paths); the enums are str-valued,
so they encode as the same JSON strings as before.
"""

import enum
from typing import Any, Literal, NotRequired, Optional, TypedDict


# -- states ---------------------------------------------------------------------------------
class LinkState(enum.StrEnum):
    """A peer link: no session, a handshake running, or an open session."""

    OFFLINE = "offline"
    CONNECTING = "connecting"
    CONNECTED = "connected"


class MessageState(enum.StrEnum):
    """A stored chat message: outgoing ones go queued -> sent -> delivered (or failed)."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    RECEIVED = "received"   # every incoming message


class TransferState(enum.StrEnum):
    """A file transfer. Outgoing: queued -> offered -> active -> completed; incoming: offered ->
    active -> completed. Both may be paused (by either side), and end failed / rejected /
    cancelled."""

    QUEUED = "queued"
    OFFERED = "offered"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class Direction(enum.StrEnum):
    """Which way a message or a file goes, seen from this node."""

    IN = "in"
    OUT = "out"


class Side(enum.StrEnum):
    """Who paused or stopped a transfer."""

    LOCAL = "local"
    PEER = "peer"


class Path(enum.StrEnum):
    """How a connected link reaches its peer."""

    DIRECT = "direct"
    RELAYED = "relayed"


# -- shared views ---------------------------------------------------------------------------
class ContactView(TypedDict):
    """A contact as `contacts list` and the contact events show it."""

    name: str
    fingerprint: str
    public_key: Optional[str]
    verified: bool
    blocked: bool
    online: bool
    last_seen: Optional[str]
    unread: int


class PeerView(TypedDict):
    """A contact's connection, as `p2p peers` shows it."""

    name: str
    fingerprint: str
    state: LinkState
    path: Optional[Path]
    address: Optional[str]
    rtt_ms: Optional[float]
    last_seen: Optional[str]
    blocked: bool


class TransferRef(TypedDict):
    """What every file event and transfer view carries: which transfer, of which file."""

    transfer_id: str
    peer: Optional[str]
    direction: Direction
    file_name: str
    size: Optional[int]         # bytes of the whole file (null: the file could not be read)


class TransferView(TransferRef):
    """A transfer as `p2p transfers` and the transfer actions answer it."""

    path: Optional[str]
    state: TransferState
    bytes: int                  # bytes done so far
    rate: int                   # bytes per second, over the last ~2 s
    eta: Optional[float]        # seconds left at that rate
    sha256: Optional[str]
    error: Optional[str]
    stopped_by: Optional[Side]
    wire_bytes: int


class MessageView(TypedDict):
    """A stored message, as `p2p history` answers it."""

    id: int
    contact_id: int
    message_id: str
    direction: Direction
    body: str
    created: str
    received: Optional[str]
    state: MessageState
    seq: Optional[int]
    read: bool
    failure: Optional[str]
    peer: str


class NatView(TypedDict):
    """What STUN found out about this node's NAT (and its public IPv6 address, if any)."""

    public_address: Optional[str]
    public_address6: NotRequired[Optional[str]]
    mapping: str
    nat_type: str
    detail: Optional[str]


# -- events ---------------------------------------------------------------------------------
class ContactUpdated(ContactView):
    """A contact changed (renamed, blocked, verified, read, or followed a key rollover)."""

    previous_name: NotRequired[str]
    previous_fingerprint: NotRequired[str]
    reason: NotRequired[Literal["key_rollover"]]


class ContactRemoved(TypedDict):
    name: str
    fingerprint: str


class P2pStarted(TypedDict):
    port: int
    lan_discovery: bool
    online: bool


class ContactFound(TypedDict):
    """A contact's record was found (online mode): its candidates are being punched."""

    peer: str
    fingerprint: str
    via: Literal["dht"]
    candidates: int


class P2pStopped(TypedDict):
    pass


class PeerConnected(TypedDict):
    peer: str
    fingerprint: str
    address: Optional[str]
    path: Optional[Path]


class PeerDisconnected(TypedDict):
    peer: str
    fingerprint: str


class PathChanged(TypedDict):
    """A connected link moved between the direct path and the TURN relay."""

    peer: str
    fingerprint: str
    path: Path
    address: Optional[str]


class ContactRequest(TypedDict):
    """A node that is not a contact opened a session: its messages are held until added."""

    fingerprint: str
    bundle: str
    address: Optional[str]


class KeyMismatch(TypedDict):
    """The node answering at a contact's address is not the contact's ID."""

    peer: str
    expected: str
    got: Optional[str]
    address: Optional[str]


class IdentityChanged(TypedDict):
    fingerprint: str
    previous_fingerprint: str


class MessageReceived(TypedDict):
    peer: str
    message: str
    timestamp: str
    message_id: str


class MessageDelivered(TypedDict):
    peer: str
    message_id: str


class MessageFailed(TypedDict):
    peer: str
    message_id: str
    reason: str


class MessagesDeleted(TypedDict):
    """Messages were deleted from this node's history (`message_id` null: the whole
    conversation, but for messages still in flight)."""

    peer: str
    message_id: Optional[str]


class FileOffer(TransferRef):
    """A contact offers a file: accept it with p2p accept_file."""

    chunk_size: int


class FileTransferProgress(TransferRef):
    """At most 4 times a second per active transfer."""

    bytes: int
    rate: int
    eta: Optional[float]


class FileTransferPaused(TransferRef):
    by: Side


class FileTransferFailed(TransferRef):
    reason: str


class FileReceived(TransferRef):
    path: str
    sha256: Optional[str]


class FileTransferCompleted(TransferRef):
    path: Optional[str]
    sha256: Optional[str]
    seconds: float
    wire_bytes: int


# Every event the node publishes, with its data shape. The ZeroMQ message is the event name,
# then {"event": name, "data": <shape>, "timestamp": ISO-8601 UTC}.
EVENTS: dict[str, Any] = {
    "contact_added": ContactView,
    "contact_removed": ContactRemoved,
    "contact_updated": ContactUpdated,
    "contact_request": ContactRequest,
    "key_mismatch": KeyMismatch,
    "identity_changed": IdentityChanged,
    "p2p_started": P2pStarted,
    "p2p_stopped": P2pStopped,
    "nat_detected": NatView,
    "contact_found": ContactFound,
    "peer_connected": PeerConnected,
    "peer_disconnected": PeerDisconnected,
    "path_changed": PathChanged,
    "p2p_message_received": MessageReceived,
    "message_delivered": MessageDelivered,
    "message_failed": MessageFailed,
    "messages_deleted": MessagesDeleted,
    "file_offer": FileOffer,
    "file_transfer_started": TransferRef,
    "file_transfer_progress": FileTransferProgress,
    "file_transfer_paused": FileTransferPaused,
    "file_transfer_resumed": TransferRef,
    "file_transfer_failed": FileTransferFailed,
    "file_received": FileReceived,
    "file_transfer_completed": FileTransferCompleted,
}
