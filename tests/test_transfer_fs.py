"""File transfers against the file system's refusals, and auto-accept, with real daemons.

* Disk full: the receiver's downloads dir is a tiny tmpfs (root mounts it, the test unmounts
  it). An offer larger than the free space cannot be accepted; a disk that fills up during a
  transfer fails it with "disk full" and keeps the .part; once there is room again,
  `p2p resume_transfer` finishes it with the right SHA-256.
* Permission denied: root reads and writes anything, so these daemons run as `nobody`
  (setpriv). An unreadable source cannot be sent; an unwritable downloads dir cannot take an
  accepted offer; a downloads dir that becomes read-only before the file gets its final name
  fails the transfer with "permission denied" and keeps the .part, and resuming finishes it.
* Auto-accept (`--auto-accept-files`): offers from verified contacts are accepted without a
  word from the user; offers from contacts not verified wait for the user as usual.
"""

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from daemon import Daemon, ok
from events import Events
from poll import wait_for
from test_transfer import close_pair, make_file, part_files, sha256_of, start_pair, transfers

MIB = 1 << 20
NOBODY = 65534
# Without the suite's PYTHONPYCACHEPREFIX (tests/conftest.py): nobody may not write there, and
# with it Python would pass over the system's own compiled standard library.
AS_NOBODY = ("env", "-u", "PYTHONPYCACHEPREFIX", "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")


def _root_reason():
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (to mount a tmpfs / to run daemons as another user)"
    return None


@contextlib.contextmanager
def tiny_tmpfs(path, size):
    """A tmpfs of `size` bytes mounted on `path` (created), unmounted afterwards."""
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def fill(directory, name="filler.bin"):
    """Write zeros into `directory` until it is full; returns the filler's path."""
    path = os.path.join(directory, name)
    block = b"\0" * (64 * 1024)
    with open(path, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError:
            pass
    return path


def marker(a, ev_b, message_id):
    """Alice sends Bob a chat message and waits for it: what she sent before has been handled."""
    ok(a.request("p2p", "send_message", {"peer": "Bob", "message": "marker", "message_id": message_id}))
    ev_b.wait_data("p2p_message_received", 10, message_id=message_id)


# -- disk full ------------------------------------------------------------------------------------
def test_disk_full_refuses_big_offers_fails_mid_transfer_keeps_the_part_and_resumes():
    reason = _root_reason()
    if reason:
        pytest.skip(reason)
    tmp = tempfile.mkdtemp(prefix="chatp2p-diskfull-")
    dl = os.path.join(tmp, "full-b", "dl")
    a = b = ev_a = ev_b = None
    try:
        with tiny_tmpfs(dl, 8 * MIB):
            # 2 MiB/s: the disk fills while the transfer is well under way.
            a, b, ev_a, ev_b = start_pair(tmp, "full", ("--upload-limit", "2048"))
            big = os.path.join(tmp, "too-big.bin")
            make_file(big, 12 * MIB, seed=20)
            tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": big}))["transfer_id"]
            ev_b.wait_data("file_offer", 10, transfer_id=tid)
            reply = b.request("p2p", "accept_file", {"transfer_id": tid})
            assert not reply["success"] and "Not enough space" in reply["error"], reply
            assert transfers(b)[tid]["state"] == "offered"  # the user may free space and try again
            ok(b.request("p2p", "reject_file", {"transfer_id": tid}))

            size = 6 * MIB
            source = os.path.join(tmp, "fits.bin")
            expected = make_file(source, size, seed=21)
            tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
            ev_b.wait_data("file_offer", 10, transfer_id=tid)
            ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
            wait_for(lambda: max([p["bytes"] for p in ev_b.all("file_transfer_progress", transfer_id=tid)]
                                  or [0]) >= MIB, 20, "1 MiB received")
            filler = fill(dl)  # someone else fills the disk
            failed = ev_b.wait_data("file_transfer_failed", 20, transfer_id=tid)[0]
            assert failed["reason"].startswith("cannot write") and failed["reason"].endswith("disk full"), failed
            view = transfers(b)[tid]
            assert view["state"] == "failed" and view["error"].endswith("disk full"), view
            assert len(part_files(dl)) == 1, os.listdir(dl)  # kept, to resume from
            # The sender learns it from the receiver's answers and stops.
            sender_failed = ev_a.wait_data("file_transfer_failed", 10, transfer_id=tid)[0]
            assert "disk full" in sender_failed["reason"], sender_failed
            assert transfers(a)[tid]["state"] == "failed"

            os.unlink(filler)
            ok(b.request("p2p", "resume_transfer", {"transfer_id": tid}))
            received = ev_b.wait_data("file_received", 30, transfer_id=tid)[0]
            assert received["sha256"] == expected == sha256_of(received["path"])
            ev_a.wait_data("file_transfer_completed", 10, transfer_id=tid)
            assert not part_files(dl)
            close_pair((ev_a, ev_b), (a, b))
            a = b = ev_a = ev_b = None
    finally:
        close_pair((ev_a, ev_b), (a, b))
        shutil.rmtree(tmp, ignore_errors=True)


# -- permission denied ----------------------------------------------------------------------------
class NobodyDaemon(Daemon):
    """A chatp2pd running as the unprivileged user `nobody` (root would ignore file modes)."""

    def command(self, data_dir, *extra_args):  # type: ignore[override]
        return [*AS_NOBODY, *Daemon.command(data_dir, *extra_args)]

    def request(self, command, action=None, data=None):
        """Through chatp2pctl run as nobody too: the API refuses other users' connections."""
        body = json.dumps({"command": command, "action": action, "data": data})
        done = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import chatp2p, sys; sys.exit(chatp2p.main_ctl())",
                               "--data-dir", self.data_dir, "--json", "raw", body],
                              capture_output=True, text=True, timeout=30, cwd="/")
        assert done.stdout, f"chatp2pctl failed: {done.stderr}"
        return json.loads(done.stdout)


