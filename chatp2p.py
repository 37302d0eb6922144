"""ChatP2P command line and composition root: config -> Node -> API server -> (UI).

`chatp2pd` runs the headless daemon, `chatp2p` the terminal app, `chatp2pctl` the API client.
gevent's monkey patching happens first thing in the long-running entry points, before any
module that opens sockets is imported.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import pathlib
import sys
from typing import Sequence

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _setup_logging(level: str, log_file: str) -> None:
    """A log file rotates itself (0600 files); stderr under journald gets no timestamps of ours."""
    from chatp2p_core.logfiles import FORMAT, PrivateRotatingFileHandler, log_format
    from chatp2p_core.logsafe import EscapingFormatter

    handler: logging.Handler
    if log_file:
        handler = PrivateRotatingFileHandler(os.path.expanduser(log_file))
        line_format = FORMAT
    else:
        handler = logging.StreamHandler(sys.stderr)
        line_format = log_format(sys.stderr, os.environ)
    handler.setFormatter(EscapingFormatter(line_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _daemon_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--rendezvous", dest="serve_rendezvous", action="store_const", const="true",
                        help="serve introductions to other nodes (needs an explicit --p2p-port)")


def main_daemon(argv: Sequence[str] | None = None, prog: str = "chatp2pd") -> int:
    """Headless daemon: serve the API and events until SIGINT/SIGTERM."""
    from gevent import monkey
    monkey.patch_all()

    from chatp2p_core import __version__, config as cfg
    args = cfg.parse_flags(sys.argv[1:] if argv is None else argv, prog,
                           "ChatP2P headless daemon: control API on loopback, events on ZeroMQ.",
                           _daemon_flags)
    if args.version:
        print(f"{prog} {__version__}")
        return 0
    try:
        config = cfg.load(args)
    except cfg.ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(config.log_level, config.log_file)
    return run_daemon(config, prog)


def _refuse_settings(config, prog: str) -> int | None:
    """Settings that make no sense together: the exit code after one clear line, or None."""
    from chatp2p_core.net import nat
    from chatp2p_core.util import is_loopback

    try:
        nat.check_settings(nat.NatSettings(tuple(config.stun_urls), tuple(config.rendezvous_servers)))
        if config.turn_url:
            if not (config.turn_username and config.turn_credential):
                raise nat.NatConfigError("turn_url needs turn_username and turn_credential")
            nat.turn_servers_from([{"url": config.turn_url, "username": config.turn_username,
                                    "credential": config.turn_credential}])
    except nat.NatConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.serve_rendezvous and config.p2p_port == 0:
        print(f"{prog}: --rendezvous needs an explicit --p2p-port (nodes must know where to find it)",
              file=sys.stderr)
        return EXIT_CONFIG
    if not is_loopback(config.ipc_host) and not config.allow_remote_ipc:
        print(f"{prog}: refusing to serve the API on non-loopback address {config.ipc_host}; "
              "pass --allow-remote-ipc to do it (every request then needs the token in "
              "DATA_DIR/ipc.token)", file=sys.stderr)
        return EXIT_CONFIG
    return None


def run_daemon(config, prog: str) -> int:
    """Start the node and the API server, wait for a signal, stop cleanly."""
    import signal

    import gevent
    import gevent.event

    refused = _refuse_settings(config, prog)
    if refused is not None:
        return refused

    # Handlers first: a signal that arrives once run.json says "ready" must stop us cleanly.
    stopping = gevent.event.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stopping.set)
    served = _start_serving(config, prog, "ready", lambda exc: (
        f"{prog}: {exc}; stop it first, or attach to it with: chatp2p --connect"))
    if isinstance(served, int):
        return served
    node, server, runtime, _ = served
    stopping.wait()
    _stop_serving(node, server, runtime)
    return 0


def _start_serving(config, prog: str, ready_word: str, locked_message):
    """Start the node and its API server, write run.json, log the ready line.

    Returns (node, server, runtime files, command table), or an exit code after one clear
    line on stderr; `locked_message(exc)` words the data-dir-in-use case for this program."""
    from chatp2p_core.api.commands import build_table
    from chatp2p_core.api.server import ApiServer
    from chatp2p_core.lockfile import DataDirLocked
    from chatp2p_core.node import Node
    from chatp2p_core.runtime import RuntimeFiles

    node = Node(config)
    try:
        node.start()
    except DataDirLocked as exc:
        print(locked_message(exc), file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:
        print(f"{prog}: cannot start: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    runtime = RuntimeFiles(node.data_dir)
    table = build_table()
    token = runtime.ensure_token() if config.allow_remote_ipc else None
    ssl_context = None
    if config.allow_remote_ipc:  # a token must not cross a network in clear: TLS, pinned
        from chatp2p_core.api import tls
        cert, key = tls.ensure_certificate(node.data_dir)
        ssl_context = tls.server_context(cert, key)
        node.ipc_tls_fingerprint = tls.certificate_fingerprint(cert)
    server = ApiServer(table, node, config.ipc_host, config.ipc_port,
                       idle_timeout=config.idle_timeout, max_request_bytes=config.max_request_bytes,
                       max_connections=config.max_connections, token=token, ssl_context=ssl_context)
    try:
        server.start()
    except OSError as exc:
        print(f"{prog}: cannot listen on {config.ipc_host}:{config.ipc_port}: {exc.strerror or exc} "
              f"(another chatp2p? use --ipc-port, or attach with chatp2p --connect)", file=sys.stderr)
        node.stop()
        return EXIT_RUNTIME
    node.ipc_address = server.address
    status = node.status()
    runtime.write_endpoints(status)
    # What start-up built (modules, keys, the command table: ~36k objects) lives as long as
    # the process: keep it out of the cyclic collector's full passes (27 ms each, a pause
    # every request and message in flight would wait for).
    gc.freeze()
    logging.getLogger("chatp2p").info(
        "%s ipc=%s:%d events=%s p2p_port=%s id=%s%s", ready_word, server.address[0], server.address[1],
        " ".join(status["events"]["endpoints"]), status["p2p"]["port"], status["identity"]["fingerprint"],
        f" tls_pin={node.ipc_tls_fingerprint}" if node.ipc_tls_fingerprint else "")
    return node, server, runtime, table


def _stop_serving(node, server, runtime) -> None:
    """Stop accepting API requests, forget run.json, stop the node (the database is checkpointed)."""
    log = logging.getLogger("chatp2p")
    log.info("stopping")
    server.stop(timeout=0.5)
    runtime.remove_endpoints()
    node.stop()
    log.info("stopped")


def _app_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--connect", metavar="HOST:PORT",
                        help="attach to a running chatp2pd at this API address instead of starting a node")


def _parse_host_port(text: str) -> tuple[str, int] | None:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _app_log_path(config) -> str:
    """The app logs to a file, never to the screen: --log-file, else
    $XDG_STATE_HOME/chatp2p/chatp2p.log, else DATA_DIR/chatp2p.log."""
    from chatp2p_core.util import ensure_private_dir

    if config.log_file:
        return os.path.expanduser(config.log_file)
    folder = config.state_dir or config.data_path   # XDG_STATE_HOME/chatp2p when it is set
    ensure_private_dir(folder)
    return str(folder / "chatp2p.log")


class _StderrToLog:
    """While the UI owns the terminal, fd 2 (tracebacks, library warnings) goes to the log file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.saved: int | None = None

    def __enter__(self) -> "_StderrToLog":
        sys.stderr.flush()
        self.saved = os.dup(2)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.stderr.flush()
        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)
            self.saved = None


