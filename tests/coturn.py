"""Test helper: a private coturn (`turnserver`) on loopback, started and always stopped.

    with Coturn(addresses=("127.0.0.1", "127.0.0.2")) as server:      # STUN only (-S)
        server.address("127.0.0.2")        # ("127.0.0.2", port)

    with Coturn(turn=True, user="alice", password="s3cret") as server:  # TURN, long-term creds

Everything stays on this machine: coturn listens only on the given loopback addresses, on a
free port P (and P+1, coturn's RFC 5780 "alternative" port, used to answer CHANGE-REQUEST),
and relays from a private port range. Its database, pid file and log live in a temporary
directory. `start()` returns once coturn answers a Binding on every listening address;
`stop()` (also on any failure in `start` or in the `with` body) terminates it, kills it after
a grace period, and removes the directory. The log is kept in memory (`log`) for assertions.

Uses plain blocking sockets (no gevent), so it works in any test process.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Optional, Sequence

from chatp2p_core.codec import stun

START_TIMEOUT = 10.0
STOP_GRACE = 3.0
RELAY_RANGE = 64  # relay ports per server


def turnserver_path() -> Optional[str]:
    return shutil.which("turnserver")


def _free(host: str, port: int) -> bool:
    """Whether UDP and TCP `port` are free on `host` (coturn listens on both)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


def free_port_pair(hosts: Sequence[str]) -> int:
    """A port P such that P and P+1 are free on every host (P+1: coturn's alternative port)."""
    for _ in range(200):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((hosts[0], 0))
        port = probe.getsockname()[1]
        probe.close()
        if port < 65535 and all(_free(h, p) for h in hosts for p in (port, port + 1)):
            return port
    raise RuntimeError("no free port pair for coturn")


def wait_for_binding(address: tuple[str, int], deadline: float) -> bool:
    """Send Binding requests until one is answered or the monotonic deadline passes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            sock.sendto(stun.encode(request), address)
            try:
                data, _ = sock.recvfrom(2048)
            except OSError:  # timeout, or ICMP port unreachable while coturn starts
                continue
            try:
                if stun.decode(data).transaction_id == request.transaction_id:
                    return True
            except stun.StunError:
                continue
        return False
    finally:
        sock.close()


class Coturn:
    """One coturn process; see the module docstring."""

    def __init__(self, addresses: Sequence[str] = ("127.0.0.1",), *, turn: bool = False,
                 user: str = "alice", password: str = "s3cret", realm: str = "chatp2p.test",
                 extra: Sequence[str] = ()) -> None:
        self.addresses = tuple(addresses)
        self.turn = turn
        self.user = user
        self.password = password
        self.realm = realm
        self.extra = tuple(extra)
        self.port: Optional[int] = None
        self.directory: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self._logfile = None
        self.log = ""

    def address(self, host: Optional[str] = None) -> tuple[str, int]:
        assert self.port is not None, "coturn is not running"
        return (host or self.addresses[0], self.port)

    def url(self, host: Optional[str] = None) -> str:
        return "stun:%s:%d" % self.address(host)

    def command(self) -> list[str]:
        assert self.directory is not None and self.port is not None
        low = random.randrange(20000, 60000 - RELAY_RANGE)
        cmd = [turnserver_path() or "turnserver", "-n", "--no-cli", "--log-file", "stdout",
               "--simple-log", "--no-tls", "--no-dtls", "--no-tcp",
               "--pidfile", os.path.join(self.directory, "turn.pid"),
               "--userdb", os.path.join(self.directory, "turndb"),
               "--listening-port", str(self.port),
               "--min-port", str(low), "--max-port", str(low + RELAY_RANGE - 1)]
        for host in self.addresses:
            cmd += ["-L", host]
        if self.turn:
            cmd += ["--lt-cred-mech", "--user", f"{self.user}:{self.password}", "--realm", self.realm,
                    "--allow-loopback-peers"]
        else:
            cmd += ["-S"]
        return cmd + list(self.extra)

    def start(self) -> "Coturn":
        if turnserver_path() is None:
            raise RuntimeError("turnserver (Debian package coturn) is not installed")
        self.directory = tempfile.mkdtemp(prefix="coturn-")
        try:
            self.port = free_port_pair(self.addresses)
            self._logfile = open(os.path.join(self.directory, "turn.log"), "wb")
            self.proc = subprocess.Popen(self.command(), stdout=self._logfile, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.directory)
            deadline = time.monotonic() + START_TIMEOUT
            for host in self.addresses:
                while not wait_for_binding((host, self.port), min(deadline, time.monotonic() + 0.5)):
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"coturn exited with {self.proc.returncode}:\n{self.read_log()}")
                    if time.monotonic() >= deadline:
                        raise RuntimeError(f"coturn did not answer on {host}:{self.port}:\n{self.read_log()}")
        except BaseException:
            self.stop()
            raise
        return self

    def read_log(self) -> str:
        if self.directory is None:
            return self.log
        try:
            with open(os.path.join(self.directory, "turn.log"), "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return self.log

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.directory is not None:
            self.log = self.read_log()
            if self._logfile is not None:
                self._logfile.close()
                self._logfile = None
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> "Coturn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
