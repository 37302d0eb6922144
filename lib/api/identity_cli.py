"""`chatp2pctl identity export FILE` and `identity import FILE [--force]`.

Why in ctl and not the API: a backup is the private key itself, so it never crosses the API
socket; ctl reads and writes DATA_DIR/identity.key directly, as the same user the daemon runs
as. Import needs the daemon stopped (it holds the data dir's lock) and never replaces an
identity unless told: the replaced key is kept beside it as identity.replaced.key.
"""

from __future__ import annotations

import argparse
import getpass
import os
import pathlib
import sys
from typing import Callable

from ..crypto import backup, identity as ident
from ..lockfile import DataDirLock, DataDirLocked
from ..util import ensure_private_dir, write_private_file
from .ctl import EXIT_FAILED, EXIT_OK, UsageError, _print

REPLACED_FILE = "identity.replaced.key"


def add_identity_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    parent = command("identity", "back up or restore this node's identity (its private keys)")
    actions = parent.add_subparsers(dest="identity_action", metavar="ACTION", required=True)
    export = actions.add_parser("export", help="write DATA_DIR/identity.key, encrypted with a passphrase, to FILE",
                                description="write DATA_DIR/identity.key, encrypted with a passphrase "
                                            "(scrypt + ChaCha20-Poly1305), to FILE (created 0600, never overwritten)")
    export.add_argument("file", metavar="FILE")
    imported = actions.add_parser("import", help="restore an identity from a backup FILE (the daemon stopped)",
                                  description="restore an identity from a backup FILE into DATA_DIR; the daemon "
                                              "must be stopped")
    imported.add_argument("file", metavar="FILE")
    imported.add_argument("--force", action="store_true",
                          help=f"replace an existing identity (kept as DATA_DIR/{REPLACED_FILE})")
    for parser in (export, imported):
        parser.add_argument("--passphrase-file", metavar="FILE",
                            help="read the passphrase from the first line of FILE (default: ask on the "
                                 "terminal, or read one line of standard input)")


def _passphrase(args: argparse.Namespace, confirm: bool) -> str:
    if args.passphrase_file:
        try:
            with open(os.path.expanduser(args.passphrase_file), encoding="utf-8") as handle:
                return handle.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {args.passphrase_file}: {getattr(exc, 'strerror', None) or exc}") from None
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    text = getpass.getpass("Passphrase: ")
    if confirm and getpass.getpass("Passphrase again: ") != text:
        raise UsageError("the two passphrases differ")
    return text


def run_identity(args: argparse.Namespace, data_dir: pathlib.Path) -> int:
    if args.identity_action == "export":
        return _export(args, data_dir)
    return _import(args, data_dir)


def _export(args: argparse.Namespace, data_dir: pathlib.Path) -> int:
    source = data_dir / ident.KEY_FILE
    try:
        secret = source.read_bytes()
    except OSError as exc:
        _print(f"chatp2pctl: cannot read {source}: {exc.strerror}", sys.stderr)
        return EXIT_FAILED
    try:
        identity = ident.decode_private(secret)   # a damaged key is said now, not at restore time
    except ident.IdentityError as exc:
        _print(f"chatp2pctl: {source}: {exc}", sys.stderr)
        return EXIT_FAILED
    target = pathlib.Path(args.file).expanduser()
    if target.exists():
        raise UsageError(f"{target} exists: choose a new file name")
    try:
        sealed = backup.seal(secret, _passphrase(args, confirm=True))
    except backup.BackupError as exc:
        raise UsageError(str(exc)) from None
    try:
        if not write_private_file(target, sealed, replace=False):
            raise UsageError(f"{target} exists: choose a new file name")
    except OSError as exc:
        _print(f"chatp2pctl: cannot write {target}: {exc.strerror}", sys.stderr)
        return EXIT_FAILED
    _print(f"exported {identity.id} to {target}", sys.stdout)
    return EXIT_OK


def _import(args: argparse.Namespace, data_dir: pathlib.Path) -> int:
    source = pathlib.Path(args.file).expanduser()
    try:
        blob = source.read_bytes()[:backup.MAX_BACKUP + 1]
    except OSError as exc:
        _print(f"chatp2pctl: cannot read {source}: {exc.strerror}", sys.stderr)
        return EXIT_FAILED
    try:
        secret = backup.open_sealed(blob, _passphrase(args, confirm=False))
        identity = ident.decode_private(secret)
    except (backup.BackupError, ident.IdentityError) as exc:
        _print(f"chatp2pctl: {source}: {exc}", sys.stderr)
        return EXIT_FAILED
    ensure_private_dir(data_dir)
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except DataDirLocked as exc:
        _print(f"chatp2pctl: {exc}: stop the daemon first", sys.stderr)
        return EXIT_FAILED
    try:
        target = data_dir / ident.KEY_FILE
        if target.exists():
            current = target.read_bytes()
            if current == secret:
                _print(f"{identity.id} is already this node's identity", sys.stdout)
                return EXIT_OK
            if not args.force:
                _print(f"chatp2pctl: {data_dir} already has an identity: --force replaces it "
                       f"(the current one is kept as {REPLACED_FILE}; export it first to be safe)", sys.stderr)
                return EXIT_FAILED
            write_private_file(data_dir / REPLACED_FILE, current)
        write_private_file(target, secret)
    finally:
        lock.release()
    _print(f"imported {identity.id} into {data_dir}", sys.stdout)
    return EXIT_OK
