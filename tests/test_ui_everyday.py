"""The real UI in tmux for the everyday commands: /search, /delete, /myid --qr.

The app attaches (--connect) to Alice's daemon of a connected real daemon pair, so the
test can make Bob write to Alice and read Alice's store through the API.
"""

import base64
import json
import pathlib
import shutil
import sys
import tempfile

from daemon import ok
from poll import wait_for
from test_transfer import close_pair, start_pair
from test_ui_tmux import APP, Tmux, conversation

TMP = None
A = B = EV_A = EV_B = None


def setup_module():
    global TMP, A, B, EV_A, EV_B
    if shutil.which("tmux") is None:
        import pytest
        pytest.skip("tmux is not installed (apt-get install tmux; .ci/run installs it)", allow_module_level=True)
    TMP = tempfile.mkdtemp(prefix="chatp2p-ui-everyday-")
    A, B, EV_A, EV_B = start_pair(TMP, "ui")


def teardown_module():
    close_pair((EV_A, EV_B), (A, B))
    if TMP is not None:
        shutil.rmtree(TMP, ignore_errors=True)


def bodies(daemon, peer):
    return [m["body"] for m in ok(daemon.request("p2p", "history", {"peer": peer}))["data"]]


def test_search_delete_and_qr_in_the_ui():
    tmux = Tmux(pathlib.Path(TMP, "tmux"))
    try:
        tmux.start("app", [*APP, "--data-dir", A.data_dir, "--connect", f"127.0.0.1:{A.port}"])
        tmux.wait("app", "Bob", what="the contact list")
        for text in ("Un café noir, s'il vous plaît", "rien à voir"):
            ok(B.request("p2p", "send_message", {"peer": "Alice", "message": text}))
            EV_A.wait_data("p2p_message_received", 10, message=text)
        tmux.keys("app", "C-n")
        tmux.wait("app", lambda t: "Bob: rien à voir" in conversation(t), what="the conversation")

        tmux.type("app", "/search CAFE noir")
        screen = tmux.wait("app", "Search: CAFE noir")
        assert "Bob: Un café noir, s'il vous plaît" in screen and "rien à voir" not in screen.split("Search:")[1]
        tmux.keys("app", "Escape")
        tmux.wait("app", lambda t: "Search: CAFE" not in t)

        tmux.type("app", "/delete")
        tmux.wait("app", "Delete 'rien à voir' from your conversation with Bob?")
        tmux.keys("app", "Enter")
        tmux.wait("app", lambda t: "Deleted 1 message" in t and "rien à voir" not in conversation(t),
                  what="the message gone from the screen")
        assert bodies(A, "Bob") == ["Un café noir, s'il vous plaît"]
        assert bodies(B, "Alice") == ["Un café noir, s'il vous plaît", "rien à voir"]   # their copy stays

        tmux.type("app", "/myid --qr")
        my_id = A.request("status")["data"]["identity"]["fingerprint"]
        screen = tmux.wait("app", "My ID")
        assert my_id in screen and ("▀▄" in screen or "▄▀" in screen), screen
    finally:
        tmux.kill()


def test_notifications_reach_the_hook_and_the_terminal_but_not_for_the_open_conversation():
    workdir = pathlib.Path(TMP, "notify")
    workdir.mkdir()
    hook_out = workdir / "hook.jsonl"
    osc_out = workdir / "pane.out"
    hook = workdir / "hook.py"
    hook.write_text(f"import sys\nwith open({str(hook_out)!r}, 'a') as f:\n    f.write(sys.stdin.read())\n")
    conf = workdir / "ui.conf"
    conf.write_text(f"[ui]\nbell = false\nnotify_osc = 777\non_message = {sys.executable} {hook}\n")
    ok(A.request("contacts", "add", {"peer": "Zed", "public_key": B.other_id()}))
    tmux = Tmux(workdir / "tmux")
    try:
        tmux.start("app", [*APP, "--config", str(conf), "--data-dir", A.data_dir, "--connect", f"127.0.0.1:{A.port}"])
        tmux.tmux("pipe-pane", "-O", "-t", "app", f"cat >> {osc_out}")
        tmux.wait("app", "Zed", what="the contact list")

        def say(text):
            message_id = ok(B.request("p2p", "send_message", {"peer": "Alice", "message": text}))["message_id"]
            EV_A.wait_data("p2p_message_received", 10, message=text)
            return message_id

        def hook_events():
            return [json.loads(line) for line in hook_out.read_text().splitlines()] if hook_out.exists() else []

        open_zed(tmux)
        first = say("secret plans for tonight")
        wait_for(lambda: len(hook_events()) == 1, 20, "the hook's first event")
        event = hook_events()[0]
        assert event["event"] == "p2p_message_received" and event["data"]["peer"] == "Bob"
        assert event["data"]["message_id"] == first and "message" not in event["data"]   # no text unless asked
        wait_for(lambda: osc_out.exists() and b"\x1b]777;notify;ChatP2P: Bob;sent you a message\x1b\\"
                 in osc_out.read_bytes(), 20, "the OSC 777 sequence in the pane's output")
        assert b"secret plans" not in osc_out.read_bytes().split(b"\x1b]777")[1][:200]

        open_bob(tmux)
        second = say("now you are looking")
        tmux.wait("app", lambda t: "Bob: now you are looking" in conversation(t), what="the open conversation")
        open_zed(tmux)
        third = say("and now you are not")
        wait_for(lambda: len(hook_events()) >= 2, 20, "the hook's second event")
        assert [e["data"]["message_id"] for e in hook_events()] == [first, third]   # not `second`
        assert second not in osc_out.read_text(errors="replace")
    finally:
        tmux.kill()


