"""Layered settings: built-in defaults < conf file < CHATP2P_* environment < command-line flags.

Every setting is declared once in SETTINGS; the conf file section/key, the environment
variable and the command-line flag are all derived from that one row, so they cannot drift.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import hashlib
import os
import pathlib
import typing
from typing import Any, Callable, Mapping, Sequence

from .errors import Invalid
from .util import parse_bool, write_private_file

DEFAULT_CONFIG_PATH = "~/.config/chatp2p/chatp2p.conf"
DEFAULT_DATA_DIR = "~/.local/share/chatp2p"
ENV_PREFIX = "CHATP2P_"
LOG_LEVELS = ("debug", "info", "warning", "error")
CRYPTO_BACKENDS = ("auto", "pycryptodome", "liboqs")
# Online mode's public infrastructure (it sees the user's IP address: the choice says so).
PUBLIC_DHT_BOOTSTRAP = ["router.bittorrent.com:6881", "dht.transmissionbt.com:6881",
                        "router.utorrent.com:6881", "dht.libtorrent.org:25401"]
PUBLIC_STUN_URLS = ["stun:stun.cloudflare.com:3478", "stun:stun.l.google.com:19302",
                    "stun:stun.nextcloud.com:3478"]


class ConfigError(Invalid):
    """A setting has a bad value; the message names where it came from and what was expected."""


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str          # attribute name, also CHATP2P_<NAME> and --<name-with-dashes>
    section: str       # conf file section
    key: str           # conf file key
    kind: str          # str | int | port | optport | float | bool | optbool | list | path | choice
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    secret: bool = False   # no command-line flag: every local user can read a process's argv
    false_flag: str = ""   # a bool's "off" flag when --no-<name> would read badly (--private)

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
    Setting("p2p_host", "p2p", "host", "str", "0.0.0.0", "local address of the P2P UDP socket (0.0.0.0 or ::: IPv4 and IPv6 on one port)"),
    Setting("p2p_port", "p2p", "port", "port", 0, "UDP port for all peer-to-peer traffic (0 = any free port)"),
    Setting("autostart", "p2p", "autostart", "bool", True, "start the P2P network at launch"),
    Setting("online", "p2p", "online", "optbool", None,
            "online mode: find contacts by ID alone through the public Mainline DHT and public STUN "
            "servers, which see your IP address (unset: chatp2p asks on first start, chatp2pd stays "
            "private); flags --online / --private", false_flag="--private"),
    Setting("stun_urls", "p2p", "stun_urls", "list", [], "STUN servers, comma-separated stun:host:port (none by default)"),
    Setting("public_stun_urls", "p2p", "public_stun_urls", "list", PUBLIC_STUN_URLS,
            "STUN servers online mode uses when stun_urls is empty"),
    Setting("dht_bootstrap", "p2p", "dht_bootstrap", "list", PUBLIC_DHT_BOOTSTRAP,
            "online mode: DHT nodes to join the Mainline DHT through, comma-separated host:port"),
    Setting("dht_private_swarm", "p2p", "dht_private_swarm", "bool", False,
            "the dht_bootstrap nodes are a private DHT swarm of your own (a closed network or tests), "
            "not public routers"),
    Setting("dht_port", "p2p", "dht_port", "port", 0, "online mode: UDP port of the DHT (0 = any free port)"),
    Setting("dht_lookup_interval", "p2p", "dht_lookup_interval", "float", 5.0,
            "online mode: seconds between DHT lookups of a contact without a session while it is sought "
            "often (after a start, a lost session, a message to it; at least 0.5); the public DHT's "
            "nodes answer each lookup"),
    Setting("port_mapping", "p2p", "port_mapping", "bool", True,
            "online mode: ask the router (UPnP-IGD, NAT-PMP) to forward the P2P port"),
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
    Setting("lan_discovery", "p2p", "lan_discovery", "optbool", None,
            "find contacts on the local network segment (unset: on in online mode, off in private mode)"),
    Setting("lan_port", "p2p", "lan_port", "port", 48889, "well-known UDP port of LAN discovery announcements"),
    Setting("lan_interval", "p2p", "lan_interval", "float", 5.0,
            "seconds between LAN discovery announcements (at least 0.1): a contact on the segment is "
            "found within about one interval"),
    Setting("keepalive_interval", "p2p", "keepalive_interval", "float", 15.0,
            "seconds between keepalives; three silent intervals mean the peer is gone"),
    Setting("udp_batching", "p2p", "udp_batching", "bool", True,
            "send and receive UDP in batches the kernel segments and coalesces (GSO/GRO) where it can; "
            "false for troubleshooting"),
    Setting("message_ttl_days", "p2p", "message_ttl_days", "float", 7.0,
            "a queued message fails (message_failed) when its contact stays unreachable this long"),
    Setting("group_retention_days", "p2p", "group_retention_days", "float", 30.0,
            "group messages older than this are pruned (members back after longer see how many they missed)"),
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
        "optbool": "a boolean (true/false, yes/no, on/off, 1/0), or empty",
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
    if kind == "optbool" and (raw is None or str(raw).strip() == ""):
        return None
    if kind in ("bool", "optbool"):
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
    # XDG_STATE_HOME/chatp2p (the app's log) and XDG_RUNTIME_DIR (the event socket), when set
    state_dir: pathlib.Path | None = None
    runtime_dir: pathlib.Path | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def online_mode(self) -> bool:
        """Online (public DHT and STUN) only when chosen; unset is private."""
        return bool(self.values["online"])

    @property
    def lan_discovery_on(self) -> bool:
        chosen = self.values["lan_discovery"]
        return self.online_mode if chosen is None else bool(chosen)

    @property
    def effective_stun_urls(self) -> list[str]:
        """The configured STUN servers; in online mode with none configured, the public ones."""
        return list(self.values["stun_urls"]) or (list(self.values["public_stun_urls"]) if self.online_mode else [])

    @property
    def data_path(self) -> pathlib.Path:
        return pathlib.Path(os.path.expanduser(self.values["data_dir"]))

    @property
    def runtime_path(self) -> pathlib.Path:
        """Where the event socket goes: a directory of this data dir's own under
        XDG_RUNTIME_DIR (tmpfs, private, short paths), else the data dir itself."""
        if self.runtime_dir is None:
            return self.data_path
        tag = hashlib.sha256(str(self.data_path.resolve()).encode()).hexdigest()[:12]
        return self.runtime_dir / f"{APP_DIR}-{tag}"

    def replace(self, **changes: Any) -> "Config":
        values = dict(self.values)
        for name, raw in changes.items():
            setting = SETTINGS_BY_NAME[name]
            values[name] = _checked(setting, raw, f"setting {name}")
        return Config(values, self.config_path, self.state_dir, self.runtime_dir)


def _checked(setting: Setting, raw: Any, origin: str) -> Any:
    try:
        return _convert(setting, raw)
    except (ValueError, TypeError):
        raise ConfigError(f"{origin}: {raw!r} is not valid, expected {_expected(setting)}") from None


# What a flag's value looks like in --help, by kind (a choice lists its choices).
METAVARS = {"str": "TEXT", "int": "N", "port": "PORT", "optport": "PORT", "float": "NUMBER", "list": "A,B,...",
            "path": "PATH"}
SECTION_TITLES = {"node": "identity and data", "ipc": "control API", "events": "events",
                  "p2p": "peer-to-peer network", "files": "file transfers", "log": "logging"}


def _shown_default(setting: Setting) -> str:
    default = setting.default
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return ", ".join(default) or "none"
    if default is None and setting.kind == "optbool":
        return "unset"
    return "none" if default in (None, "") else str(default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare --config and one flag per setting, grouped by conf section, each help line with
    its default and environment variable; values stay raw text until `load`."""
    parser.add_argument("--config", metavar="FILE", help=f"conf file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--print-config", action=_PrintConfig,
                        help="print the commented default conf file and exit "
                             f"(e.g. chatp2p --print-config > {DEFAULT_CONFIG_PATH})")
    groups: dict[str, Any] = {}
    for setting in SETTINGS:
        group = groups.get(setting.section)
        if group is None:
            title = SECTION_TITLES.get(setting.section, setting.section)
            group = groups[setting.section] = parser.add_argument_group(f"{title} ([{setting.section}] in the conf file)")
        text = f"{setting.help} (default: {_shown_default(setting)}; env {setting.env})"
        if setting.secret:
            group.add_argument(setting.flag, action=_RefusedSecretFlag, help=argparse.SUPPRESS)
        elif setting.false_flag:
            group.add_argument(setting.flag, dest=setting.name, action="store_const", const=True, default=None,
                               help=text)
            group.add_argument(setting.false_flag, dest=setting.name, action="store_const", const=False,
                               default=None, help=argparse.SUPPRESS)
        elif setting.kind in ("bool", "optbool"):
            group.add_argument(setting.flag, dest=setting.name, action=argparse.BooleanOptionalAction,
                               default=None, help=text)
        elif setting.kind == "choice":
            group.add_argument(setting.flag, dest=setting.name, choices=setting.choices, default=None,
                               type=str.lower, help=text)
        else:
            group.add_argument(setting.flag, dest=setting.name, metavar=METAVARS.get(setting.kind, "VALUE"),
                               default=None, help=text)


