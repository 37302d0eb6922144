"""Files a running daemon leaves in its data dir for its clients: endpoints and the API token.

`run.json` tells `chatp2pctl --data-dir` and `chatp2p --connect` where the API and the event
socket are (ports may be chosen by the system). `ipc.token` guards a non-loopback API.
Both are 0600 inside the 0700 data dir.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets

from .util import proc_tcp_rows, write_private_file

ENDPOINTS_FILE = "run.json"
TOKEN_FILE = "ipc.token"


class RuntimeFiles:
    def __init__(self, data_dir: pathlib.Path) -> None:
        self.data_dir = data_dir

    def ensure_token(self) -> str:
        """The API token, created on first use (256 random bits, hex)."""
        path = self.data_dir / TOKEN_FILE
        token = read_token(self.data_dir)
        if token is None:
            token = secrets.token_hex(32)
            write_private_file(path, token.encode() + b"\n")
        return token

    def write_endpoints(self, status: dict) -> None:
        info = {
            "pid": os.getpid(),
            "ipc_host": status["ipc"]["host"],
            "ipc_port": status["ipc"]["port"],
            "events": status["events"]["endpoints"],
            "p2p_port": status["p2p"]["port"],
            "tls_fingerprint": status["ipc"].get("tls_fingerprint"),
        }
        write_private_file(self.data_dir / ENDPOINTS_FILE, json.dumps(info).encode())

    def remove_endpoints(self) -> None:
        (self.data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)


def daemon_owns_port(pid: object, port: int) -> bool:
    """True when process `pid` holds a listening TCP socket on `port` (Linux /proc): the
    run.json naming it is not stale, and no other program took the port since. Clients send
    the data dir's token only then."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    inodes = {f"socket:[{parts[9]}]" for parts in proc_tcp_rows()
              if len(parts) > 9 and parts[3] == "0A" and parts[1].rsplit(":", 1)[-1] == f"{port:04X}"}
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def read_token(data_dir: pathlib.Path) -> str | None:
    try:
        return (data_dir / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def read_endpoints(data_dir: pathlib.Path) -> dict | None:
    """The endpoints of the daemon running on `data_dir`, or None if none is running."""
    try:
        return json.loads((data_dir / ENDPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return None
