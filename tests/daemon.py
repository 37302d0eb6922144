"""Test helper: run a real `chatp2pd` in a subprocess on a temporary data dir.

Every daemon gets its own directory (data dir, HOME, stderr log), asks the system for free
ports, and binds loopback only, so tests never touch the user's files or the network.
Usage: `node = Daemon(tmpdir, "--idle-timeout", "1"); node.start(); node.request("status");
node.stop()`. `ok(reply)` asserts that an API reply succeeded and returns it.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

from chatp2p_core.api.ctl import ApiClient

# Safe defaults first: extra arguments come later on the command line and win.
BASE_ARGS = ("--ipc-port", "0", "--p2p-port", "0", "--p2p-host", "127.0.0.1")


class Daemon:
    """One chatp2pd process; `start()` returns once it answers on its API port."""

    def __init__(self, tmpdir: str | os.PathLike, *extra_args: str) -> None:
        self.dir = pathlib.Path(tmpdir)
        self.data_dir = str(self.dir / "data")
        self.extra_args = tuple(extra_args)
        self.log_path = self.dir / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.host = "127.0.0.1"
        self.endpoints: dict = {}
        self._other_id: str | None = None

    # -- building blocks, also for tests that run the daemon themselves ---------------------
    @staticmethod
    def command(data_dir: str | os.PathLike, *extra_args: str) -> list[str]:
        """The daemon's argv: `python -m chatp2p` (its __main__ is the daemon) on `data_dir`."""
        return [sys.executable, "-m", "chatp2p", "--data-dir", os.fspath(data_dir), *BASE_ARGS, *extra_args]

    @staticmethod
    def environment(tmpdir: str | os.PathLike) -> dict[str, str]:
        """os.environ without CHATP2P_* settings nor XDG_* directories, with HOME in `tmpdir`
        (no user conf file, no user data dir)."""
        home = pathlib.Path(tmpdir) / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATP2P_", "XDG_"))
               and k != "DBUS_SESSION_BUS_ADDRESS"}   # no desktop notifications from tests
        env["HOME"] = str(home)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float = 20) -> "Daemon":
        """Launch and wait for DATA_DIR/run.json written by this very process (it is then ready)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("this daemon is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        run_file = pathlib.Path(self.data_dir, "run.json")
        with open(self.log_path, "wb") as log:  # one log per run: stderr_text() is this run's
            self.proc = subprocess.Popen(self.command(self.data_dir, *self.extra_args),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.environment(self.dir), cwd=self.dir)
        deadline = time.monotonic() + timeout
        while True:
            info = _read_json(run_file)
            if info and info.get("pid") == self.proc.pid:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"chatp2pd exited with {self.proc.returncode} before it was ready:\n"
                                   f"{self.stderr_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"chatp2pd was not ready within {timeout} s:\n{self.stderr_text()}")
            time.sleep(0.02)
        self.endpoints = info
        self.port = int(info["ipc_port"])
        host = str(info.get("ipc_host") or "127.0.0.1")
        self.host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return self

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, wait, return the exit code; a daemon that hangs is killed and reported."""
        if self.proc is None:
            raise RuntimeError("this daemon was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"chatp2pd ignored SIGTERM for {timeout} s:\n{self.stderr_text()}") from None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, for a daemon in a bad state (leaves run.json behind, like a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()

    # -- talking to it ----------------------------------------------------------------------
    def client(self, timeout: float = 30) -> ApiClient:
        """A new API connection (close it, or use `with`); carries the token if there is one."""
        if self.port is None:
            raise RuntimeError("start the daemon first")
        token_path = pathlib.Path(self.data_dir, "ipc.token")
        token = token_path.read_text().strip() if token_path.exists() else None
        return ApiClient.connect(self.host, self.port, token, timeout)

    def request(self, command: str, action: str | None = None, data: Any = None) -> dict:
        """One request on a fresh connection; returns the whole response."""
        with self.client() as client:
            return client.request(command, action, data)

    def other_id(self) -> str:
        """The ID of a key pair that is not this node's: a valid contact to add."""
        if self._other_id is None:
            reply = self.request("crypto", "generate_keypair")
            assert reply["success"], reply
            data = reply["data"]
            self._other_id = data.get("id") or data["fingerprint"]
        return self._other_id

    def stderr_text(self) -> str:
        """What the daemon wrote to stdout/stderr during its last run."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon has used so far (from /proc)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ok(reply: dict, what: str = "") -> dict:
    """Assert that an API reply succeeded; return the whole reply (its data is reply["data"],
    a send_file's id reply["transfer_id"])."""
    assert reply.get("success") is True, f"{what}: {reply}" if what else reply
    return reply


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
