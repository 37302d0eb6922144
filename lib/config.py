"""Layered settings: built-in defaults < conf file < CHATP2P_* environment < command-line flags.

Every setting is declared once in SETTINGS; the conf file section/key, the environment
variable and the command-line flag are all derived from that one row, so they cannot drift.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

from .errors import Invalid
from .util import parse_bool

DEFAULT_CONFIG_PATH = "~/.config/chatp2p/chatp2p.conf"
DEFAULT_DATA_DIR = "~/.local/share/chatp2p"
ENV_PREFIX = "CHATP2P_"
LOG_LEVELS = ("debug", "info", "warning", "error")
CRYPTO_BACKENDS = ("auto", "pycryptodome", "liboqs")


class ConfigError(Invalid):
    """A setting has a bad value; the message names where it came from and what was expected."""


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str          # attribute name, also CHATP2P_<NAME> and --<name-with-dashes>
    section: str       # conf file section
    key: str           # conf file key
    kind: str          # str | int | port | optport | float | bool | list | path | choice
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    secret: bool = False   # no command-line flag: every local user can read a process's argv

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("name", "node", "name", "str", "", "display name shown to contacts (empty: your login name)"),
    Setting("data_dir", "node", "data_dir", "path", DEFAULT_DATA_DIR, "keys, database, event socket (created 0700)"),
    Setting("crypto_backend", "node", "crypto_backend", "choice", "auto",
            "post-quantum backend: auto (liboqs when its library is found), pycryptodome, liboqs",
            CRYPTO_BACKENDS),
    Setting("ipc_host", "ipc", "host", "str", "127.0.0.1", "control API address (loopback only unless allow_remote_ipc)"),
    Setting("ipc_port", "ipc", "port", "port", 8889, "control API TCP port (0 = any free port)"),
    Setting("idle_timeout", "ipc", "idle_timeout", "float", 30.0, "close API connections idle this many seconds"),
    Setting("max_request_bytes", "ipc", "max_request_bytes", "int", 1048576, "largest API request accepted"),
    Setting("max_connections", "ipc", "max_connections", "int", 1000, "most API connections at once"),
    Setting("allow_remote_ipc", "ipc", "allow_remote", "bool", False,
            "allow a non-loopback API address; every request must then carry the token from DATA_DIR/ipc.token"),
    Setting("events_port", "events", "port", "optport", None,
            "also publish events on tcp://127.0.0.1:PORT (empty = only ipc:// in the data dir; 0 = any free port)"),
    Setting("p2p_host", "p2p", "host", "str", "0.0.0.0", "local address of the P2P UDP socket"),
    Setting("p2p_port", "p2p", "port", "port", 0, "UDP port for all peer-to-peer traffic (0 = any free port)"),
    Setting("autostart", "p2p", "autostart", "bool", True, "start the P2P network at launch"),
    Setting("stun_urls", "p2p", "stun_urls", "list", [], "STUN servers, comma-separated stun:host:port (none by default)"),
    Setting("rendezvous_servers", "p2p", "rendezvous", "list", [],
            "rendezvous nodes to register with, comma-separated host:port or host:port#ID (none by default)"),
    Setting("turn_url", "p2p", "turn_url", "str", "", "TURN relay used when no direct path works, turn:host:port"),
    Setting("turn_username", "p2p", "turn_username", "str", "", "TURN long-term credential: user name"),
    Setting("turn_credential", "p2p", "turn_credential", "str", "", "TURN long-term credential: password",
            secret=True),
    Setting("turn_credential_file", "p2p", "turn_credential_file", "path", "",
            "file whose first line is the TURN password (used when turn_credential is empty)"),
    Setting("serve_rendezvous", "p2p", "serve_rendezvous", "bool", False,
            "serve introductions to other nodes on the P2P port (needs a fixed p2p port); flag --rendezvous"),
    Setting("lan_discovery", "p2p", "lan_discovery", "bool", False, "find contacts on the local network segment"),
    Setting("lan_port", "p2p", "lan_port", "port", 48889, "well-known UDP port of LAN discovery announcements"),
    Setting("keepalive_interval", "p2p", "keepalive_interval", "float", 15.0,
            "seconds between keepalives; three silent intervals mean the peer is gone"),
    Setting("udp_batching", "p2p", "udp_batching", "bool", True,
            "send and receive UDP in batches the kernel segments and coalesces (GSO/GRO) where it can; "
            "false for troubleshooting"),
    Setting("message_ttl_days", "p2p", "message_ttl_days", "float", 7.0,
            "a queued message fails (message_failed) when its contact stays unreachable this long"),
    Setting("downloads_dir", "files", "downloads_dir", "path", "~/Downloads/chatp2p",
            "where received files are saved (created 0700; a file is never overwritten)"),
    Setting("auto_accept_files", "files", "auto_accept", "bool", False,
            "accept file offers from verified contacts without asking"),
    Setting("upload_limit", "files", "upload_limit", "int", 0,
            "cap on the rate of file sending, KiB/s (0 = no cap)"),
    Setting("log_level", "log", "level", "choice", "info", "debug, info, warning or error", LOG_LEVELS),
    Setting("log_file", "log", "file", "path", "", "log to this file instead of stderr"),
)

SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


def _parse_int(text: str, low: int | None = None, high: int | None = None) -> int:
    value = int(text.strip(), 10)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(text)
    return value


def _expected(setting: Setting) -> str:
    return {
        "str": "a string",
        "int": "a non-negative integer",
        "port": "a port number 0-65535",
        "optport": "a port number 0-65535, or empty",
        "float": "a non-negative number",
        "bool": "a boolean (true/false, yes/no, on/off, 1/0)",
        "list": "a comma-separated list",
        "path": "a file system path",
        "choice": "one of " + ", ".join(setting.choices),
    }[setting.kind]


def _convert(setting: Setting, raw: Any) -> Any:
    """Turn a raw value (text from a file/env/flag, or a typed value) into the setting's type."""
    kind = setting.kind
    if kind in ("str", "path"):
        if not isinstance(raw, str):
            raise ValueError(raw)
        return raw.strip()
    if kind == "choice":
        value = str(raw).strip().lower()
        if value not in setting.choices:
            raise ValueError(raw)
        return value
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        flag = parse_bool(str(raw))
        if flag is None:
            raise ValueError(raw)
        return flag
    if kind == "list":
        if isinstance(raw, (list, tuple)):
            return [str(item).strip() for item in raw if str(item).strip()]
        return [item.strip() for item in str(raw).split(",") if item.strip()]
    if kind == "float":
        value = float(str(raw).strip())
        if not value >= 0 or value == float("inf"):
            raise ValueError(raw)
        return value
    if kind == "int":
        return _parse_int(str(raw), 0)
    if kind == "port":
        return _parse_int(str(raw), 0, 65535)
    if kind == "optport":
        if raw is None or str(raw).strip() == "":
            return None
        return _parse_int(str(raw), 0, 65535)
    raise AssertionError(kind)


