"""The UI's model: pure state, driven by API answers and events, no terminal."""

import datetime

from chatp2p_ui.model import Model, local_date, one_line, parse_time

BOB = "bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbbbb-bbb"
CAROL = "ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccccc-ccc"
DAN = "ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddddd-ddd"


def at(year, month, day, hour=12, minute=0):
    """A local time as epoch seconds (day separators are local days)."""
    return datetime.datetime(year, month, day, hour, minute).timestamp()


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def model_with_contacts():
    model = Model()
    model.set_contacts([
        {"name": "Bob", "fingerprint": BOB, "verified": True, "blocked": False, "online": False, "unread": 0},
        {"name": "carol", "fingerprint": CAROL, "verified": False, "blocked": False, "online": True, "unread": 2},
        {"name": "Dan", "fingerprint": DAN, "verified": False, "blocked": True, "online": False, "unread": 0},
    ])
    return model


def test_parse_time_and_helpers():
    assert parse_time("2025-01-01T12:00:00.000Z") == datetime.datetime(2025, 1, 1, 12, tzinfo=datetime.timezone.utc).timestamp()
    assert parse_time(None, 5.0) == 5.0 and parse_time("garbage", 1.0) == 1.0 and parse_time(3) == 3.0
    assert one_line("a\n  b\tc") == "a b c"
    assert one_line("x" * 100, 10) == "x" * 9 + "…"


def test_contacts_sort_step_and_next_unread():
    model = model_with_contacts()
    assert [c.name for c in model.sorted_contacts()] == ["Bob", "carol", "Dan"]   # blocked last
    assert model.step_chat(1) == BOB                      # nothing open: the first
    assert model.step_chat(-1) == DAN
    assert model.next_unread() == CAROL
    assert model.open(CAROL) is True                      # had unread: mark read
    assert model.contacts[CAROL].unread == 0 and model.next_unread() is None
    assert model.step_chat(1) == DAN and model.step_chat(2) == BOB
    assert model.by_name("CAROL").fingerprint == CAROL    # case-insensitive when unambiguous
    model.set_contacts([{"name": "Bob", "fingerprint": BOB}])
    assert list(model.contacts) == [BOB] and model.open_chat is None   # carol removed while open


def test_peers_give_path_and_online_state():
    model = model_with_contacts()
    model.set_peers([{"name": "Bob", "fingerprint": BOB, "state": "connected", "path": "lan", "rtt_ms": 1.5,
                      "address": "192.0.2.1:4000", "last_seen": "2025-01-01T00:00:00Z"},
                     {"name": "carol", "fingerprint": CAROL, "state": "connecting", "path": None}])
    bob, carol = model.contacts[BOB], model.contacts[CAROL]
    assert bob.online and bob.path == "lan" and bob.rtt_ms == 1.5
    assert not carol.online and carol.state == "connecting" and carol.path is None


def test_outgoing_states_only_move_forward():
    model = model_with_contacts()
    model.open(BOB)
    message = model.add_outgoing(BOB, "hello", "m1", 1000.0)
    assert message.state == "pending"
    # the delivery receipt overtakes the answer to the send request
    model.apply_event({"event": "message_delivered", "data": {"peer": "Bob", "message_id": "m1"}})
    model.outgoing_result(BOB, "m1", {"success": True, "data": "Message sent"})
    assert message.state == "delivered"
    queued = model.add_outgoing(BOB, "later", "m2", 1001.0)
    model.outgoing_result(BOB, "m2", {"success": True, "data": "Message queued"})
    assert queued.state == "queued"
    model.apply_event({"event": "message_failed", "data": {"peer": "Bob", "message_id": "m2", "reason": "expired"}})
    assert queued.state == "failed" and queued.failure == "expired"
    refused = model.add_outgoing(BOB, "x", "m3", 1002.0)
    model.outgoing_result(BOB, "m3", {"success": False, "error": "The P2P network is stopped"})
    assert refused.state == "failed" and "stopped" in refused.failure
    # history from the daemon: its state wins unless it would go back
    model.set_history(BOB, [{"id": 7, "message_id": "m1", "direction": "out", "body": "hello", "state": "sent",
                             "created": iso(1000.0)},
                            {"id": 8, "message_id": "m2", "direction": "out", "body": "later", "state": "delivered",
                             "created": iso(1001.0)}])
    assert message.state == "delivered" and queued.state == "delivered"
    assert model.conversations[BOB].oldest_row == 7
    assert model.contacts[BOB].preview == "x"   # the last message, sent or not


