"""ChatP2P command line and composition root: config -> Node -> API server -> (UI).

`chatp2pd` runs the headless daemon, `chatp2p` the terminal app, `chatp2pctl` the API client.
gevent's monkey patching happens first thing in the long-running entry points, before any
module that opens sockets is imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _setup_logging(level: str, log_file: str) -> None:
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(os.path.expanduser(log_file), encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _daemon_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="store_true", help="print the version and exit")


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


def run_daemon(config, prog: str) -> int:
    """Start the node and the API server, wait for a signal, stop cleanly."""
    import signal

    import gevent
    import gevent.event

    from chatp2p_core.ipc import ApiServer, is_loopback
    from chatp2p_core.lockfile import DataDirLocked
    from chatp2p_core.runtime import RuntimeFiles
    from chatp2p_core.commands import build_table
    from chatp2p_core.node import Node

    log = logging.getLogger("chatp2p")
    if not is_loopback(config.ipc_host) and not config.allow_remote_ipc:
        print(f"{prog}: refusing to serve the API on non-loopback address {config.ipc_host}; "
              "pass --allow-remote-ipc to do it (every request then needs the token in "
              "DATA_DIR/ipc.token)", file=sys.stderr)
        return EXIT_CONFIG

    node = Node(config)
    try:
        node.start()
    except DataDirLocked as exc:
        print(f"{prog}: {exc}; stop it first, or attach to it with: chatp2p --connect", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:
        print(f"{prog}: cannot start: {exc}", file=sys.stderr)
        return EXIT_RUNTIME

    runtime = RuntimeFiles(node.data_dir)
    token = runtime.ensure_token() if config.allow_remote_ipc else None
    server = ApiServer(build_table(), node, config.ipc_host, config.ipc_port,
                       idle_timeout=config.idle_timeout, max_request_bytes=config.max_request_bytes,
                       max_connections=config.max_connections, token=token)
    try:
        server.start()
    except OSError as exc:
        print(f"{prog}: cannot listen on {config.ipc_host}:{config.ipc_port}: {exc.strerror or exc}",
              file=sys.stderr)
        node.stop()
        return EXIT_RUNTIME
    node.ipc_address = server.address
    status = node.status()
    runtime.write_endpoints(status)
    log.info("ready ipc=%s:%d events=%s p2p_port=%s id=%s",
             server.address[0], server.address[1], " ".join(status["events"]["endpoints"]),
             status["p2p"]["port"], status["identity"]["fingerprint"])

    stopping = gevent.event.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stopping.set)
    stopping.wait()
    log.info("stopping")
    server.stop(timeout=0.5)
    runtime.remove_endpoints()
    node.stop()
    log.info("stopped")
    return 0


def main_app(argv: Sequence[str] | None = None) -> int:
    """The terminal app; until the UI lands it runs the daemon in the foreground."""
    return main_daemon(argv, prog="chatp2p")


def main_ctl(argv: Sequence[str] | None = None) -> int:
    """Command-line client of the API (see chatp2p_core.ctl)."""
    from chatp2p_core.ctl import main
    return main(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main_daemon())