def default_conf_text() -> str:
    """The commented conf file the package carries (chatp2p_core/chatp2p.conf, the source
    tree's conf/chatp2p.conf)."""
    import importlib.resources

    return importlib.resources.files(__package__).joinpath("chatp2p.conf").read_text(encoding="utf-8")


class _PrintConfig(argparse.Action):
    def __init__(self, option_strings, dest, help=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        import sys

        sys.stdout.write(default_conf_text())
        parser.exit(0)


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
    xdg = xdg_defaults(environ)
    values.update(xdg.settings)

    explicit = getattr(args, "config", None) if args is not None else None
    explicit = explicit or environ.get(ENV_PREFIX + "CONFIG")
    path = pathlib.Path(os.path.expanduser(explicit)) if explicit else xdg.config_path
    try:
        found = path.is_file()
    except OSError as exc:   # a home directory we may not enter (another user's HOME)
        if explicit:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        found = False
    if explicit and not found:
        raise ConfigError(f"{path}: conf file not found")
    config_path = path if found else None
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
    return Config(values, config_path, xdg.state_dir, xdg.runtime_dir)


# -- XDG base directories ----------------------------------------------------------------------
# Where the defaults go when XDG_CONFIG_HOME, XDG_DATA_HOME, XDG_STATE_HOME, XDG_RUNTIME_DIR are
# set (and the downloads folder of ~/.config/user-dirs.dirs, as `xdg-user-dir DOWNLOAD` reads it).
# Unset, every path stays what it was; an identity already at the old data dir keeps being used,
# so setting XDG_DATA_HOME never makes a second identity.
APP_DIR = "chatp2p"


class XdgDefaults(typing.NamedTuple):
    config_path: pathlib.Path
    settings: dict[str, str]            # data_dir, downloads_dir when the environment moves them
    state_dir: pathlib.Path | None
    runtime_dir: pathlib.Path | None


def _home(environ: Mapping[str, str]) -> pathlib.Path:
    return pathlib.Path(environ.get("HOME") or os.path.expanduser("~"))


def _xdg(environ: Mapping[str, str], var: str) -> pathlib.Path | None:
    """An XDG variable's directory; the spec says to ignore one that is not absolute."""
    value = environ.get(var, "")
    return pathlib.Path(value) if value and os.path.isabs(value) else None


def user_download_dir(environ: Mapping[str, str]) -> pathlib.Path | None:
    """XDG_DOWNLOAD_DIR from $XDG_CONFIG_HOME/user-dirs.dirs (`xdg-user-dir DOWNLOAD`), if set
    to something other than the home directory itself."""
    config_home = _xdg(environ, "XDG_CONFIG_HOME") or _home(environ) / ".config"
    try:
        text = (config_home / "user-dirs.dirs").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "XDG_DOWNLOAD_DIR":
            value = value.strip().strip('"').replace("$HOME", str(_home(environ)))
            path = pathlib.Path(value)
            return path if path.is_absolute() and path != _home(environ) else None
    return None


def xdg_defaults(environ: Mapping[str, str]) -> XdgDefaults:
    config_home = _xdg(environ, "XDG_CONFIG_HOME")
    config_path = (config_home or _home(environ) / ".config") / APP_DIR / "chatp2p.conf"
    settings: dict[str, str] = {}
    data_home = _xdg(environ, "XDG_DATA_HOME")
    if data_home is not None:
        legacy = _home(environ) / ".local" / "share" / APP_DIR
        wanted = data_home / APP_DIR
        keep_legacy = (legacy / "identity.key").exists() and not (wanted / "identity.key").exists()
        settings["data_dir"] = str(legacy if keep_legacy else wanted)
    downloads = user_download_dir(environ)
    if downloads is not None:
        settings["downloads_dir"] = str(downloads / APP_DIR)
    state_home = _xdg(environ, "XDG_STATE_HOME")
    return XdgDefaults(config_path, settings, state_home / APP_DIR if state_home else None,
                       _xdg(environ, "XDG_RUNTIME_DIR"))


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
    parser = build_parser(prog, description, extend)
    return parser.parse_args(list(argv))


def build_parser(prog: str, description: str,
                 extend: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
    """The daemon/app argument parser: settings flags grouped by section, `extend`'s own, and
    --print-completion bash|zsh (shtab, generated from this very parser)."""
    import shtab

    parser = argparse.ArgumentParser(prog=prog, description=description)
    if extend is not None:
        extend(parser)
    add_arguments(parser)
    shtab.add_argument_to(parser, ["--print-completion"], help="print a bash or zsh completion script and exit")
    return parser

def save_setting(path: pathlib.Path, name: str, value: Any) -> None:
    """Write `name = value` into the conf file at `path` (created 0600 if missing), keeping
    every other line and comment: a choice made in the app (online mode) then holds for every
    program that reads the file, a daemon started by a service unit included."""
    setting = SETTINGS_BY_NAME[name]
    checked = _checked(setting, value, f"setting {name}")
    text = "true" if checked is True else "false" if checked is False else \
        ", ".join(checked) if isinstance(checked, list) else "" if checked is None else str(checked)
    line = f"{setting.key} = {text}"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    section, start = None, None
    for index, raw in enumerate(lines):
        stripped = raw.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
            if section == setting.section and start is None:
                start = index
            continue
        key = stripped.split("=", 1)[0].strip() if "=" in stripped and not stripped.startswith(("#", ";")) else None
        if section == setting.section and key == setting.key:
            lines[index] = line
            break
    else:
        if start is None:
            lines += ([""] if lines else []) + [f"[{setting.section}]", line]
        else:
            lines.insert(start + 1, line)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(path, ("\n".join(lines) + "\n").encode("utf-8"))