def _run_app_embedded(config, prog: str) -> int:
    """Node + API server (as the daemon runs them) + the UI, in this one process."""
    from chatp2p_core.runtime import read_endpoints
    from chatp2p_ui import app as ui_app
    from chatp2p_ui.client import LocalBackend

    refused = _refuse_settings(config, prog)
    if refused is not None:
        return refused

    def locked(exc) -> str:
        running = read_endpoints(config.data_path) or {}
        where = f"{running.get('ipc_host', '127.0.0.1')}:{running['ipc_port']}" if running.get("ipc_port") \
            else "HOST:PORT"
        return (f"{prog}: {exc}.\nA daemon already holds this data dir: attach to it with "
                f"{prog} --connect {where}")

    served = _start_serving(config, prog, "ready (app)", locked)
    if isinstance(served, int):
        return served
    node, server, runtime, table = served
    try:
        with _StderrToLog(_app_log_path(config)):
            code = ui_app.run(LocalBackend(node, table), config.config_path, *_online_choice(config))
    finally:
        _stop_serving(node, server, runtime)
    return code


def _online_choice(config) -> tuple:
    """(the conf file /online and the first start's choice write to, whether to ask): asked
    while no layer (file, environment, flag) says online or private."""
    from chatp2p_core.config import DEFAULT_CONFIG_PATH
    path = config.config_path or pathlib.Path(os.path.expanduser(os.environ.get("CHATP2P_CONFIG") or DEFAULT_CONFIG_PATH))
    return path, config.online is None


