"""XDG base directories: the variables move every path; unset, nothing moves; an identity at
the old data dir keeps being used (never a second one)."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from chatp2p_core import config as cfg
from daemon import Daemon
from poll import wait_for

TMP = None


def setup_module():
    global TMP
    TMP = tempfile.mkdtemp(prefix="chatp2p-xdg-")


def teardown_module():
    shutil.rmtree(TMP, ignore_errors=True)


def xdg_env(root: pathlib.Path) -> dict[str, str]:
    return {"HOME": str(root / "home"), "XDG_CONFIG_HOME": str(root / "cfg"), "XDG_DATA_HOME": str(root / "data"),
            "XDG_STATE_HOME": str(root / "state"), "XDG_RUNTIME_DIR": str(root / "run")}


def test_unset_nothing_moves():
    home = pathlib.Path(TMP, "plain")
    config = cfg.load(None, {"HOME": str(home)})
    assert config.values["data_dir"] == cfg.DEFAULT_DATA_DIR
    assert config.values["downloads_dir"] == "~/Downloads/chatp2p"
    assert config.state_dir is None and config.runtime_dir is None
    assert config.runtime_path == config.data_path


def test_the_variables_move_every_path():
    root = pathlib.Path(TMP, "moved")
    env = xdg_env(root)
    (root / "cfg" / "chatp2p").mkdir(parents=True)
    (root / "cfg" / "chatp2p" / "chatp2p.conf").write_text("[node]\nname = from-xdg-conf\n")
    (root / "cfg" / "user-dirs.dirs").write_text('# written by xdg-user-dirs-update\n'
                                                 'XDG_DOWNLOAD_DIR="$HOME/Téléchargements"\n')
    config = cfg.load(None, env)
    assert config.config_path == root / "cfg" / "chatp2p" / "chatp2p.conf"
    assert config.name == "from-xdg-conf"
    assert config.data_path == root / "data" / "chatp2p"
    assert config.downloads_dir == str(root / "home" / "Téléchargements" / "chatp2p")
    assert config.state_dir == root / "state" / "chatp2p"
    assert config.runtime_path.parent == root / "run"
    # explicit settings still win over the XDG defaults
    config = cfg.load(None, {**env, "CHATP2P_DATA_DIR": str(root / "explicit")})
    assert config.data_path == root / "explicit"
    # a relative XDG value is ignored, as the spec says
    assert cfg.load(None, {**env, "XDG_DATA_HOME": "relative/dir"}).values["data_dir"] == cfg.DEFAULT_DATA_DIR


def test_a_real_daemon_follows_the_variables():
    root = pathlib.Path(TMP, "daemon")
    env = {**Daemon.environment(root), **xdg_env(root)}
    (root / "run").mkdir(mode=0o700)
    command = [sys.executable, "-m", "chatp2p", "--ipc-port", "0", "--p2p-port", "0", "--p2p-host", "127.0.0.1"]
    with open(root / "daemon.log", "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        run_json = root / "data" / "chatp2p" / "run.json"
        wait_for(run_json.exists, 20, "run.json in XDG_DATA_HOME/chatp2p")
        assert (root / "data" / "chatp2p" / "identity.key").exists()
        sockets = list((root / "run").glob("chatp2p-*/events.sock"))
        assert len(sockets) == 1 and not (root / "data" / "chatp2p" / "events.sock").exists()
        assert not (root / "home" / ".local").exists()          # nothing at the old places
        # chatp2pctl finds the daemon through the same variables
        status = subprocess.run([sys.executable, "-c", "import chatp2p, sys; sys.exit(chatp2p.main_ctl())", "status"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and f"ipc://{sockets[0]}" in status.stdout, status
    finally:
        proc.terminate()
        proc.wait(10)
    assert not sockets[0].exists()


def test_an_identity_at_the_old_path_keeps_being_used():
    root = pathlib.Path(TMP, "legacy")
    old = root / "home" / ".local" / "share" / "chatp2p"
    old.mkdir(parents=True)
    (old / "identity.key").write_bytes(b"an existing identity")
    env = xdg_env(root)
    assert cfg.load(None, env).data_path == old
    # once the new place has an identity of its own (moved there), that one is used
    new = root / "data" / "chatp2p"
    new.mkdir(parents=True)
    (new / "identity.key").write_bytes(b"moved")
    assert cfg.load(None, env).data_path == new


def test_the_app_log_goes_to_the_state_dir():
    import chatp2p

    root = pathlib.Path(TMP, "state-log")
    config = cfg.load(None, xdg_env(root))
    assert chatp2p._app_log_path(config) == str(root / "state" / "chatp2p" / "chatp2p.log")
    assert (root / "state" / "chatp2p").stat().st_mode & 0o777 == 0o700
    plain = cfg.load(None, {"HOME": str(root / "home"), "CHATP2P_DATA_DIR": str(root / "d")})
    assert chatp2p._app_log_path(plain) == str(root / "d" / "chatp2p.log")
    assert os.path.isdir(root / "d")