def _nobody_reason():
    reason = _root_reason()
    if reason:
        return reason
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to run a daemon as a non-root user"
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import chatp2p, chatp2p_core"],
                           capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        return ("needs a non-root user that can run the project (nobody cannot import it here: "
                f"{probe.stderr.strip().splitlines()[-1:]})")
    return None


def _nobody_dir(root, name):
    directory = os.path.join(root, name)
    os.makedirs(os.path.join(directory, "home"), exist_ok=True)
    for dirpath, _, _ in os.walk(directory):
        os.chown(dirpath, NOBODY, NOBODY)
    return directory


def test_permission_denied_on_the_source_the_downloads_dir_and_the_final_name():
    reason = _nobody_reason()
    if reason:
        pytest.skip(reason)
    tmp = tempfile.mkdtemp(prefix="chatp2p-perm-")
    os.chmod(tmp, 0o755)
    a = b = ev_a = ev_b = None
    try:
        dl_b = os.path.join(tmp, "b", "dl")
        a = NobodyDaemon(_nobody_dir(tmp, "a"), "--keepalive-interval", "1", "--upload-limit", "4096",
                         "--downloads-dir", os.path.join(tmp, "a", "dl"))
        b = NobodyDaemon(_nobody_dir(tmp, "b"), "--keepalive-interval", "1", "--downloads-dir", dl_b)
        a.start()
        b.start()
        sa, sb = a.request("status")["data"], b.request("status")["data"]
        ok(a.request("contacts", "add", {"peer": "Bob", "public_key": sb["identity"]["public_key"]}))
        ok(b.request("contacts", "add", {"peer": "Alice", "public_key": sa["identity"]["public_key"]}))
        ev_a, ev_b = Events(a), Events(b)
        ok(a.request("p2p", "connect", {"peer": "Bob", "address": f"127.0.0.1:{sb['p2p']['port']}"}))
        ok(a.request("contacts", "negotiate_keys", {"peer": "Bob"}))

        # 1. A source the daemon's user cannot read.
        secret = os.path.join(tmp, "secret.bin")
        make_file(secret, 4096, seed=30)
        os.chmod(secret, 0o600)  # root's
        reply = a.request("p2p", "send_file", {"peer": "Bob", "file_path": secret, "transfer_id": "perm-src"})
        assert not reply["success"] and reply["error"].endswith("permission denied"), reply
        assert ev_a.wait_data("file_transfer_failed", 5, transfer_id="perm-src")[0]["reason"].endswith("permission denied")

        # 2. A downloads dir it cannot write: the offer cannot be accepted, and stays offered.
        source = os.path.join(tmp, "shared.bin")
        size = 8 * MIB
        expected = make_file(source, size, seed=31)
        os.chmod(source, 0o644)
        os.makedirs(dl_b)
        os.chmod(dl_b, 0o755)  # root's: nobody may not create files in it
        tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
        ev_b.wait_data("file_offer", 10, transfer_id=tid)
        reply = b.request("p2p", "accept_file", {"transfer_id": tid})
        assert not reply["success"] and reply["error"].endswith("permission denied"), reply
        assert transfers(b)[tid]["state"] == "offered"

        # 3. Writable now; read-only again before the file gets its final name.
        os.chown(dl_b, NOBODY, NOBODY)
        os.chmod(dl_b, 0o700)
        ok(b.request("p2p", "accept_file", {"transfer_id": tid}))
        wait_for(lambda: part_files(dl_b), 10, "the .part")
        os.chmod(dl_b, 0o500)  # the .part can still be written, but no name can be added
        failed = ev_b.wait_data("file_transfer_failed", 30, transfer_id=tid)[0]
        assert failed["reason"].startswith("cannot save shared.bin") and failed["reason"].endswith(
            "permission denied"), failed
        assert transfers(b)[tid]["state"] == "failed"
        assert part_files(dl_b), os.listdir(dl_b)
        os.chmod(dl_b, 0o700)
        ok(b.request("p2p", "resume_transfer", {"transfer_id": tid}))
        received = ev_b.wait_data("file_received", 30, transfer_id=tid)[0]
        assert received["sha256"] == expected == sha256_of(received["path"])
        assert os.stat(received["path"]).st_uid == NOBODY
        done = ev_a.wait_data("file_transfer_completed", 10, transfer_id=tid)[0]
        assert done["wire_bytes"] < 1.5 * size, done  # resuming did not send the file again
    finally:
        close_pair((ev_a, ev_b), (a, b))
        shutil.rmtree(tmp, ignore_errors=True)


