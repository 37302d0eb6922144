"""A stale file cannot survive into a verified one: part files live in their own directory,
are created exclusively and are cut to the declared size before the hash decides. Real
daemons: a contact first sends a long file named like the receiver's part file would have
been, then offers a short file whose transfer_id maps to that name."""

import os
import shutil
import tempfile

from chatp2p_core.codec.filecodec import transfer_wire_id
from daemon import ok
from test_transfer import close_pair, make_file, sha256_of, start_pair

KIB = 1024


def test_an_earlier_file_named_like_a_part_file_does_not_leak_into_a_new_transfer():
    root = tempfile.mkdtemp(prefix="chatp2p-part-")
    a = b = ev_a = ev_b = None
    try:
        a, b, ev_a, ev_b = start_pair(root, "part")
        downloads = os.path.join(root, "part-b", "dl")
        victim_id = "victim-1"
        tid = transfer_wire_id(victim_id).hex()
        # 1. A long file named like the part file of the coming transfer (the old layout).
        planted = os.path.join(root, f".chatp2p-{tid}.part")
        make_file(planted, 256 * KIB, seed=7)
        reply = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": planted, "transfer_id": "plant"}))
        ev_b.wait_data("file_offer", 10, transfer_id=reply["transfer_id"])
        ok(b.request("p2p", "accept_file", {"transfer_id": reply["transfer_id"]}))
        first = ev_b.wait_data("file_received", 30, transfer_id=reply["transfer_id"])[0]
        assert os.path.basename(first["path"]) == f".chatp2p-{tid}.part"
        # 2. A stale part file where this version keeps them (a crash left it behind).
        part_dir = os.path.join(downloads, ".chatp2p-partial")
        os.makedirs(part_dir, mode=0o700, exist_ok=True)
        make_file(os.path.join(part_dir, f"{tid}.part"), 256 * KIB, seed=8)
        # 3. The short file whose transfer id maps to both names.
        short = os.path.join(root, "short.bin")
        expected = make_file(short, 1 * KIB, seed=9)
        ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": short, "transfer_id": victim_id}))
        ev_b.wait_data("file_offer", 10, transfer_id=victim_id)
        ok(b.request("p2p", "accept_file", {"transfer_id": victim_id}))
        received = ev_b.wait_data("file_received", 30, transfer_id=victim_id)[0]
        assert received["sha256"] == expected and received["size"] == 1 * KIB
        assert os.path.getsize(received["path"]) == 1 * KIB
        assert sha256_of(received["path"]) == expected
        assert not os.listdir(part_dir)                       # the part file became the file
        assert oct(os.stat(part_dir).st_mode & 0o777) == "0o700"
    finally:
        close_pair((ev_a, ev_b), (a, b))
        shutil.rmtree(root, ignore_errors=True)
