"""The UI's key table, conf overrides, themes and slash commands (parsing, completion). No terminal."""

import os
import pathlib
import tempfile

from chatp2p_core import config as cfg
from chatp2p_ui import commands as slash
from chatp2p_ui import keys
from chatp2p_ui.settings import load_ui_config
from chatp2p_ui.theme import MONO, THEMES, Theme, color_depth


def test_key_names_are_normalized_to_urwid_names():
    assert keys.normalize_key("Ctrl+Q") == keys.normalize_key("C-q") == "ctrl q"
    assert keys.normalize_key("Alt-A") == keys.normalize_key("M-a") == "meta a"
    assert keys.normalize_key("alt enter") == "meta enter"
    assert keys.normalize_key("PgUp") == "page up" and keys.normalize_key("F1") == "f1"
    assert keys.normalize_key("?") == "?" and keys.normalize_key("shift tab") == "shift tab"
    for bad in ("ctrl+", "hyper x", "ctrl nosuchkey"):
        try:
            keys.normalize_key(bad)
        except keys.KeyNameError:
            continue
        raise AssertionError(bad)
    assert keys.display_key("meta enter") == "Alt-Enter" and keys.display_key("page down") == "PgDn"


def test_key_table_generates_footer_and_help():
    keymap = keys.KeyMap()
    assert keymap.errors == []
    text = keymap.help_text()
    for binding in keys.BINDINGS:      # every binding is in the help, with its keys
        assert binding.help in text
        for key in binding.keys:
            assert keys.display_key(key) in text
    assert "Ctrl-Q" in text and "Alt-Enter" in text and "Mouse" in text
    assert ("Enter", "send") in keymap.footer_hints() and ("Ctrl-Q", "quit") in keymap.footer_hints()
    assert keymap.actions("tab") == ["focus_next", "complete"]
    assert keymap.actions("f1") == ["help"] and keymap.actions("x") == []


def test_key_overrides_from_the_conf_file():
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp, "chatp2p.conf")
        path.write_text("[node]\nname = alice\n\n[keys]\nquit = ctrl x, F10\nnext_unread = alt u\n"
                        "bogus = ctrl b\nhelp = ctrl+\n\n[theme]\nname = light\nown_name = yellow, bold on default\n"
                        "header = h231 on h24\nday = nosuchcolor\n\n[ui]\nbell = off\n")
        args = type("Args", (), {"config": str(path)})()
        config = cfg.load(args, environ={})
        assert config.name == "alice"              # the core skips [keys], [theme], [ui]
        keymap, theme, settings, errors = load_ui_config(config.config_path, environ={"TERM": "xterm-256color"})
    assert keymap.keys["quit"] == ("ctrl x", "f10") and keymap.actions("ctrl x") == ["quit"]
    assert keymap.keys["next_unread"] == ("meta u",)
    assert keymap.keys["help"] == ("f1", "?")      # the bad override is reported, the default stays
    assert ("Ctrl-X", "quit") in keymap.footer_hints() and "Ctrl-X, F10" in keymap.help_text()
    assert any("bogus" in e for e in errors) and any("help" in e for e in errors)
    assert any("day" in e for e in errors)
    assert theme.name == "light" and theme.colors == 256
    assert theme.styles["own_name"] == ["yellow,bold", "", "yellow,bold", ""]
    assert theme.styles["header"][2:] == ["h231", "h24"]
    assert settings.bell is False


def test_themes_are_complete_and_have_mono_fallback():
    for name, styles in THEMES.items():
        assert set(styles) == set(MONO), name
    assert color_depth({"TERM": "xterm-256color"}) == 256
    assert color_depth({"TERM": "xterm"}) == 16
    assert color_depth({"TERM": "xterm-256color", "NO_COLOR": "1"}) == 1
    assert Theme("mono", environ={"TERM": "xterm-256color"}).colors == 1
    theme = Theme("nosuch", environ={})
    assert theme.name == "dark" and theme.errors
    palette = Theme("dark", environ={}).palette()
    assert all(len(entry) == 6 for entry in palette)
    import urwid
    screen = urwid.display.raw.Screen()
    screen.register_palette(palette)           # urwid accepts every entry


