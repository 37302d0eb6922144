"""The one typed contract: docs/API.md and `chatp2pctl schema` come from the declarations, every
published event is catalogued, the UI handles only catalogued events, and what two real daemons
answer and publish conforms to the schema."""

import inspect
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema

from chatp2p_core.api import commands, docs, schema
from chatp2p_core.contract import EVENTS
from chatp2p_ui.model import Model

from daemon import Daemon
from events import Events

ROOT = pathlib.Path(__file__).resolve().parent.parent
CTL = [sys.executable, "-c", "import chatp2p, sys; sys.exit(chatp2p.main_ctl())"]
ACTIONS = commands.build_table().actions()
TMP = None


def setup_module():
    global TMP
    TMP = tempfile.mkdtemp(prefix="chatp2p-contract-")


def teardown_module():
    shutil.rmtree(TMP, ignore_errors=True)


def test_docs_api_md_is_generated_from_the_table():
    expected = docs.render(ACTIONS)
    actual = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/API.md is stale: python -m chatp2p_core.api.docs > docs/API.md"


def test_every_action_has_a_declared_answer():
    for action in ACTIONS:
        assert action.answer is not None, schema.action_name(action)


def test_every_published_event_is_in_the_catalog():
    published = set()
    for path in (ROOT / "lib").rglob("*.py"):
        published |= set(re.findall(r"""publish\(\s*["'](\w+)["']""", path.read_text(encoding="utf-8")))
    assert published, "the scan found no publish() call"
    assert published - set(EVENTS) == set()
    assert set(EVENTS) - published == set(), "catalogued events that nothing publishes"


def test_the_ui_handles_only_catalogued_events():
    handled = {name[len("_on_"):] for name, _ in inspect.getmembers(Model) if name.startswith("_on_")}
    assert handled and handled <= set(EVENTS), handled - set(EVENTS)


def _schema():
    proc = subprocess.run(CTL + ["schema"], capture_output=True, text=True, timeout=60,
                          env=Daemon.environment(TMP))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return json.loads(proc.stdout)


def _validator(document, name):
    return jsonschema.Draft202012Validator({"$defs": document["$defs"], "$ref": f"#/$defs/{name}"})


def test_ctl_schema_is_a_2020_12_schema_with_every_action_and_event():
    document = _schema()
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(document)
    defs = document["$defs"]
    for action in ACTIONS:
        assert f"{schema.action_name(action)}.data" in defs and f"{schema.action_name(action)}.answer" in defs
    for event in EVENTS:
        assert f"event.{event}" in defs
    # The request schemas hold the table's limits.
    add = defs["contacts.add.data"]
    assert add["required"] == ["peer", "public_key"] and add["properties"]["peer"]["maxLength"] == 64
    _validator(document, "p2p.send_message.data").validate({"peer": "Bob", "message": "hi"})
    assert not _validator(document, "p2p.send_message.data").is_valid({"peer": "Bob"})


def test_real_answers_and_events_conform():
    document = _schema()
    a = Daemon(os.path.join(TMP, "a"), "--keepalive-interval", "1", "--downloads-dir", os.path.join(TMP, "a", "dl"))
    b = Daemon(os.path.join(TMP, "b"), "--keepalive-interval", "1", "--downloads-dir", os.path.join(TMP, "b", "dl"))
    a.start()
    b.start()
    ev_a = ev_b = None
    try:
        answers = []

        def ask(daemon, command, action=None, data=None):
            reply = daemon.request(command, action, data)
            assert reply["success"], reply
            answers.append((f"{command}.{action}" if action else command, reply))
            return reply

        sa, sb = ask(a, "status")["data"], ask(b, "status")["data"]
        ask(a, "contacts", "add", {"peer": "Bob", "public_key": sb["identity"]["public_key"]})
        ask(b, "contacts", "add", {"peer": "Alice", "public_key": sa["identity"]["public_key"]})
        ev_a, ev_b = Events(a), Events(b)
        ask(a, "p2p", "connect", {"peer": "Bob", "address": f"127.0.0.1:{sb['p2p']['port']}"})
        ask(a, "contacts", "negotiate_keys", {"peer": "Bob"})
        ask(a, "contacts", "verify", {"peer": "Bob"})
        ask(a, "contacts", "list")
        ask(a, "p2p", "peers")
        ask(a, "crypto", "generate_keypair")
        message_id = ask(a, "p2p", "send_message", {"peer": "Bob", "message": "hello"})["message_id"]
        ev_a.wait_data("message_delivered", 10, message_id=message_id)
        ask(a, "p2p", "history", {"peer": "Bob"})
        ask(b, "p2p", "mark_read", {"peer": "Alice"})
        source = os.path.join(TMP, "small.bin")
        with open(source, "wb") as handle:
            handle.write(os.urandom(300_000))
        tid = ask(a, "p2p", "send_file", {"peer": "Bob", "file_path": source})["transfer_id"]
        ev_b.wait_data("file_offer", 10, transfer_id=tid)
        ask(b, "p2p", "accept_file", {"transfer_id": tid})
        ev_b.wait_data("file_received", 30, transfer_id=tid)
        ev_a.wait_data("file_transfer_completed", 30, transfer_id=tid)
        ask(a, "p2p", "transfers")
        ask(b, "p2p", "transfers")
        ask(a, "status")

        for name, reply in answers:
            _validator(document, f"{name}.answer").validate(reply)
        seen = set()
        for events in (ev_a, ev_b):
            with events.cond:
                items = list(events.items)
            for event in items:
                _validator(document, f"event.{event['event']}").validate(event)
                seen.add(event["event"])
        assert {"contact_added", "peer_connected", "p2p_message_received", "message_delivered", "file_offer",
                "file_transfer_started", "file_received", "file_transfer_completed"} <= seen, seen
    finally:
        for events in (ev_a, ev_b):
            if events is not None:
                events.close()
        a.stop()
        b.stop()