def _header_of_conversation(screen: str) -> str:
    lines = screen.splitlines()
    return lines[1].split("│", 1)[1] if len(lines) > 1 and "│" in lines[1] else ""


def _open(tmux, name: str) -> None:
    """Ctrl-N until `name`'s conversation is the open one."""
    for _ in range(6):
        header = _header_of_conversation(tmux.screen("app"))
        if header.strip().startswith(name):
            return
        tmux.keys("app", "C-n")
        tmux.wait("app", lambda t: _header_of_conversation(t) != header, what="the next conversation")
    raise AssertionError(f"{name}'s conversation never opened")


def open_zed(tmux) -> None:
    _open(tmux, "Zed")


def open_bob(tmux) -> None:
    _open(tmux, "Bob")


def test_bracketed_paste_makes_one_draft_editor_composes_and_myid_copies():
    workdir = pathlib.Path(TMP, "paste")
    workdir.mkdir()
    editor = workdir / "editor.py"
    editor.write_text("import sys\nwith open(sys.argv[1], 'a') as f:\n    f.write('written in the editor\\nline 2\\n')\n")
    pane = workdir / "pane.out"
    tmux = Tmux(workdir / "tmux")
    tmux.env["EDITOR"] = f"{sys.executable} {editor}"
    tmux.env.pop("VISUAL", None)
    try:
        tmux.start("app", [*APP, "--data-dir", A.data_dir, "--connect", f"127.0.0.1:{A.port}"])
        tmux.tmux("pipe-pane", "-O", "-t", "app", f"cat >> {pane}")
        tmux.wait("app", "Bob", what="the contact list")
        open_bob(tmux)

        # a paragraph pasted with bracketed paste: one draft, nothing sent yet
        tmux.tmux("set-buffer", "-b", "para", "pasted one\nsent as one\nmessage")
        tmux.tmux("paste-buffer", "-p", "-b", "para", "-t", "app")
        tmux.wait("app", lambda t: "› pasted one" in t and "message" in t.split("› pasted one", 1)[1],
                  what="the pasted draft in the input line")
        tmux.keys("app", "Enter")
        received = EV_B.wait_data("p2p_message_received", 10, peer="Alice",
                                  where=lambda d: d["message"].startswith("pasted one"))
        assert [d["message"] for d in received] == ["pasted one\nsent as one\nmessage"]
        assert not EV_B.all("p2p_message_received", message="pasted one")

        # /editor: the editor's text becomes the draft; Enter sends it
        tmux.type("app", "/editor")
        tmux.wait("app", lambda t: "› written in the editor" in t, what="the editor's draft")
        tmux.keys("app", "Enter")
        EV_B.wait_data("p2p_message_received", 10, peer="Alice", message="written in the editor\nline 2")

        # /myid: OSC 52 puts the ID on the clipboard
        my_id = A.request("status")["data"]["identity"]["fingerprint"]
        tmux.type("app", "/myid")
        tmux.wait("app", "My ID")
        expected = b"\x1b]52;c;" + base64.b64encode(my_id.encode()) + b"\x07"
        wait_for(lambda: pane.exists() and expected in pane.read_bytes(), 10, "the OSC 52 sequence")
    finally:
        tmux.kill()
