"""Group files (PROTOCOL §13.8): our announced files offered to each connected member (one
transfer id per member), and Transfers' check that an incoming offer is a file a member of a
common group announced to us. The MESSAGE that announces a file is written by the service."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional

from ...codec.grouprecord import FileAnnounce, group_file_transfer_id
from ...net.peers import Link, Network
from .live import Live

log = logging.getLogger("chatp2p.groups")

# fingerprint -> the active groups we share with that member
Common = Callable[[bytes], "list[Live]"]


@dataclasses.dataclass
class GroupFiles:
    """Offers of our group files, and the files others announced to us."""

    me: bytes
    network: Network
    transfers: Any
    common: Common
    # group file transfer id -> (group_id, author) of the files announced to us
    announced: dict[bytes, tuple[bytes, bytes]] = dataclasses.field(default_factory=dict)

    def note(self, group_id: bytes, author: bytes, announce: FileAnnounce) -> None:
        """A file `author` announced to us: its offer (by its transfer id) will be accepted."""
        self.announced[group_file_transfer_id(announce.file_id, self.me)] = (group_id, author)

    def offer(self, live: Live, file_id: bytes, fp: bytes) -> bool:
        """Offer an announced file of ours to a connected member who was not offered it yet
        and reported holding the announcement (an offer that came first would find no
        announcement there and be refused); members who connect later get it once they have
        it, while this process runs."""
        path, offered, seq = live.files[file_id]
        link = self.network.link_for_fingerprint(fp) if fp != self.me else None
        if link is None or not link.connected or fp in offered:
            return False
        state = live.peers.get(fp)
        if state is None or not state.holds(seq):
            return False
        offered.add(fp)
        try:
            self.transfers.send_file_to_link(link, path, group_file_transfer_id(file_id, fp), live.group_id)
        except Exception as exc:  # one member's failure must not stop the others' offers
            log.warning("group file offer to %s failed: %s", link.name, exc)
            return False
        return True

    def group_offer(self, link: Link, transfer_id: bytes) -> Optional[bytes]:
        """The group an offer from `link` belongs to (an announced file of a common group)."""
        found = self.announced.get(transfer_id)
        if found is None or found[1] != link.fingerprint:
            return None
        group_id = found[0]
        return group_id if any(live.group_id == group_id for live in self.common(link.fingerprint)) else None

    def offer_all(self, live: Live, fp: bytes) -> None:
        """Every announced file of ours `fp` can be offered now (after its HAVE)."""
        for file_id in live.files:
            self.offer(live, file_id, fp)