# -- auto-accept ----------------------------------------------------------------------------------
def test_auto_accept_takes_offers_from_verified_contacts_only():
    tmp = tempfile.mkdtemp(prefix="chatp2p-auto-")
    a = b = ev_a = ev_b = None
    try:
        a, b, ev_a, ev_b = start_pair(tmp, "auto", (), ("--auto-accept-files",))
        size = 2 * MIB
        source = os.path.join(tmp, "auto.bin")
        expected = make_file(source, size, seed=40)
        # Alice is a contact of Bob's, but not verified: the offer waits for him.
        assert not [c for c in ok(b.request("contacts", "list"))["data"] if c["name"] == "Alice"][0]["verified"]
        waiting = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
        ev_b.wait_data("file_offer", 10, transfer_id=waiting)
        # Bob decides when the offer arrives; a chat message Alice sends afterwards on the same
        # session arrives after that decision.
        marker(a, ev_b, "after-offer-1")
        assert transfers(b)[waiting]["state"] == "offered"
        assert not ev_b.all("file_transfer_started", transfer_id=waiting)
        # Verified: the next offer is accepted at once; the event tells the user all the same.
        ok(b.request("contacts", "verify", {"peer": "Alice"}))
        tid = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
        ev_b.wait_data("file_offer", 10, transfer_id=tid)
        received = ev_b.wait_data("file_received", 30, transfer_id=tid)[0]
        assert received["sha256"] == expected == sha256_of(received["path"])
        ev_a.wait_data("file_transfer_completed", 10, transfer_id=tid)
        # Verifying does not accept what was already waiting: that was the user's to decide.
        assert transfers(b)[waiting]["state"] == "offered"
        ok(b.request("p2p", "reject_file", {"transfer_id": waiting}))
        # Unverified again: back to asking.
        ok(b.request("contacts", "verify", {"peer": "Alice", "verified": False}))
        again = ok(a.request("p2p", "send_file", {"peer": "Bob", "file_path": source}))["transfer_id"]
        ev_b.wait_data("file_offer", 10, transfer_id=again)
        marker(a, ev_b, "after-offer-2")
        assert transfers(b)[again]["state"] == "offered"
        assert not ev_b.all("file_transfer_started", transfer_id=again)
    finally:
        close_pair((ev_a, ev_b), (a, b))
        shutil.rmtree(tmp, ignore_errors=True)
