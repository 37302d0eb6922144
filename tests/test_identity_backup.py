"""Identity backups: the sealing codec, and `chatp2pctl identity export/import` on real data
dirs (a real daemon runs on the restored one)."""

import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from chatp2p_core.crypto import backup, identity as ident, pqc
from daemon import Daemon

CTL = [sys.executable, "-c", "import chatp2p, sys; sys.exit(chatp2p.main_ctl())"]
PASS = "correct horse battery staple"
TMP = None


def setup_module():
    global TMP
    TMP = tempfile.mkdtemp(prefix="chatp2p-backup-")


def teardown_module():
    shutil.rmtree(TMP, ignore_errors=True)


# -- the codec --------------------------------------------------------------------------------
def test_seal_and_open_round_trip_and_refusals():
    sealed = backup.seal(b"secret key bytes", PASS, log2_n=10)
    assert backup.open_sealed(sealed, PASS) == b"secret key bytes"
    assert b"secret" not in sealed
    assert backup.seal(b"secret key bytes", PASS, log2_n=10) != sealed   # fresh salt and nonce
    with pytest.raises(backup.BackupError, match="Wrong passphrase"):
        backup.open_sealed(sealed, PASS + "!")
    damaged = bytearray(sealed)
    damaged[-1] ^= 1
    with pytest.raises(backup.BackupError, match="Wrong passphrase"):
        backup.open_sealed(bytes(damaged), PASS)
    header = bytearray(sealed)
    header[9] = 2        # r changed: the header is authenticated too
    with pytest.raises(backup.BackupError):
        backup.open_sealed(bytes(header), PASS)
    for hostile in (b"", b"CP2PBAK1", sealed[:40], b"x" * 100, b"CP2PBAK1" + bytes([40]) + sealed[9:],
                    sealed + b"\0" * backup.MAX_BACKUP):
        started = time.monotonic()
        with pytest.raises(backup.BackupError):
            backup.open_sealed(hostile, PASS)
        assert time.monotonic() - started < 5   # a huge scrypt cost in a hostile header is refused
    with pytest.raises(backup.BackupError, match="at least 8"):
        backup.seal(b"x", "short")


# -- chatp2pctl identity ------------------------------------------------------------------------
def ctl(data_dir, *args, stdin=PASS + "\n"):
    return subprocess.run(CTL + ["--data-dir", str(data_dir), "identity", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, env=Daemon.environment(TMP))


def make_identity(data_dir) -> ident.Identity:
    return ident.load_or_create(pathlib.Path(data_dir), pqc.PycryptodomeBackend())


def test_export_import_round_trip_force_and_wrong_passphrase():
    home = pathlib.Path(TMP, "home-node")
    mine = make_identity(home)
    saved = pathlib.Path(TMP, "my-identity.backup")
    proc = ctl(home, "export", str(saved))
    assert proc.returncode == 0 and proc.stdout == f"exported {mine.id} to {saved}\n", proc
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert (home / "identity.key").read_bytes() not in saved.read_bytes()
    proc = ctl(home, "export", str(saved))
    assert proc.returncode == 2 and "exists" in proc.stderr, proc

    # a new machine: nothing there yet
    fresh = pathlib.Path(TMP, "new-laptop")
    proc = ctl(fresh, "import", str(saved), stdin="not the passphrase\n")
    assert proc.returncode == 1 and "Wrong passphrase" in proc.stderr, proc
    assert not (fresh / "identity.key").exists()
    proc = ctl(fresh, "import", str(saved))
    assert proc.returncode == 0 and proc.stdout == f"imported {mine.id} into {fresh}\n", proc
    assert (fresh / "identity.key").read_bytes() == (home / "identity.key").read_bytes()
    assert stat.S_IMODE((fresh / "identity.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700

    # a machine with another identity: refused unless --force, which keeps the replaced one
    other_dir = pathlib.Path(TMP, "other")
    other = make_identity(other_dir)
    before = (other_dir / "identity.key").read_bytes()
    proc = ctl(other_dir, "import", str(saved))
    assert proc.returncode == 1 and "--force" in proc.stderr, proc
    assert (other_dir / "identity.key").read_bytes() == before
    proc = ctl(other_dir, "import", str(saved), "--force")
    assert proc.returncode == 0, proc
    assert (other_dir / "identity.replaced.key").read_bytes() == before
    assert ident.decode_private((other_dir / "identity.key").read_bytes()).id == mine.id != other.id

    # the restored data dir runs as the same node; import is refused while it runs
    node = Daemon(pathlib.Path(TMP, "restored-run"))
    node.data_dir = str(fresh)
    node.start()
    try:
        assert node.request("status")["data"]["identity"]["fingerprint"] == mine.id
        proc = ctl(fresh, "import", str(saved), "--force")
        assert proc.returncode == 1 and "stop the daemon first" in proc.stderr, proc
    finally:
        node.stop()


def test_passphrase_file_and_hostile_backup_files():
    home = pathlib.Path(TMP, "with-file")
    make_identity(home)
    secret_file = pathlib.Path(TMP, "pass.txt")
    secret_file.write_text(PASS + "\n")
    saved = pathlib.Path(TMP, "via-file.backup")
    assert ctl(home, "export", str(saved), "--passphrase-file", str(secret_file), stdin="").returncode == 0
    assert ctl(pathlib.Path(TMP, "via-file-2"), "import", str(saved), "--passphrase-file",
               str(secret_file), stdin="").returncode == 0
    assert ctl(home, "export", str(pathlib.Path(TMP, "short.backup")), stdin="short\n").returncode == 2
    junk = pathlib.Path(TMP, "junk.backup")
    junk.write_bytes(os.urandom(5000))
    proc = ctl(pathlib.Path(TMP, "junk-target"), "import", str(junk))
    assert proc.returncode == 1 and "Not a ChatP2P identity backup" in proc.stderr, proc
    proc = ctl(pathlib.Path(TMP, "junk-target"), "import", str(pathlib.Path(TMP, "missing.backup")))
    assert proc.returncode == 1 and "cannot read" in proc.stderr, proc
    damaged = pathlib.Path(TMP, "damaged")
    damaged.mkdir(mode=0o700)
    (damaged / "identity.key").write_bytes(b"CP2P" + os.urandom(50))
    proc = ctl(damaged, "export", str(pathlib.Path(TMP, "damaged.backup")))
    assert proc.returncode == 1 and "Invalid private key" in proc.stderr, proc
    # a backup of something that is not a key: sealed correctly, refused on import
    not_a_key = pathlib.Path(TMP, "not-a-key.backup")
    not_a_key.write_bytes(backup.seal(b"just some bytes", PASS, log2_n=10))
    proc = ctl(pathlib.Path(TMP, "junk-target"), "import", str(not_a_key))
    assert proc.returncode == 1 and "Invalid private key" in proc.stderr, proc