def test_incoming_messages_count_unread_and_ring_only_outside_the_open_chat():
    model = model_with_contacts()
    model.open(BOB)
    alerts = model.apply_event({"event": "p2p_message_received",
                                "data": {"peer": "Bob", "message": "hi", "timestamp": iso(1000.0), "message_id": "a"}})
    assert [a.kind for a in alerts] == ["mark_read"] and model.contacts[BOB].unread == 0
    alerts = model.apply_event({"event": "p2p_message_received",
                                "data": {"peer": "carol", "message": "yo\nthere", "timestamp": iso(1001.0),
                                         "message_id": "b"}})
    assert [a.kind for a in alerts] == ["bell"] and model.contacts[CAROL].unread == 3
    assert model.contacts[CAROL].preview == "yo there"
    # the same message twice (event + history) is one message
    assert model.apply_event({"event": "p2p_message_received",
                              "data": {"peer": "carol", "message": "yo", "message_id": "b"}}) == []
    model.set_history(CAROL, [{"id": 1, "message_id": "b", "direction": "in", "body": "yo\nthere",
                               "state": "received", "created": iso(1001.0)}])
    assert len(model.conversations[CAROL].messages) == 1
    # from someone we do not know yet: reload the contact list
    assert [a.kind for a in model.apply_event({"event": "p2p_message_received",
                                               "data": {"peer": "Eve", "message": "?"}})] == ["refresh"]


def test_contact_events_rename_remove_and_connectivity():
    model = model_with_contacts()
    model.open(BOB)
    model.apply_event({"event": "contact_updated", "data": {"name": "Robert", "fingerprint": BOB,
                                                           "previous_name": "Bob", "verified": True}})
    assert model.contacts[BOB].name == "Robert" and model.open_chat == BOB
    model.apply_event({"event": "peer_connected", "data": {"peer": "Robert", "fingerprint": BOB, "path": "direct"}})
    assert model.contacts[BOB].online and model.contacts[BOB].path == "direct"
    model.apply_event({"event": "peer_disconnected", "data": {"peer": "Robert", "fingerprint": BOB}})
    assert not model.contacts[BOB].online and model.contacts[BOB].path is None
    model.apply_event({"event": "contact_removed", "data": {"name": "Robert", "fingerprint": BOB}})
    assert BOB not in model.contacts and model.open_chat is None
    model.apply_event({"event": "contact_added", "data": {"name": "Bob", "fingerprint": BOB}})
    assert model.contacts[BOB].name == "Bob"
    model.apply_event({"event": "p2p_stopped", "data": {}})
    assert not any(c.online for c in model.contacts.values()) and model.p2p["running"] is False


def test_contact_request_and_key_mismatch_become_alerts_once():
    model = model_with_contacts()
    stranger = "eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eeeee-eee"
    event = {"event": "contact_request", "data": {"fingerprint": stranger, "bundle": "B64", "address": "x"}}
    assert [a.kind for a in model.apply_event(event)] == ["contact_request"]
    assert model.apply_event(event) == []
    assert model.apply_event({"event": "contact_request", "data": {"fingerprint": BOB}}) == []   # a contact
    alerts = model.apply_event({"event": "key_mismatch", "data": {"peer": "Bob", "expected": BOB, "got": stranger}})
    assert alerts[0].kind == "key_mismatch" and alerts[0].data["got"] == stranger
    assert model.apply_event({"event": "no_such_event", "data": {}}) == []


def test_conversation_items_have_day_separators_in_local_time():
    model = model_with_contacts()
    model.set_history(BOB, [
        {"id": 1, "message_id": "1", "direction": "in", "body": "late", "state": "received",
         "created": iso(at(2025, 3, 3, 23, 59))},
        {"id": 2, "message_id": "2", "direction": "out", "body": "early", "state": "delivered",
         "created": iso(at(2025, 3, 4, 0, 1))},
        {"id": 3, "message_id": "3", "direction": "in", "body": "same day", "state": "received",
         "created": iso(at(2025, 3, 4, 9, 0))},
    ])
    items = model.conversation_items(BOB)
    assert [i.kind for i in items] == ["day", "message", "day", "message", "message"]
    assert items[0].value == datetime.date(2025, 3, 3) and items[2].value == datetime.date(2025, 3, 4)
    assert local_date(at(2025, 3, 4, 0, 1)) == datetime.date(2025, 3, 4)