@dataclasses.dataclass
class Config:
    """Resolved settings plus where the conf file came from."""

    values: dict[str, Any]
    config_path: pathlib.Path | None

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def data_path(self) -> pathlib.Path:
        return pathlib.Path(os.path.expanduser(self.values["data_dir"]))

    def replace(self, **changes: Any) -> "Config":
        values = dict(self.values)
        for name, raw in changes.items():
            setting = SETTINGS_BY_NAME[name]
            values[name] = _checked(setting, raw, f"setting {name}")
        return Config(values, self.config_path)


def _checked(setting: Setting, raw: Any, origin: str) -> Any:
    try:
        return _convert(setting, raw)
    except (ValueError, TypeError):
        raise ConfigError(f"{origin}: {raw!r} is not valid, expected {_expected(setting)}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare --config and one flag per setting; values stay raw text until `load`."""
    parser.add_argument("--config", metavar="FILE", help=f"conf file (default {DEFAULT_CONFIG_PATH})")
    for setting in SETTINGS:
        if setting.secret:
            parser.add_argument(setting.flag, action=_RefusedSecretFlag, help=argparse.SUPPRESS)
        elif setting.kind == "bool":
            parser.add_argument(setting.flag, dest=setting.name, action=argparse.BooleanOptionalAction,
                                default=None, help=f"{setting.help} (env {setting.env})")
        else:
            parser.add_argument(setting.flag, dest=setting.name, metavar=setting.kind.upper(), default=None,
                                help=f"{setting.help} (env {setting.env})")


class _RefusedSecretFlag(argparse.Action):
    """A secret given as a flag would show in `ps` to every local user: say where it goes."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        setting = SETTINGS_BY_NAME[self.dest]
        hint = f", or {SETTINGS_BY_NAME[setting.name + '_file'].flag} FILE" \
            if setting.name + "_file" in SETTINGS_BY_NAME else ""
        parser.error(f"{option_string} is not accepted: other local users could read it in the process "
                     f"list; set {setting.key} in the conf file, the environment variable {setting.env}{hint}")


def _read_secret_file(setting: Setting, path_text: str) -> str:
    path = pathlib.Path(os.path.expanduser(path_text))
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{setting.flag} {path}: cannot read: {exc}") from None


def _read_file(path: pathlib.Path) -> dict[str, Any]:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    known = {(s.section, s.key): s for s in SETTINGS}
    values: dict[str, Any] = {}
    for section in parser.sections():
        if section in ("keys", "ui") or section.startswith("theme"):
            continue  # read by the UI, which owns their meaning
        for key, raw in parser.items(section):
            setting = known.get((section, key))
            if setting is None:
                raise ConfigError(f"{path}: [{section}] {key}: unknown setting")
            values[setting.name] = _checked(setting, raw, f"{path}: [{section}] {key}")
    return values


def read_sections(path: pathlib.Path | None, prefix: str) -> dict[str, dict[str, str]]:
    """Raw text of the sections whose names start with `prefix` (UI key bindings and themes)."""
    if path is None or not path.exists():
        return {}
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    parser.read(path, encoding="utf-8")
    return {name: dict(parser.items(name)) for name in parser.sections() if name.startswith(prefix)}


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None,
         flag_overrides: Mapping[str, Any] | None = None) -> Config:
    """Resolve every setting through the four layers. Raises ConfigError naming the culprit."""
    environ = os.environ if environ is None else environ
    values = {s.name: s.default for s in SETTINGS}

    explicit = getattr(args, "config", None) if args is not None else None
    explicit = explicit or environ.get(ENV_PREFIX + "CONFIG")
    path = pathlib.Path(os.path.expanduser(explicit or DEFAULT_CONFIG_PATH))
    if explicit and not path.is_file():
        raise ConfigError(f"{path}: conf file not found")
    config_path = path if path.is_file() else None
    if config_path is not None:
        values.update(_read_file(config_path))

    for setting in SETTINGS:
        if setting.env in environ:
            values[setting.name] = _checked(setting, environ[setting.env], f"environment {setting.env}")

    for setting in SETTINGS:
        raw = getattr(args, setting.name, None) if args is not None else None
        if raw is not None:
            values[setting.name] = _checked(setting, raw, f"flag {setting.flag}")
    for name, raw in (flag_overrides or {}).items():
        values[name] = _checked(SETTINGS_BY_NAME[name], raw, f"flag {SETTINGS_BY_NAME[name].flag}")
    if not values["turn_credential"] and values["turn_credential_file"]:
        values["turn_credential"] = _read_secret_file(SETTINGS_BY_NAME["turn_credential_file"],
                                                      values["turn_credential_file"])
    return Config(values, config_path)


def render_default_conf(extra: Callable[[], str] | None = None) -> str:
    """The shipped conf file text: every setting, commented out, with its default."""
    lines: list[str] = []
    section = None
    for setting in SETTINGS:
        if setting.section != section:
            section = setting.section
            lines += ["", f"[{section}]"]
        default = setting.default
        if isinstance(default, bool):
            shown = "true" if default else "false"
        elif isinstance(default, list):
            shown = ", ".join(default)
        elif default is None:
            shown = ""
        else:
            shown = str(default)
        where = f"env {setting.env}, no flag (the process list would show it)" if setting.secret \
            else f"env {setting.env}, flag {setting.flag}"
        lines.append(f"# {setting.help}; {where}")
        lines.append(f"# {setting.key} = {shown}".rstrip())
    return "\n".join(lines).lstrip() + "\n" + (extra() if extra else "")


def parse_flags(argv: Sequence[str], prog: str, description: str,
                extend: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Build the daemon/app argument parser (settings flags plus `extend`) and parse argv."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    if extend is not None:
        extend(parser)
    return parser.parse_args(list(argv))
