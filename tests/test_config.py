"""Layered configuration: defaults < file < environment < flags, clear errors, shipped conf."""

import argparse
import configparser
import os
import pathlib
import subprocess
import sys
import tempfile

from chatp2p_core import config as cfg

ROOT = pathlib.Path(__file__).resolve().parent.parent


def parse(argv):
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return parser.parse_args(argv)


def test_layers_override_in_order():
    with tempfile.TemporaryDirectory() as tmp:
        conf = pathlib.Path(tmp, "c.conf")
        conf.write_text("[ipc]\nport = 9001\nidle_timeout = 5\n[p2p]\nport = 7000\nlan_discovery = on\n")
        env = {"CHATP2P_IPC_PORT": "9002", "CHATP2P_NAME": "envname"}
        config = cfg.load(parse(["--config", str(conf), "--name", "flagname"]), env)
        assert config.ipc_port == 9002            # env beats file
        assert config.idle_timeout == 5.0         # file beats default
        assert config.p2p_port == 7000
        assert config.lan_discovery is True
        assert config.name == "flagname"          # flag beats env
        assert config.config_path == conf
        config = cfg.load(parse(["--config", str(conf), "--ipc-port", "0", "--no-lan-discovery"]), env)
        assert config.ipc_port == 0 and config.lan_discovery is False


def test_defaults_without_any_file():
    with tempfile.TemporaryDirectory() as tmp:
        config = cfg.load(parse([]), {"HOME": tmp})
    assert config.ipc_port == 8889 and config.ipc_host == "127.0.0.1"
    assert config.stun_urls == [] and config.events_port is None
    # Nothing chosen: private mode, no LAN discovery, no STUN server, no DHT.
    assert config.online is None and not config.online_mode
    assert config.lan_discovery is None and not config.lan_discovery_on
    assert config.effective_stun_urls == []


def test_bad_values_name_file_key_and_type():
    with tempfile.TemporaryDirectory() as tmp:
        conf = pathlib.Path(tmp, "c.conf")
        conf.write_text("[ipc]\nport = eighty\n")
        try:
            cfg.load(parse(["--config", str(conf)]), {})
        except cfg.ConfigError as exc:
            assert str(conf) in str(exc) and "[ipc] port" in str(exc) and "port number" in str(exc)
        else:
            raise AssertionError("bad port accepted")
        conf.write_text("[ipc]\nprot = 1\n")
        try:
            cfg.load(parse(["--config", str(conf)]), {})
        except cfg.ConfigError as exc:
            assert "unknown setting" in str(exc)
        else:
            raise AssertionError("unknown key accepted")
    for env, flag in (({"CHATP2P_P2P_PORT": "70000"}, []), ({}, ["--idle-timeout", "-1"])):
        try:
            cfg.load(parse(flag), env)
        except cfg.ConfigError as exc:
            assert ("CHATP2P_P2P_PORT" in str(exc)) or ("--idle-timeout" in str(exc))
        else:
            raise AssertionError("bad value accepted")


def test_missing_explicit_conf_file_is_an_error():
    try:
        cfg.load(parse(["--config", "/nonexistent/x.conf"]), {})
    except cfg.ConfigError as exc:
        assert "not found" in str(exc)
    else:
        raise AssertionError


def test_shipped_conf_lists_every_setting_commented_with_its_default():
    text = (ROOT / "conf" / "chatp2p.conf").read_text()
    for setting in cfg.SETTINGS:
        section = text.split(f"[{setting.section}]", 1)[1].split("\n[", 1)[0]
        default = setting.default
        shown = ("true" if default else "false") if isinstance(default, bool) else \
            ", ".join(default) if isinstance(default, list) else "" if default is None else str(default)
        assert f"# {setting.key} = {shown}".rstrip() in section, setting.name
    # Nothing is active: the shipped file changes no default and names no public server.
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert all(not parser.items(s) for s in parser.sections() if not s.startswith(("keys", "theme")))
    active = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith(("#", ";", "["))]
    assert active == []


