"""Group frames over the one-to-one sessions (PROTOCOL §13.8).

The group service owns one `GroupChannel` and hands it what the network gives the service as a
link observer: GROUP records, links going down, timer ticks. The channel cuts outgoing frames
into GROUP records that fill whole datagrams, puts incoming ones back together (bounded:
`codec.groupfragment.FrameAssembler`) and calls `on_frame(link, frame)` for each complete
frame. It knows nothing about what a frame means.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Callable

from ...codec.groupfragment import MAX_FRAME, Drop, FrameAssembler, fragment_capacity, fragment_frame
from ...codec.wire import GroupFragment, Record
from ...net.peers import Link, Network

log = logging.getLogger("chatp2p.groups")

OnFrame = Callable[[Link, bytes], None]


class GroupChannel:
    """Sends and receives whole group frames on links; counts what it drops in the network's
    counters (`group_frames_sent`, `group_frames_received`, `group_fragments_*`,
    `group_frames_expired`, `group_frames_evicted`, `group_frame_errors`)."""

    def __init__(self, network: Network, on_frame: OnFrame) -> None:
        self.network = network
        self.on_frame = on_frame
        self.counters = network.counters
        self.assembler = FrameAssembler()
        self._next_id = secrets.randbelow(1 << 32)  # a restarted node does not reuse recent ids
        self._sessions: dict[bytes, bytes] = {}      # peer fingerprint -> conn id of the session its partials are from

    def send_frame(self, link: Link, frame: bytes) -> bool:
        """Send one frame (1..512 KiB) to a connected link; False if it is not connected.
        Unacknowledged: the caller's protocol repeats what matters."""
        if len(frame) > MAX_FRAME:
            raise ValueError(f"a group frame is at most {MAX_FRAME} bytes, got {len(frame)}")
        if not link.connected:
            return False
        frame_id, self._next_id = self._next_id, (self._next_id + 1) & 0xFFFFFFFF
        fragments: list[Record] = list(fragment_frame(frame_id, frame, fragment_capacity(self.network.config.max_datagram)))
        if not self.network.send_records(link, fragments):
            return False
        self.counters["group_frames_sent"] += 1
        return True

    def records(self, link: Link, records: list[Record]) -> None:
        """The records of one datagram from `link`: the GROUP ones are taken, the rest ignored."""
        fragments = [r for r in records if isinstance(r, GroupFragment)]
        if not fragments or link.session is None:
            return
        conn_id = link.session.keys.local_conn_id
        if self._sessions.get(link.fingerprint) != conn_id:
            # A new session with this peer (it may have come up without a link_down in between,
            # e.g. after the peer restarted): what the old one left is no use.
            self.assembler.drop_session(link.fingerprint)
            self._sessions[link.fingerprint] = conn_id
        now = time.monotonic()
        for fragment in fragments:
            try:
                frame, evicted = self.assembler.add(link.fingerprint, fragment, now)
            except Drop as drop:
                self.counters[drop.reason] += 1
                continue
            if evicted:
                self.counters["group_frames_evicted"] += evicted
            if frame is None:
                continue
            self.counters["group_frames_received"] += 1
            try:
                self.on_frame(link, frame)
            except Exception:  # a bug on one frame must not end the receive path for all
                self.counters["group_frame_errors"] += 1
                log.exception("group frame from %s not handled", link.name)

    def link_down(self, link: Link) -> None:
        """The session ended: its incomplete frames go."""
        self.assembler.drop_session(link.fingerprint)
        self._sessions.pop(link.fingerprint, None)

    def tick(self, now: float) -> None:
        """Drop frames incomplete for 10 s (a fragment was lost)."""
        expired = self.assembler.expire(now)
        if expired:
            self.counters["group_frames_expired"] += expired

