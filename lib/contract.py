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


# -- group chats (PROTOCOL §13) -------------------------------------------------------------
# A group is named by its id, 32 hex digits (`group`); members by their IDs (format_id), with
# the contact's name beside it where the member is one of our contacts (null otherwise).
class GroupState(enum.StrEnum):
    """This node in a group: a member, or no longer (it left, or an admin removed it)."""

    ACTIVE = "active"
    LEFT = "left"
    REMOVED = "removed"


class GroupMemberView(TypedDict):
    """A member of a group, as `group info` and the group views show it."""

    id: str
    name: Optional[str]         # the contact's name; null for a group peer who is not a contact
    role: Literal["admin", "member"]
    me: bool
    contact: bool
    verified: bool              # a contact whose safety number was compared
    online: bool                # a session is up with it (contact or group peer)


class GroupView(TypedDict):
    """A group, as `group list` and the group actions answer it."""

    group: str
    name: str
    state: GroupState
    created: str
    admin: bool                 # this node is an admin of the group
    members: list[GroupMemberView]
    online: int                 # members other than this node with a session up
    unread: int


class GroupInfo(GroupView):
    """`group info`: the group view and what this node holds of it."""

    records: int                # records held (operations, keys, messages, checkpoints)
    pending: int                # records waiting for their author's ADD
    key_epoch: int              # this node's sender-key epoch in the group
    former: list[str]           # IDs of former members (removed or left)


class GroupFileView(TypedDict):
    """A file announced in a group: each member receives it as an ordinary file offer
    (`file_offer` with `group`)."""

    file_id: str                # 32 hex digits
    name: str
    size: int


GroupMessageView = TypedDict("GroupMessageView", {
    "hash": str,                # the record's hash (64 hex digits): history's `before`
    "message_id": str,
    "from": str,                # the author's ID
    "from_name": Optional[str],
    "kind": Literal["text", "file", "gap"],
    "body": str,                # a gap's: how many messages are no longer available
    "file": Optional[GroupFileView],
    "depth": int,               # with `hash`, the group's order (every member shows the same)
    "created": str,             # the author's clock: shown, never used to order
    "received": Optional[str],
    "outgoing": bool,
    "read": bool,
    "pq_verified": bool,        # covered by a hybrid signature of its author's chain (§13.5)
    "delivered": list[str],     # our own message: IDs of the members known to hold it ([] for others')
    "delivered_all": bool,      # our own message: every current member holds it
})
GroupMessageView.__doc__ = "A group message (or a gap marker) as `group history` answers it."


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
    """A contact (or, for a group file, a member) offers a file: accept it with p2p accept_file."""

    chunk_size: int
    group: NotRequired[str]     # a group file's: the group's id (32 hex digits, PROTOCOL §13.4)


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


class GroupInvited(TypedDict):
    """A contact added this node to a group (it joins, `group_joined`, when the adder is a
    contact, not blocked, and the group cap allows)."""

    group: str
    name: str
    by: str
    by_name: Optional[str]


class GroupJoined(TypedDict):
    group: str
    name: str
    members: list[str]          # IDs


class GroupMemberAdded(TypedDict):
    group: str
    member: str
    member_name: Optional[str]
    by: str
    by_name: Optional[str]


class GroupMemberRemoved(GroupMemberAdded):
    """An admin removed a member (`member` is this node's own ID when it was removed)."""


class GroupMemberLeft(TypedDict):
    group: str
    member: str
    member_name: Optional[str]


GroupMessageReceived = TypedDict("GroupMessageReceived", {
    "group": str,
    "hash": str,
    "message_id": str,
    "from": str,
    "from_name": Optional[str],
    "body": str,
    "created": str,
    "depth": int,
    "kind": Literal["text", "file", "gap"],
    "file": NotRequired[GroupFileView],
})
GroupMessageReceived.__doc__ = ("A group message was accepted and decrypted (or a gap found); late messages "
                                "take their place in the order by `depth` and `hash`.")


class GroupMessageDelivered(TypedDict):
    """A member reported holding one of our messages; `all`: every current member does now."""

    group: str
    message_id: str
    member: str
    member_name: Optional[str]
    all: bool


class GroupUpdated(TypedDict):
    """The group's name or membership changed (after the operations were replayed)."""

    group: str
    name: str
    members: list[str]          # IDs
    admins: list[str]           # IDs


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
    "group_invited": GroupInvited,
    "group_joined": GroupJoined,
    "group_member_added": GroupMemberAdded,
    "group_member_removed": GroupMemberRemoved,
    "group_member_left": GroupMemberLeft,
    "group_message_received": GroupMessageReceived,
    "group_message_delivered": GroupMessageDelivered,
    "group_updated": GroupUpdated,
}