def test_command_parsing_gives_one_line_hints():
    parsed = slash.parse('/rename "Bob Smith" Bob')
    assert parsed.name == "rename" and parsed.args == {"OLD": "Bob Smith", "NEW": "Bob"}
    assert slash.parse("/myid").args == {"FILE|--qr": None}
    assert slash.parse("/search café  au lait").args == {"WORDS": "café au lait"}
    assert slash.parse("/q").name == "quit" and slash.parse("/ACCEPT abc").args == {"ID": "abc"}
    cases = {
        "/add Bob": "Usage: /add NAME ID|KEY|@FILE",
        "/connect Bob": "Usage: /connect NAME HOST:PORT",
        "/quit now": "Usage: /quit",
        "/ad Bob x": "Did you mean /add?",
        "/zzz": "Unknown command /zzz",
        "/rename \"Bob": "Unclosed quote",
        "/": "Type a command",
        "/rename \"\" x": "OLD is empty",
    }
    for text, hint in cases.items():
        try:
            slash.parse(text)
        except slash.UsageError as exc:
            assert hint in str(exc), (text, str(exc))
            assert "\n" not in str(exc)
        else:
            raise AssertionError(text)
    assert slash.is_command("/add") and not slash.is_command("//not a command") and not slash.is_command("hi")


def test_completion_of_commands_names_paths_and_transfers():
    names = ["Bob", "Bobby Tables", "alice"]
    assert slash.complete("/ad").text == "/add "
    assert slash.complete("/re").candidates == ["remove", "rename", "reject", "resume"]
    assert slash.complete("/remove b", names).text == "/remove Bob"         # common prefix, both shown
    assert slash.complete("/remove bobby", names).text == '/remove "Bobby Tables" '
    assert slash.complete("/verify A", names).text == "/verify alice "
    assert slash.complete("/connect alice 1", names).candidates == []       # an address: nothing to offer
    assert slash.complete("/cancel ", transfers=["abc1", "abd2"]).text == "/cancel ab"
    assert slash.complete("hello /ad").text == "hello /ad"                  # not a command
    with tempfile.TemporaryDirectory() as tmp:
        os.mkdir(os.path.join(tmp, "docs"))
        pathlib.Path(tmp, "draft one.txt").write_text("x")
        pathlib.Path(tmp, "data.bin").write_text("x")
        assert slash.complete(f"/sendfile {tmp}/do").text == f"/sendfile {tmp}/docs/"   # a directory: no space
        assert slash.complete(f"/sendfile {tmp}/dr").text == f'/sendfile "{tmp}/draft one.txt" '
        assert sorted(slash.complete(f"/sendfile {tmp}/d").candidates) == \
            [f"{tmp}/data.bin", f"{tmp}/docs/", f"{tmp}/draft one.txt"]
        assert slash.complete(f"/add Bob @{tmp}/da").text == f"/add Bob @{tmp}/data.bin "
        assert slash.complete("/sendfile /no/such/dir/x").candidates == []


def test_shipped_conf_documents_every_key_binding():
    text = (pathlib.Path(__file__).resolve().parent.parent / "conf" / "chatp2p.conf").read_text()
    keys_section = text.split("[keys]", 1)[1].split("\n[", 1)[0]
    for binding in keys.BINDINGS:
        line = f"{binding.action} = {', '.join(keys.conf_name(k) for k in binding.keys)}"
        assert "# " + line in keys_section, binding.action
        assert keys.KeyMap({binding.action: line.split(" = ", 1)[1]}).keys[binding.action] == binding.keys
    assert "[ui]" in text and "# bell = true" in text and "[theme]" in text


def test_slash_commands_are_checked_by_the_api_tables_own_fields():
    from chatp2p_core.api.actions import build_table
    from chatp2p_ui import commands as slash
    table = build_table()
    for command in slash.COMMANDS:
        if command.api is None:
            continue
        fields = {f.name for f in table.lookup(command.api.command, command.api.action).fields}
        assert set(command.api.fields.values()) <= fields, command.name
        assert set(command.api.fields) <= {a.name for a in command.args}, command.name
    # The daemon's limits and words, before anything is sent.
    for text, error in (("/rename Bob " + "x" * 65, "NEW: Field 'new_name' is too long (at most 64 characters)"),
                        ("/add " + "n" * 65 + " key", "NAME: Field 'peer' is too long (at most 64 characters)"),
                        ("/cancel " + "t" * 129, "ID: Field 'transfer_id' is too long (at most 128 characters)")):
        try:
            slash.parse(text)
        except slash.UsageError as exc:
            assert str(exc) == error
        else:
            raise AssertionError(f"{text[:20]}... was accepted")
    assert slash.parse("/rename Bob " + "x" * 64).args["NEW"] == "x" * 64
