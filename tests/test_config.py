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
    assert config.stun_urls == [] and config.lan_discovery is False and config.events_port is None


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