def test_daemon_exits_2_on_bad_config():
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, HOME=tmp, CHATP2P_IPC_PORT="notaport")
        proc = subprocess.run([sys.executable, "-c", "import chatp2p,sys; sys.exit(chatp2p.main_daemon())",
                               "--data-dir", tmp], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "CHATP2P_IPC_PORT" in proc.stderr and "port number" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_daemon_exits_2_on_bad_nat_settings():
    for flags, expected in ((["--rendezvous-servers", "bogus"], "rendezvous"),
                            (["--stun-urls", "http://x"], "stun_urls"),
                            (["--turn-url", "turn:127.0.0.1:3478"], "turn_username")):
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, HOME=tmp)
            proc = subprocess.run([sys.executable, "-c", "import chatp2p,sys; sys.exit(chatp2p.main_daemon())",
                                   "--data-dir", tmp, "--ipc-port", "0", *flags],
                                  env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_a_secret_is_refused_as_a_flag_and_read_from_env_conf_or_file():
    import argparse
    import contextlib
    import io
    parser = argparse.ArgumentParser(prog="chatp2pd")
    cfg.add_arguments(parser)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            parser.parse_args(["--turn-credential", "hunter2"])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError("--turn-credential was accepted")
    assert "process list" in stderr.getvalue() and "CHATP2P_TURN_CREDENTIAL" in stderr.getvalue()
    assert "hunter2" not in stderr.getvalue()
    assert "--turn-credential " not in parser.format_help()
    with tempfile.TemporaryDirectory() as tmp:
        secret = pathlib.Path(tmp, "turn.password")
        secret.write_text("s3cret pass\nignored\n")
        args = parser.parse_args(["--turn-credential-file", str(secret), "--config", str(empty_conf(tmp))])
        assert cfg.load(args, environ={}).turn_credential == "s3cret pass"
        # The environment (or the conf file) wins over the file.
        assert cfg.load(args, environ={"CHATP2P_TURN_CREDENTIAL": "from-env"}).turn_credential == "from-env"
        args = parser.parse_args(["--turn-credential-file", str(secret) + ".missing", "--config", str(empty_conf(tmp))])
        try:
            cfg.load(args, environ={})
        except cfg.ConfigError as exc:
            assert "cannot read" in str(exc)
        else:
            raise AssertionError("a missing credential file was accepted")


def empty_conf(tmp):
    path = pathlib.Path(tmp, "empty.conf")
    path.write_text("")
    return path


def test_online_mode_is_chosen_by_flag_env_or_file_and_sets_its_defaults():
    with tempfile.TemporaryDirectory() as tmp:
        assert cfg.load(parse(["--online"]), {"HOME": tmp}).online is True
        assert cfg.load(parse(["--private"]), {"HOME": tmp, "CHATP2P_ONLINE": "on"}).online is False
        online = cfg.load(parse([]), {"HOME": tmp, "CHATP2P_ONLINE": "yes"})
        # Online mode: LAN discovery on unless turned off, the public STUN servers unless
        # some are configured, the public DHT routers as bootstrap.
        assert online.online_mode and online.lan_discovery_on
        assert online.effective_stun_urls == cfg.PUBLIC_STUN_URLS
        assert online.dht_bootstrap == cfg.PUBLIC_DHT_BOOTSTRAP
        chosen = cfg.load(parse(["--online", "--no-lan-discovery", "--stun-urls", "stun:192.0.2.7:3478"]),
                          {"HOME": tmp})
        assert not chosen.lan_discovery_on and chosen.effective_stun_urls == ["stun:192.0.2.7:3478"]
        conf = pathlib.Path(tmp, "c.conf")
        conf.write_text("[p2p]\nonline =\n")
        assert cfg.load(parse(["--config", str(conf)]), {"HOME": tmp}).online is None
        conf.write_text("[p2p]\nonline = maybe\n")
        try:
            cfg.load(parse(["--config", str(conf)]), {"HOME": tmp})
        except cfg.ConfigError as exc:
            assert "online" in str(exc) and "boolean" in str(exc)
        else:
            raise AssertionError("a bad online value was accepted")


def test_save_setting_keeps_the_rest_of_the_file():
    with tempfile.TemporaryDirectory() as tmp:
        conf = pathlib.Path(tmp, "sub", "chatp2p.conf")
        cfg.save_setting(conf, "online", True)        # no file yet: created, 0600
        assert oct(conf.stat().st_mode & 0o777) == "0o600"
        assert cfg.load(parse(["--config", str(conf)]), {"HOME": tmp}).online is True
        conf.write_text("# mine\n[ipc]\nport = 9001  # my port\n\n[p2p]\n# online = true\nport = 7000\n")
        cfg.save_setting(conf, "online", False)
        text = conf.read_text()
        assert "# mine" in text and "port = 9001  # my port" in text and "# online = true" in text
        config = cfg.load(parse(["--config", str(conf)]), {"HOME": tmp})
        assert config.online is False and config.ipc_port == 9001 and config.p2p_port == 7000
        cfg.save_setting(conf, "online", True)        # replaced, not added twice
        assert conf.read_text().splitlines().count("online = true") == 1 and "online = false" not in conf.read_text()