def _run_app_connected(config, prog: str, host: str, port: int) -> int:
    """The UI attached to a running chatp2pd through its API and event socket."""
    from chatp2p_core.api.ctl import ApiClient, DaemonUnreachable, format_address, resolve_target
    from chatp2p_ui import app as ui_app
    from chatp2p_ui.client import RemoteBackend

    # The data dir's token only for the daemon its run.json names (and, remote, its TLS pin).
    _, _, token, pin = resolve_target(config.data_path, host, port, None)
    try:
        with ApiClient.connect(host, port, token, timeout=10, pin=pin) as probe:
            reply = probe.request("status")
    except DaemonUnreachable as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as exc:  # answered garbage or hung up
        print(f"{prog}: no ChatP2P API at {format_address(host, port)}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if not reply.get("success"):
        print(f"{prog}: the daemon at {format_address(host, port)} refused: {reply.get('error')}", file=sys.stderr)
        return EXIT_RUNTIME
    logging.getLogger("chatp2p").info("attached to %s", format_address(host, port))
    with _StderrToLog(_app_log_path(config)):
        return ui_app.run(RemoteBackend(host, port, token, pin=pin), config.config_path, *_online_choice(config))


def main_app(argv: Sequence[str] | None = None) -> int:
    """The terminal app: a node and its UI in one process, or the UI of a running daemon (--connect)."""
    from gevent import monkey
    monkey.patch_all()

    prog = "chatp2p"
    from chatp2p_core import __version__, config as cfg
    args = cfg.parse_flags(sys.argv[1:] if argv is None else argv, prog,
                           "ChatP2P terminal app: runs a node and its console UI in one process, "
                           "or attaches the UI to a running chatp2pd with --connect.", _app_flags)
    if args.version:
        print(f"{prog} {__version__}")
        return 0
    try:
        config = cfg.load(args)
    except cfg.ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    target = None
    if args.connect is not None:
        target = _parse_host_port(args.connect)
        if target is None:
            print(f"{prog}: --connect needs HOST:PORT (the daemon's API address, e.g. 127.0.0.1:8889), "
                  f"got {args.connect!r}", file=sys.stderr)
            return EXIT_CONFIG
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(f"{prog}: the terminal app needs a terminal; chatp2pd runs without one", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        _setup_logging(config.log_level, _app_log_path(config))
    except OSError as exc:
        print(f"{prog}: cannot open the log file: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    logging.captureWarnings(True)
    try:
        if target is not None:
            return _run_app_connected(config, prog, *target)
        return _run_app_embedded(config, prog)
    except KeyboardInterrupt:  # Ctrl-C before the UI took over the terminal
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main_ctl(argv: Sequence[str] | None = None) -> int:
    """Command-line client of the API (see chatp2p_core.api.ctl)."""
    from chatp2p_core.api.ctl import main
    return main(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main_daemon())
