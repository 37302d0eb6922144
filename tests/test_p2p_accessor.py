"""The P2P network is one object on the node: `node.p2p` while it runs, P2PStopped (with
the API's text) while it is stopped, and a new object after stop and start."""

import shutil
import tempfile

import pytest

from chatp2p_core import config as cfg
from chatp2p_core.api.commands import build_table
from chatp2p_core.node import Node
from chatp2p_core.services.p2p import P2P, P2PStopped

STOPPED = "The P2P network is stopped: start it with p2p start"


def _node(tmp):
    config = cfg.load(None, {"HOME": tmp}, flag_overrides={
        "data_dir": tmp + "/data", "p2p_host": "127.0.0.1", "p2p_port": "0", "ipc_port": "0"})
    node = Node(config)
    node.start()
    return node


def test_the_accessor_raises_when_stopped_and_start_builds_a_new_object():
    tmp = tempfile.mkdtemp(prefix="chatp2p-p2p-")
    node = _node(tmp)
    table = build_table()
    try:
        first = node.p2p
        assert isinstance(first, P2P) and node.running_p2p is first
        assert first.transport.running and first.network is first.connector.network

        node.stop_p2p()
        assert node.running_p2p is None and not first.transport.running
        with pytest.raises(P2PStopped) as info:
            node.p2p
        assert str(info.value) == STOPPED and info.value.kind == "refused"
        node.contacts.add("Carol", table.dispatch(node, {"command": "crypto", "action": "generate_keypair"})
                          ["data"]["fingerprint"])
        for action, data in (("send_message", {"peer": "Carol", "message": "hi"}),
                             ("send_file", {"peer": "Carol", "file_path": "/etc/hostname"}),
                             ("connect", {"peer": "Carol"}), ("transfers", {})):
            reply = table.dispatch(node, {"command": "p2p", "action": action, "data": data})
            assert reply["success"] is False and reply["error"] == STOPPED, (action, reply)
        # What makes sense while stopped still answers.
        assert table.dispatch(node, {"command": "p2p", "action": "peers"})["data"][0]["state"] == "offline"
        assert table.dispatch(node, {"command": "status"})["data"]["p2p"]["running"] is False

        assert table.dispatch(node, {"command": "p2p", "action": "start"})["data"] == "P2P network started"
        second = node.p2p
        assert second is not first and second.transport.running
        assert table.dispatch(node, {"command": "status"})["data"]["p2p"]["port"] == second.port
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_block_with_an_unknown_name_that_is_not_an_id():
    tmp = tempfile.mkdtemp(prefix="chatp2p-p2p-")
    node = _node(tmp)
    try:
        reply = build_table().dispatch(node, {"command": "contacts", "action": "block", "data": {"peer": "Nobody"}})
        assert reply["success"] is False and reply["error"] == "Peer not found: Nobody", reply
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
