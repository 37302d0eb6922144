"""The real UI in tmux for the everyday commands: /search, /delete, /myid --qr.

The app attaches (--connect) to Alice's daemon of a connected real daemon pair, so the
test can make Bob write to Alice and read Alice's store through the API.
"""

import pathlib
import shutil
import tempfile

from daemon import ok
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
