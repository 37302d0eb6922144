"""The real `chatp2p` program in a terminal: tmux drives it, a real chatp2pd is the other side.

The scenario: add Bob by ID in the UI, /connect, chat both ways (✓✓), a multi-line message,
files both ways (/sendfile; an offer accepted with /accept), resizes (80x24, 40x10 too small),
help, a wrong command, Ctrl-Q.

Each test owns a private tmux server (`tmux -L <unique socket> -f /dev/null`), killed at the
end. Both nodes bind loopback only, on ports the system picks; HOME is a temporary directory.
The pane runs the app, then prints its exit code and `stty -a`, so the test sees that the
process exited 0 and left the terminal as it found it.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import wcwidth

from chatp2p_core.api.ctl import ApiClient
from chatp2p_core.lockfile import DataDirLock
from daemon import Daemon
from poll import wait_for

ID_RE = re.compile(r"\b[a-z2-7]{5}(?:-[a-z2-7]{5}){10}-[a-z2-7]{3}\b")
APP = (sys.executable, "-c", "import sys, chatp2p; sys.exit(chatp2p.main_app())")
NODE_ARGS = ("--ipc-port", "0", "--p2p-port", "0", "--p2p-host", "127.0.0.1")

_tmp = None
_bob = None


def setup_module():
    global _tmp, _bob
    if shutil.which("tmux") is None:
        import pytest
        pytest.skip("tmux is not installed (apt-get install tmux; .ci/run installs it)", allow_module_level=True)
    _tmp = tempfile.mkdtemp(prefix="chatp2p-ui-")
    _bob = Daemon(os.path.join(_tmp, "bob"), "--name", "bob").start()


def teardown_module():
    if _bob is not None:
        _bob.stop()
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)


class Tmux:
    """A private tmux server; sessions run shell scripts that report the exit code and stty."""

    def __init__(self, workdir: str) -> None:
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = f"chatp2p-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.env = Daemon.environment(self.workdir)
        self.env.pop("TMUX", None)
        self.env["CHATP2P_ONLINE"] = "false"   # a user who chose private mode (the choice screen has its test)

    def tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], env=self.env,
                                capture_output=True, text=True, timeout=20)
        if result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def start(self, name: str, argv, cols: int = 120, rows: int = 40) -> None:
        script = self.workdir / f"{name}.sh"
        script.write_text("#!/bin/sh\n"
                          f"cd {shlex.quote(str(self.workdir))}\n"
                          f"{shlex.join(argv)}\n"
                          'echo "EXIT=$?"\n'
                          "stty -a\n"
                          "sleep 600\n")
        script.chmod(0o755)
        self.tmux("new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows), str(script))
        # resize-window needs a manual window size (set per session: a global `set -g` before a
        # second new-session crashes tmux 3.3a)
        self.tmux("set-option", "-t", name, "window-size", "manual")

    def screen(self, name: str) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", name)

    def keys(self, name: str, *keys: str) -> None:
        self.tmux("send-keys", "-t", name, *keys)

    def type(self, name: str, text: str, enter: bool = True) -> None:
        self.tmux("send-keys", "-t", name, "-l", text)
        if enter:
            self.tmux("send-keys", "-t", name, "Enter")

    def resize(self, name: str, cols: int, rows: int) -> None:
        self.tmux("resize-window", "-t", name, "-x", str(cols), "-y", str(rows))

    def wait(self, name: str, check, timeout: float = 20.0, what: str = "") -> str:
        """Poll the pane until `check(text)` (or the string `check` is on screen)."""
        predicate = (lambda text: check in text) if isinstance(check, str) else check
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(name)
            if predicate(text):
                if os.environ.get("UI_TIMING"):
                    print(f"{time.monotonic() - deadline + timeout:6.2f}s {what or check}"[:100])
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout} s for {what or check!r}; the screen:\n{text}")
            time.sleep(0.1)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env, capture_output=True, timeout=20)
        socket_dir = os.path.join(os.environ.get("TMUX_TMPDIR") or "/tmp", f"tmux-{os.getuid()}")
        try:
            os.unlink(os.path.join(socket_dir, self.socket))   # tmux leaves its socket file behind
        except OSError:
            pass


def api(port: int) -> ApiClient:
    return ApiClient.connect("127.0.0.1", port, timeout=20)


def bob_info() -> tuple[str, int]:
    status = _bob.request("status")["data"]
    return status["identity"]["fingerprint"], status["p2p"]["port"]


def wait_run_json(data_dir: pathlib.Path, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads((data_dir / "run.json").read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"{data_dir}/run.json never appeared")


def wait_for_transfer(client: ApiClient, match, timeout: float = 20.0) -> dict:
    """Poll `p2p transfers` until one matches."""
    deadline = time.monotonic() + timeout
    while True:
        found = [t for t in client.call("p2p", "transfers") if match(t)]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching transfer within {timeout} s: {client.call('p2p', 'transfers')}")
        time.sleep(0.1)


def conversation(text: str) -> str:
    """The part of the screen right of the contact column."""
    return "\n".join(line.split("│", 1)[1] for line in text.splitlines()[1:] if "│" in line)


def chat_with_bob(tmux: Tmux, name: str, my_id: str, my_port: int, label: str) -> None:
    """The shared scenario: add Bob by ID, Bob adds me, connect, talk both ways, resize, quit."""
    bob_id, bob_port = bob_info()
    tmux.type(name, f"/add Bob {bob_id}")
    tmux.wait(name, "Added Bob")
    reply = _bob.request("contacts", "add", {"peer": label, "public_key": my_id})
    assert reply["success"], reply
    tmux.type(name, f"/connect Bob 127.0.0.1:{bob_port}")
    tmux.wait(name, "● online", what="Bob online")

    tmux.type(name, "hello bob, 你好 👋")
    screen = tmux.wait(name, lambda t: any("me: hello bob" in line and "✓✓" in line
                                           for line in conversation(t).splitlines()), what="✓✓ delivered")
    with _bob.client() as bob:
        bodies = [m["body"] for m in bob.call("p2p", "history", {"peer": label})]
        assert "hello bob, 你好 👋" in bodies
        bob.call("p2p", "send_message", {"peer": label, "message": "hi from bob 😀 — ça va ?"})
    screen = tmux.wait(name, "Bob: hi from bob 😀 — ça va ?")
    assert "✓✓" in conversation(screen)

    # a multi-line message: Alt-Enter makes the new line, Enter sends
    tmux.type(name, "line one", enter=False)
    tmux.keys(name, "M-Enter")
    tmux.type(name, "line two")
    tmux.wait(name, lambda t: "me: line one" in t and "line two" in t and t.count("✓✓") >= 2)

    # files both ways: the offer, progress, then the saved path / done
    outgoing = tmux.workdir / "notes.bin"
    outgoing.write_bytes(os.urandom(300_000))
    tmux.type(name, f"/sendfile {outgoing}")
    tmux.wait(name, "notes.bin")
    with _bob.client() as bob:
        offer = wait_for_transfer(bob, lambda t: t["direction"] == "in" and t["state"] == "offered")
        bob.call("p2p", "accept_file", {"transfer_id": offer["transfer_id"]})
        done = wait_for_transfer(bob, lambda t: t["transfer_id"] == offer["transfer_id"]
                                 and t["state"] == "completed")
    tmux.wait(name, "✓ done", what="the sent file done")
    assert pathlib.Path(done["path"]).read_bytes() == outgoing.read_bytes()

    incoming = pathlib.Path(_bob.dir, f"photo-for-{label}.jpg")
    incoming.write_bytes(os.urandom(200_000))
    with _bob.client() as bob:
        bob.call("p2p", "send_file", {"peer": label, "file_path": str(incoming)})
    tmux.wait(name, lambda t: f"photo-for-{label}.jpg" in t and "Accept" in t, what="the file offer")
    tmux.type(name, "/accept")
    tmux.wait(name, "saved to", what="the received file saved")
    with api(my_port) as me:
        done = wait_for_transfer(me, lambda t: t["direction"] == "in" and t["state"] == "completed")
    assert pathlib.Path(done["path"]).read_bytes() == incoming.read_bytes()

    tmux.resize(name, 80, 24)
    screen = tmux.wait(name, lambda t: len(t.splitlines()) == 24 and "Bob: hi from bob" in t
                       and "Bob ›" in t and "Terminal too small" not in t, what="the 80x24 layout")
    assert all(wcwidth.wcswidth(line) <= 80 for line in screen.splitlines())
    assert screen.splitlines()[0].startswith(" ChatP2P")
    tmux.resize(name, 40, 10)
    tmux.wait(name, "Terminal too small")
    tmux.resize(name, 120, 40)
    tmux.wait(name, lambda t: "Bob: hi from bob" in t and "Terminal too small" not in t)

    tmux.keys(name, "F1")
    tmux.wait(name, "Open the next conversation with unread messages")
    tmux.keys(name, "Escape")
    tmux.wait(name, lambda t: "Open the next conversation" not in t)
    tmux.type(name, "/frobnicate")
    tmux.wait(name, "Unknown command /frobnicate")

    tmux.keys(name, "C-q")
    screen = tmux.wait(name, "EXIT=", what="the app to exit")
    assert "EXIT=0" in screen, screen
    stty = screen.split("EXIT=0", 1)[1]
    assert "start = ^Q;" in stty and "stop = ^S;" in stty, stty          # flow-control keys given back
    assert " icanon" in stty and "-icanon" not in stty and "-echo " not in stty, stty


def test_embedded_app_chats_with_a_daemon():
    workdir = pathlib.Path(_tmp, "embedded")
    data_dir = workdir / "alice"
    tmux = Tmux(workdir)
    try:
        tmux.start("app", [*APP, "--data-dir", str(data_dir), *NODE_ARGS, "--name", "alice"])
        screen = tmux.wait("app", "Welcome to ChatP2P, alice")
        endpoints = wait_run_json(data_dir)     # the embedded node serves the API too
        with api(endpoints["ipc_port"]) as client:
            status = client.call("status")
            my_id = status["identity"]["fingerprint"]
        assert my_id in screen and "/add NAME THEIR-ID" in screen    # first run: my ID, how to add
        assert f"NAT {status['p2p']['nat_type']}" in screen.splitlines()[0]   # no STUN server: unknown
        chat_with_bob(tmux, "app", my_id, endpoints["ipc_port"], "Alice")
        log = (data_dir / "chatp2p.log").read_text()
        assert "stopped" in log and "Traceback" not in log, log
        assert not (data_dir / "run.json").exists()          # the node stopped cleanly
        lock = DataDirLock(data_dir)
        lock.acquire()
        lock.release()
    finally:
        tmux.kill()


def test_connect_mode_attaches_to_a_running_daemon():
    workdir = pathlib.Path(_tmp, "connect")
    tmux = Tmux(workdir)
    alice = Daemon(workdir / "alice2", "--name", "alice2")
    alice.start()
    try:
        data_dir = alice.data_dir
        # the data dir is held: the embedded app says to attach instead
        tmux.start("locked", [*APP, "--data-dir", data_dir, *NODE_ARGS])
        screen = tmux.wait("locked", "EXIT=")
        assert "EXIT=1" in screen and f"--connect 127.0.0.1:{alice.port}" in screen, screen

        tmux.start("app", [*APP, "--data-dir", data_dir, "--connect", f"127.0.0.1:{alice.port}"])
        screen = tmux.wait("app", "Welcome to ChatP2P, alice2")
        assert f"connected to 127.0.0.1:{alice.port}" in screen.splitlines()[0]
        my_id = alice.request("status")["data"]["identity"]["fingerprint"]
        assert my_id in screen
        chat_with_bob(tmux, "app", my_id, alice.port, "Alice2")
        assert alice.proc.poll() is None and alice.request("status")["success"]   # the daemon runs on
        log = pathlib.Path(data_dir, "chatp2p.log").read_text()      # the app's own log
        assert "attached to" in log and "Traceback" not in log, log
        with alice.client() as client:
            assert [c["name"] for c in client.call("contacts", "list")] == ["Bob"]
    finally:
        tmux.kill()
        alice.stop()


def test_first_start_asks_online_or_private_and_online_saves_the_choice():
    """No layer says online or private: the app asks once, explaining the cost; the answer is
    saved in the conf file and applied; /online off switches back and saves that too. The DHT
    and STUN servers here are local, dead addresses: nothing leaves the machine."""
    workdir = pathlib.Path(_tmp, "choice")
    tmux = Tmux(workdir)
    del tmux.env["CHATP2P_ONLINE"]
    conf = pathlib.Path(tmux.env["HOME"], ".config", "chatp2p", "chatp2p.conf")
    local_only = ("--dht-private-swarm", "--dht-bootstrap", "127.0.0.1:9", "--public-stun-urls",
                  "stun:127.0.0.1:9", "--no-port-mapping", "--no-lan-discovery")
    try:
        tmux.start("app", [*APP, "--data-dir", str(workdir / "carol"), *NODE_ARGS, *local_only, "--name", "carol"])
        screen = tmux.wait("app", "Online or private?", what="the choice screen")
        assert "see your IP address" in screen and "follow your IP address" in screen, screen
        assert "│ private" in screen.splitlines()[0]           # until chosen, nothing public is contacted
        tmux.keys("app", "Enter")                               # the first button: Online
        screen = tmux.wait("app", lambda text: "online · " in text.splitlines()[0], what="online mode in the header")
        assert "online = true" in conf.read_text().splitlines()
        tmux.type("app", "/online off")
        tmux.wait("app", lambda text: "│ private" in text.splitlines()[0], what="private mode in the header")
        assert "online = false" in conf.read_text().splitlines()
        tmux.keys("app", "C-q")
        tmux.wait("app", "EXIT=0", what="the app to exit")
        # The next start reads the choice: no question.
        tmux.start("again", [*APP, "--data-dir", str(workdir / "carol"), *NODE_ARGS, *local_only])
        screen = tmux.wait("again", lambda text: "│ private" in text.splitlines()[0], what="private at restart")
        assert "Online or private?" not in screen
    finally:
        tmux.kill()


def test_group_chat_in_the_ui_with_two_daemons():
    """Issue 15's UI test: alice (the app) creates a group with Bob and Carol (daemons, each a
    contact of alice only: not of each other), chats, and sees ✓✓ once both have her message;
    their messages come in; /members lists both with their verification state."""
    workdir = pathlib.Path(_tmp, "group")
    data_dir = workdir / "alice"
    tmux = Tmux(workdir)
    carol = Daemon(workdir / "carol", "--name", "carol").start()
    try:
        tmux.start("app", [*APP, "--data-dir", str(data_dir), *NODE_ARGS, "--name", "alice"])
        tmux.wait("app", "Welcome to ChatP2P, alice")
        endpoints = wait_run_json(data_dir)
        bob_id, bob_port = bob_info()
        carol_status = carol.request("status")["data"]
        carol_id, carol_port = carol_status["identity"]["fingerprint"], carol_status["p2p"]["port"]
        with api(endpoints["ipc_port"]) as me:
            my_id = me.call("status")["identity"]["fingerprint"]
            for name, peer_id in (("Bob", bob_id), ("Carol", carol_id)):
                me.call("contacts", "add", {"peer": name, "public_key": peer_id})
        for daemon in (_bob, carol):
            assert daemon.request("contacts", "add", {"peer": "AliceG", "public_key": my_id})["success"]
        with api(endpoints["ipc_port"]) as me:
            me.call("p2p", "connect", {"peer": "Bob", "address": f"127.0.0.1:{bob_port}"})
            me.call("p2p", "connect", {"peer": "Carol", "address": f"127.0.0.1:{carol_port}"})
            wait_for(lambda: {p["name"] for p in me.call("p2p", "peers")
                              if p["state"] == "connected"} >= {"Bob", "Carol"}, 30.0, "Bob and Carol connected")

        tmux.type("app", "/group create Family Bob Carol")
        screen = tmux.wait("app", "# Family", what="the group open")
        assert "Family ›" in screen

        def joined(daemon: Daemon):
            reply = daemon.request("group", "list")
            return reply["success"] and [g for g in reply["data"] if g["name"] == "Family"]
        bob_group = wait_for(lambda: joined(_bob), 30.0, "Bob joined")[0]
        wait_for(lambda: joined(carol), 30.0, "Carol joined")

        tmux.type("app", "hello family 👋")
        tmux.wait("app", lambda t: any("me: hello family 👋" in line and line.rstrip().endswith("✓✓")
                                       for line in conversation(t).splitlines()), timeout=60, what="✓✓ from both")
        for daemon in (_bob, carol):
            history = daemon.request("group", "history", {"group": bob_group["group"]})["data"]
            assert "hello family 👋" in [m["body"] for m in history["messages"]]

        assert _bob.request("group", "send_message", {"group": "Family", "message": "hi from bob"})["success"]
        tmux.wait("app", "Bob: hi from bob", what="Bob's group message")
        assert carol.request("group", "send_message", {"group": "Family", "message": "carol here"})["success"]
        screen = tmux.wait("app", "Carol: carol here", what="Carol's group message")
        lines = conversation(screen).splitlines()
        assert [i for i, l in enumerate(lines) if "hello family" in l] < [i for i, l in enumerate(lines)
                                                                          if "hi from bob" in l]

        tmux.type("app", "/members")
        screen = tmux.wait("app", "3 members of Family", what="the member list")
        assert "me (admin)" in screen and "not verified: /verify Bob" in screen and "/verify Carol" in screen
        tmux.keys("app", "Escape")
        tmux.wait("app", lambda t: "3 members of Family" not in t)

        tmux.keys("app", "C-q")
        screen = tmux.wait("app", "EXIT=", what="the app to exit")
        assert "EXIT=0" in screen, screen
        assert "Traceback" not in (data_dir / "chatp2p.log").read_text()
    finally:
        tmux.kill()
        carol.stop()