def test_transfers_from_events_offer_progress_rate_eta_and_outcome():
    model = model_with_contacts()
    model.open(CAROL)
    alerts = model.apply_event({"event": "file_offer", "data": {"transfer_id": "t1", "peer": "Bob",
                                                                "file_name": "report.pdf", "size": 1000}}, now=10.0)
    assert [a.kind for a in alerts] == ["bell"] and model.contacts[BOB].unread == 1
    transfer = model.transfers["t1"]
    assert transfer.state == "offered" and transfer.direction == "in" and transfer.peer == BOB
    assert model.pending_offers(BOB) == [transfer] and model.find_transfer("t") is transfer
    model.apply_event({"event": "file_transfer_progress", "data": {"transfer_id": "t1", "bytes": 100}}, now=11.0)
    model.apply_event({"event": "file_transfer_progress", "data": {"transfer_id": "t1", "bytes": 300}}, now=12.0)
    assert transfer.state == "active" and transfer.percent == 30.0
    assert transfer.rate == 200.0 and transfer.eta == 3.5
    model.apply_event({"event": "file_transfer_progress",
                       "data": {"transfer_id": "t1", "bytes": 500, "rate": 50.0}}, now=13.0)
    assert transfer.rate == 50.0 and transfer.eta == 10.0
    model.apply_event({"event": "file_received", "data": {"transfer_id": "t1", "path": "/tmp/report.pdf"}})
    assert transfer.state == "done" and transfer.path == "/tmp/report.pdf" and transfer.percent == 100.0
    model.apply_event({"event": "file_offer", "data": {"transfer_id": "t2", "peer": "Bob", "file_name": "b",
                                                       "size": 5}})
    model.apply_event({"event": "file_transfer_failed", "data": {"transfer_id": "t2", "reason": "disk full"}})
    assert model.transfers["t2"].state == "failed" and model.transfers["t2"].error == "disk full"
    kinds = [i.kind for i in model.conversation_items(BOB)]
    assert kinds.count("transfer") == 2
    # events of transfers started elsewhere (chatp2pctl) add them; the core's reasons map to states
    model.apply_event({"event": "file_transfer_failed", "data": {"transfer_id": "t3", "peer": "Bob",
                                                                 "direction": "out", "file_name": "x",
                                                                 "reason": "rejected by Bob"}})
    assert model.transfers["t3"].state == "rejected" and model.transfers["t3"].direction == "out"
    model.apply_event({"event": "file_transfer_paused", "data": {"transfer_id": "t4", "peer": "Bob",
                                                                 "direction": "out", "file_name": "y",
                                                                 "size": 10, "by": "peer"}})
    assert model.transfers["t4"].state == "paused" and model.transfers["t4"].paused_by == "peer"
    model.merge_transfers([{"transfer_id": "t4", "direction": "out", "peer": "Bob", "file_name": "y",
                            "state": "active", "bytes": 5, "size": 10, "rate": 2}, {"transfer_id": "t5", "peer": "Nobody"}], now=20.0)
    assert model.transfers["t4"].state == "active" and model.transfers["t4"].percent == 50.0
    assert model.transfers["t4"].eta == 2.5 and "t5" not in model.transfers


def test_status_and_nat_text():
    model = Model()
    model.set_status({"identity": {"name": "alice", "fingerprint": "aaaaa-x", "short_id": "aaaaa-bbbbb",
                                   "public_key": "KEY"}, "p2p": {"running": True, "port": 4000}, "peers": 1})
    assert model.me["short_id"] == "aaaaa-bbbbb" and model.nat_text == "NAT ?"
    model.p2p["nat"] = {"type": "cone", "public_address": "203.0.113.5:4000"}
    assert model.nat_text == "NAT cone 203.0.113.5:4000"
    model.p2p["nat"] = {"nat_type": None, "type": "symmetric", "mapped": ["198.51.100.7", 5000]}
    assert model.nat_text == "NAT symmetric 198.51.100.7:5000"
