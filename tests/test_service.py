"""Running as a service: the shipped systemd units pass `systemd-analyze verify`, logs rotate
(0600 files), and no timestamp of ours doubles journald's."""

import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

from chatp2p_core.logfiles import PrivateRotatingFileHandler, stderr_is_journal
from daemon import Daemon
from poll import wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent
UNITS = ROOT / "conf" / "systemd"
DAEMON_SCRIPT = pathlib.Path(sys.executable).parent / "chatp2pd"   # the installed launcher
TMP = None


def setup_module():
    global TMP
    TMP = tempfile.mkdtemp(prefix="chatp2p-service-")


def teardown_module():
    shutil.rmtree(TMP, ignore_errors=True)


def verify(unit: pathlib.Path, user: bool, home: pathlib.Path) -> subprocess.CompletedProcess:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: .ci/run installs Debian systemd"
    runtime = home / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_COLOR="0")
    return subprocess.run(["systemd-analyze", *(["--user"] if user else []), "verify", str(unit)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=home)


def test_the_user_unit_verifies():
    home = pathlib.Path(TMP, "home")
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "chatp2pd").symlink_to(DAEMON_SCRIPT)   # where pipx puts it
    unit = home / "chatp2pd.service"
    shutil.copy(UNITS / "chatp2pd.service", unit)
    proc = verify(unit, True, home)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc
    text = unit.read_text()
    assert "ExecStart=%h/.local/bin/chatp2pd\n" in text and "WantedBy=default.target" in text
    # the check is real: a unit naming a missing program fails
    unit.write_text(text.replace("%h/.local/bin/chatp2pd", "%h/.local/bin/missing"))
    assert verify(unit, True, home).returncode != 0


def test_the_hardened_rendezvous_unit_verifies_and_is_the_one_in_hosting_md():
    shipped = (UNITS / "chatp2p-rendezvous.service").read_text()
    assert shipped in (ROOT / "docs" / "HOSTING.md").read_text()
    for line in ("DynamicUser=yes", "StateDirectory=chatp2p-rendezvous", "ProtectSystem=strict",
                 "Wants=network-online.target", "After=network-online.target", "NoNewPrivileges=yes"):
        assert line + "\n" in shipped, line
    home = pathlib.Path(TMP, "system")
    home.mkdir()
    unit = home / "chatp2p-rendezvous.service"
    unit.write_text(shipped.replace("/usr/local/bin/chatp2pd", str(DAEMON_SCRIPT)))
    proc = verify(unit, False, home)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc


def test_log_files_rotate_and_stay_private():
    folder = pathlib.Path(TMP, "logs")
    folder.mkdir()
    path = folder / "chatp2p.log"
    handler = PrivateRotatingFileHandler(str(path), max_bytes=2000, backups=2)
    logger = logging.getLogger("chatp2p.test.rotation")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for n in range(200):
            logger.warning("line %d %s", n, "x" * 40)
    finally:
        logger.removeHandler(handler)
        handler.close()
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["chatp2p.log", "chatp2p.log.1", "chatp2p.log.2"]
    assert all((folder / name).stat().st_mode & 0o777 == 0o600 for name in files)
    assert all((folder / name).stat().st_size <= 2100 for name in files)
    assert "line 199" in path.read_text()


def test_no_timestamp_of_ours_under_journald():
    """JOURNAL_STREAM names stderr's device:inode when systemd connects it to the journal."""
    plain = Daemon(pathlib.Path(TMP, "plain"))
    plain.start()
    plain.stop()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", plain.stderr_text()), plain.stderr_text()

    folder = pathlib.Path(TMP, "journal")
    folder.mkdir()
    log_path = folder / "stderr.log"
    with open(log_path, "wb") as log:
        info = os.fstat(log.fileno())
        env = dict(Daemon.environment(folder), JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}")
        proc = subprocess.Popen(Daemon.command(folder / "data"), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "ready" in log_path.read_text(), 20, "the ready line")
    finally:
        proc.terminate()
        proc.wait(10)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines and all(line.startswith(("INFO ", "WARNING ", "DEBUG ", "ERROR ")) for line in lines), lines
    with open(log_path) as stream:
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "1:2"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
