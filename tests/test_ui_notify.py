"""Notification settings and the escape sequences built from what peers control (pure parts;
the real hook and terminal are in test_ui_everyday.py)."""

from chatp2p_ui.notify import Notifier, NotifySettings, osc_sequence
from chatp2p_ui.settings import UiSettings


def test_a_peer_cannot_end_or_inject_an_escape_sequence():
    hostile = "Bob\x1b\\\x1b]52;c;ZXZpbA==\x07;x\n"
    for mode in ("777", "9"):
        text = osc_sequence(mode, "ChatP2P: " + hostile, hostile)
        body = text[len("\x1b]"):-len("\x1b\\")]
        assert "\x1b" not in body and "\x07" not in body and "\n" not in body, (mode, text)
    assert osc_sequence("777", "t", "a;b").count(";") == 3    # notify;TITLE;BODY: no extra field
    assert osc_sequence("off", "t", "b") == ""


def test_ui_section_settings_and_their_errors():
    settings = UiSettings.from_section({"notify_desktop": "false", "notify_osc": "9", "on_message": "my-hook --x",
                                        "notify_text": "yes"})
    assert settings.errors == []
    assert settings.notify == NotifySettings(desktop="false", osc="9", on_message="my-hook --x", show_text=True)
    assert UiSettings.from_section({}).notify == NotifySettings()          # all quiet by default
    bad = UiSettings.from_section({"notify_osc": "loud", "notify_desktop": "maybe", "notify_text": "2", "x": "1"})
    assert len(bad.errors) == 4 and "unknown setting" in bad.errors[-1]


def test_text_only_when_asked_and_no_desktop_without_a_session_bus():
    written, runs = [], []
    event = {"event": "p2p_message_received", "data": {"peer": "Bob", "message": "secret", "message_id": "m1"},
             "timestamp": "t"}
    quiet = Notifier(NotifySettings(osc="777"), written.append, runs.append, environ={})
    assert not quiet.desktop
    quiet.message(event)
    assert "secret" not in written[0] and "Bob" in written[0] and runs == []
    told = Notifier(NotifySettings(osc="777", show_text=True), written.append, runs.append, environ={})
    told.message(event)
    assert "secret" in written[1]


def test_desktop_notification_runs_notify_send_with_the_sender_only(tmp_path):
    """A session bus in the environment and notify-send on PATH: it is run, with the sender as
    title and no message text (a stand-in notify-send records its arguments)."""
    import os
    import stat
    import sys

    record = tmp_path / "args.txt"
    fake = tmp_path / "bin" / "notify-send"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport sys\nopen({str(record)!r}, 'w').write('\\n'.join(sys.argv[1:]))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    environ = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent", "PATH": str(fake.parent)}
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{fake.parent}:{old_path}"   # shutil.which and the child look here
    try:
        notifier = Notifier(NotifySettings(), lambda text: None, lambda fn: fn(), environ=environ)
        assert notifier.desktop
        notifier.message({"event": "p2p_message_received", "data": {"peer": "Bob", "message": "secret"}})
    finally:
        os.environ["PATH"] = old_path
    assert record.read_text().splitlines() == ["--app-name=ChatP2P", "ChatP2P: Bob", "sent you a message"]
    assert not Notifier(NotifySettings(desktop="false"), print, print, environ=environ).desktop
