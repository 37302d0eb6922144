"""The event bus: two-frame ZeroMQ messages, in-process subscribers, bursts not dropped."""

import json
import os
import shutil
import tempfile
import time

import zmq

from chatp2p_core.events import EventBus

TMP = None


def setup_module():
    global TMP
    TMP = tempfile.mkdtemp(prefix="chatp2p-ev-")


def teardown_module():
    shutil.rmtree(TMP, ignore_errors=True)


def _subscriber(endpoint, topic=b"", password=None):
    context = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    if password is not None:
        sub.plain_username, sub.plain_password = b"chatp2p", password
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(endpoint)
    return sub


def _wait_joined(bus, sub, topic="probe"):
    """PUB drops messages until the subscription arrives: publish numbered `topic` probes until
    one gets through, then read up to the last one published (nothing else is published
    meanwhile, so the socket is then empty)."""
    deadline = time.monotonic() + 10
    n = 0
    while time.monotonic() < deadline:
        n += 1
        bus.publish(topic, {"n": n})
        if sub.poll(50):
            while True:
                assert sub.poll(5000), "the last probe never arrived"
                name, payload = sub.recv_multipart()
                if name == topic.encode() and json.loads(payload)["data"] == {"n": n}:
                    return
    raise AssertionError("subscriber never joined")


def test_two_frames_and_in_process_subscribers():
    bus = EventBus([f"ipc://{os.path.join(TMP, 'a.sock')}", "tcp://127.0.0.1:0"], tcp_token="t0ken")
    seen = []
    bus.subscribe(seen.append)
    try:
        assert bus.endpoints[1].startswith("tcp://127.0.0.1:") and not bus.endpoints[1].endswith(":0")
        sub = _subscriber(bus.endpoints[1], b"contact_", password=b"t0ken")
        _wait_joined(bus, sub, "contact_probe")     # this very subscriber (it only takes contact_*)
        bus.publish("probe", None)                  # filtered out by its topic
        bus.publish("contact_added", {"name": "Bob"})
        name, payload = sub.recv_multipart()
        event = json.loads(payload)
        assert name == b"contact_added" and event["event"] == "contact_added"
        assert event["data"] == {"name": "Bob"} and event["timestamp"].endswith("Z")
        assert seen[-1] == event
        sub.close()
    finally:
        bus.close()


def test_burst_of_100k_events_is_not_dropped():
    bus = EventBus([f"ipc://{os.path.join(TMP, 'burst.sock')}"])
    try:
        sub = _subscriber(bus.endpoints[0])
        _wait_joined(bus, sub)
        for i in range(100_000):
            bus.publish("message_delivered", {"n": i})
        received = 0
        while sub.poll(2000):
            name, payload = sub.recv_multipart()
            if name == b"message_delivered":
                assert json.loads(payload)["data"]["n"] == received
                received += 1
            if received == 100_000:
                break
        assert received == 100_000
        sub.close()
    finally:
        bus.close()
