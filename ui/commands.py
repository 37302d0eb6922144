"""Slash commands typed in the input line: one table, a parser and completion.

`COMMANDS` is the single source: name, arguments, help line and the handler that runs it
(command_actions.py, transfer_actions.py); the controller dispatches through it. The parser and
completion are pure code.

`parse('/rename Bob "Bob S"')` returns the command and its arguments by name, or raises
UsageError whose message is the one-line hint shown in the footer. `complete(text, ...)`
completes the word before the end of the line: command names, contact names, file paths
(also after '@' in /add), transfer IDs.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

from chatp2p_core.api.actions import build_table
from chatp2p_core.api.table import ApiError, CommandTable, coerce

from . import command_actions as act
from . import group_actions as groups
from . import transfer_actions as files
from .usage import UsageError

if TYPE_CHECKING:
    from .app import App

# Arguments by name: a string, None when an optional one is absent, a tuple for a `many` one.
Handler = Callable[["App", Mapping[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class Arg:
    name: str           # shown in usage lines: NAME, HOST:PORT ...
    kind: str           # contact, text, word, key, path, address, transfer; rest: the rest of the line
    optional: bool = False
    many: bool = False  # the last argument only: one or more words, given to the handler as a tuple


@dataclasses.dataclass(frozen=True)
class ApiRow:
    """The API action a slash command ends in, and which of its fields each argument fills:
    the arguments are checked against those fields (the same limits and error texts as the
    API's) before anything is sent."""

    command: str
    action: str
    fields: Mapping[str, str]   # argument name -> the action's field name


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    args: tuple[Arg, ...]
    help: str
    handler: Handler = dataclasses.field(compare=False, repr=False)
    api: Optional[ApiRow] = None

    @property
    def usage(self) -> str:
        parts = [f"/{self.name}"]
        parts += [f"[{a.name}]" if a.optional else a.name + ("…" if a.many else "") for a in self.args]
        return " ".join(parts)


COMMANDS: tuple[Command, ...] = (
    Command("add", (Arg("NAME", "text"), Arg("ID|KEY|@FILE", "key")),
            "add a contact by ID (read out), full public key, or key file", act.add_contact,
            ApiRow("contacts", "add", {"NAME": "peer"})),
    Command("remove", (Arg("NAME", "contact"),), "remove a contact and its history (asks first)",
            act.remove_contact, ApiRow("contacts", "remove", {"NAME": "peer"})),
    Command("rename", (Arg("OLD", "contact"), Arg("NEW", "text", optional=True)),
            "change a contact's local name; in an open group, /rename NAME renames the group (admins)",
            act.rename_contact, ApiRow("contacts", "rename", {"OLD": "peer", "NEW": "new_name"})),
    Command("block", (Arg("NAME", "contact"),), "drop and silence a contact", act.block_contact,
            ApiRow("contacts", "block", {"NAME": "peer"})),
    Command("unblock", (Arg("NAME", "contact"),), "undo /block", act.unblock_contact,
            ApiRow("contacts", "unblock", {"NAME": "peer"})),
    Command("connect", (Arg("NAME", "contact"), Arg("HOST:PORT", "address")),
            "reach a contact at an address (UDP)", act.connect,
            ApiRow("p2p", "connect", {"NAME": "peer", "HOST:PORT": "address"})),
    Command("myid", (Arg("FILE|--qr", "path", optional=True),),
            "show my ID; --qr: as a QR code too; with FILE, write my full public key there", act.show_my_id),
    Command("search", (Arg("WORDS", "rest"),), "find messages with these words (accents and case ignored)",
            act.search, ApiRow("p2p", "search", {"WORDS": "text"})),
    Command("delete", (Arg("N|all", "text", optional=True),),
            "delete the newest message of the open conversation (or the Nth newest, or all of it) "
            "on this device (asks first)", act.delete_messages),
    Command("editor", (), "write the message in $EDITOR (saved and closed: it becomes the draft)", act.compose_in_editor),
    Command("verify", (Arg("NAME", "contact"),), "compare safety numbers, then mark the contact verified",
            act.verify_contact),
    Command("sendfile", (Arg("PATH", "path"),), "offer a file to the open conversation (in a group: to every member)",
            files.send_file,
            ApiRow("p2p", "send_file", {"PATH": "file_path"})),
    Command("accept", (Arg("ID", "transfer", optional=True),), "accept a file offer (default: the latest)",
            files.accept, ApiRow("p2p", "accept_file", {"ID": "transfer_id"})),
    Command("reject", (Arg("ID", "transfer", optional=True),), "refuse a file offer (default: the latest)",
            files.reject, ApiRow("p2p", "reject_file", {"ID": "transfer_id"})),
    Command("cancel", (Arg("ID", "transfer"),), "cancel a file transfer (the partial file is deleted)",
            files.cancel, ApiRow("p2p", "cancel_transfer", {"ID": "transfer_id"})),
    Command("pause", (Arg("ID", "transfer", optional=True),), "pause a file transfer (default: the latest)",
            files.pause, ApiRow("p2p", "pause_transfer", {"ID": "transfer_id"})),
    Command("resume", (Arg("ID", "transfer", optional=True),), "resume a paused or failed transfer",
            files.resume, ApiRow("p2p", "resume_transfer", {"ID": "transfer_id"})),
    Command("transfers", (), "list file transfers", files.list_transfers),
    Command("group", (Arg("create", "word"), Arg("NAME", "text"), Arg("MEMBER", "contact", many=True)),
            "create a group with these contacts (up to 63)", groups.create,
            ApiRow("group", "create", {"NAME": "name"})),
    Command("invite", (Arg("MEMBER", "contact"),), "add a contact to the open group (admins)", groups.invite,
            ApiRow("group", "invite", {"MEMBER": "peer"})),
    Command("kick", (Arg("MEMBER", "contact"),), "remove a member from the open group (admins)", groups.kick,
            ApiRow("group", "remove", {"MEMBER": "peer"})),
    Command("leave", (), "leave the open group (asks first)", groups.leave),
    Command("members", (), "the open group's members: admins, online, verified or not a contact", groups.members),
    Command("nick", (Arg("NAME", "text"),), "change my display name", act.set_nick),
    Command("online", (Arg("on|off", "text", optional=True),),
            "online mode: on finds contacts by ID through the public DHT (it sees your IP address), off is private",
            act.set_online),
    Command("help", (), "keys and commands", act.show_help),
    Command("quit", (), "quit", act.quit_app),
)
COMMANDS_BY_NAME: Mapping[str, Command] = MappingProxyType({c.name: c for c in COMMANDS})
ALIASES: Mapping[str, str] = MappingProxyType({"q": "quit", "exit": "quit", "h": "help", "id": "myid",
                                               "rm": "remove", "send": "sendfile"})


@dataclasses.dataclass
class Parsed:
    command: Command
    args: dict[str, Any]

    @property
    def name(self) -> str:
        return self.command.name


@dataclasses.dataclass
class Token:
    text: str           # the unquoted value
    start: int          # offset of its first character (or quote) in the line
    quoted: bool
    closed: bool = True  # False: an unterminated quote


def tokenize(line: str) -> list[Token]:
    """Split on blanks; "double" or 'single' quotes group words. Never raises."""
    tokens: list[Token] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        start = i
        if line[i] in "\"'":
            quote = line[i]
            end = line.find(quote, i + 1)
            if end < 0:
                tokens.append(Token(line[i + 1:], start, True, closed=False))
                break
            tokens.append(Token(line[i + 1:end], start, True))
            i = end + 1
            continue
        while i < n and not line[i].isspace():
            i += 1
        tokens.append(Token(line[start:i], start, False))
    return tokens


def is_command(text: str) -> bool:
    """'/add ...' is a command; '//text' sends '/text'; a lone '/' is a command (asks for one)."""
    return text.startswith("/") and not text.startswith("//")


def lookup(name: str) -> Optional[Command]:
    name = name.lower()
    return COMMANDS_BY_NAME.get(ALIASES.get(name, name))


_DECLARED = build_table()   # the API's rows, bound to no handler: their fields and limits


def check_api_fields(command: Command, args: Mapping[str, Any],
                     table: CommandTable = _DECLARED) -> None:
    """Check the given arguments against the fields of the API action they fill: the command
    table's own validation, so the UI refuses what the daemon would, with the same words."""
    if command.api is None:
        return
    row = table.lookup(command.api.command, command.api.action)
    fields = {field.name: field for field in row.fields}
    for arg_name, field_name in command.api.fields.items():
        value = args.get(arg_name)
        if value is None:
            continue
        try:
            coerce(fields[field_name], value)
        except ApiError as exc:
            raise UsageError(f"{arg_name}: {exc}") from None


def parse(text: str) -> Parsed:
    tokens = tokenize(text.strip()[1:])
    if any(not t.closed for t in tokens):
        raise UsageError("Unclosed quote: put names with spaces in \"quotes\"")
    if not tokens:
        raise UsageError("Type a command after '/': " + " ".join("/" + c.name for c in COMMANDS))
    word = tokens[0].text
    command = lookup(word)
    if command is None:
        close = difflib.get_close_matches(word.lower(), list(COMMANDS_BY_NAME), n=1)
        suggestion = f" Did you mean /{close[0]}?" if close else ""
        raise UsageError(f"Unknown command /{word}.{suggestion} /help lists them all")
    values = [t.text for t in tokens[1:]]
    if command.args and command.args[-1].kind == "rest" and len(values) > len(command.args):
        keep = len(command.args) - 1
        values = values[:keep] + [" ".join(values[keep:])]
    required = [a for a in command.args if not a.optional]
    if len(values) < len(required):
        raise UsageError(f"Usage: {command.usage} — {command.help}")
    many = command.args[-1] if command.args and command.args[-1].many else None
    if many is not None and len(values) >= len(command.args):
        keep = len(command.args) - 1
        values = values[:keep] + [values[keep:]]
    elif len(values) > len(command.args):
        raise UsageError(f"Usage: {command.usage} — {command.help}")
    args: dict[str, Any] = {a.name: None for a in command.args}
    for arg, value in zip(command.args, values):
        if any(not v.strip() for v in (value if isinstance(value, list) else [value])):
            raise UsageError(f"Usage: {command.usage} — {arg.name} is empty")
        args[arg.name] = tuple(value) if isinstance(value, list) else value
    check_api_fields(command, args)
    return Parsed(command, args)


def quote(word: str) -> str:
    """Quote a completion when it has blanks (or quotes) in it."""
    if word and not any(ch.isspace() or ch in "\"'" for ch in word):
        return word
    return '"' + word.replace('"', "'") + '"'


@dataclasses.dataclass
class Completion:
    text: str                   # the new input text
    candidates: list[str]       # what matched (shown in the footer when several)


def complete_path(prefix: str, listdir: Callable[[str], Iterable[str]] = os.listdir,
                  isdir: Callable[[str], bool] = os.path.isdir) -> list[str]:
    """Paths starting with `prefix` ('~' is expanded for listing, kept in the result)."""
    directory, _, partial = prefix.rpartition("/")
    if prefix.startswith("/") and directory == "":
        directory = "/"
    real_dir = os.path.expanduser(directory) if directory else "."
    try:
        names = sorted(listdir(real_dir))
    except OSError:
        return []
    shown_dir = "" if not directory else (directory if directory.endswith("/") else directory + "/")
    out = []
    for name in names:
        if not name.startswith(partial) or (name.startswith(".") and not partial.startswith(".")):
            continue
        path = shown_dir + name
        if isdir(os.path.join(real_dir, name)):
            path += "/"
        out.append(path)
    return out


def complete(text: str, contacts: Iterable[str] = (), transfers: Iterable[str] = (),
             listdir: Callable[[str], Iterable[str]] = os.listdir,
             isdir: Callable[[str], bool] = os.path.isdir) -> Completion:
    """Complete the last word of `text` (the cursor is at the end of the line)."""
    if not is_command(text):
        return Completion(text, [])
    body = text[1:]
    tokens = tokenize(body)
    at_new_word = not body or body[-1].isspace() and (not tokens or tokens[-1].closed)
    if not tokens or (len(tokens) == 1 and not at_new_word):
        word = tokens[0].text.lower() if tokens else ""
        names = [c.name for c in COMMANDS if c.name.startswith(word)]
        return _apply(text, 1, word, names, lambda n: n, space=True)
    command = lookup(tokens[0].text)
    if command is None:
        return Completion(text, [])
    index = len(tokens) if at_new_word else len(tokens) - 1   # argument slot being typed (1-based)
    if index > len(command.args) and command.args and command.args[-1].many:
        index = len(command.args)
    if index > len(command.args):
        return Completion(text, [])
    arg = command.args[index - 1]
    current = Token("", len(body), False) if at_new_word else tokens[-1]
    prefix = current.text
    start = current.start + 1   # offset in `text` (after the '/')
    if arg.kind == "contact":
        folded = prefix.casefold()
        names = sorted({n for n in contacts if n.casefold().startswith(folded)}, key=str.casefold)
        return _apply(text, start, prefix, names, quote, space=True)
    if arg.kind == "transfer":
        ids = sorted(t for t in transfers if t.startswith(prefix))
        return _apply(text, start, prefix, ids, lambda t: t, space=True)
    if arg.kind == "path" or (arg.kind == "key" and prefix.startswith("@")):
        at = "@" if arg.kind == "key" else ""
        paths = complete_path(prefix[len(at):], listdir, isdir)
        return _apply(text, start, prefix, [at + p for p in paths], quote, space=None)
    return Completion(text, [])


def _apply(text: str, start: int, typed: str, words: list[str], render: Callable[[str], str],
           space: Optional[bool]) -> Completion:
    """Replace text[start:] by the only match (plus a space), or extend it to the matches' common
    prefix. `space=None`: a space after the match unless it is a directory ('/' at the end)."""
    if not words:
        return Completion(text, [])
    if len(words) == 1:
        word = words[0]
        trailing = " " if space or (space is None and not word.endswith("/")) else ""
        return Completion(text[:start] + render(word) + trailing, words)
    prefix = os.path.commonprefix(words)
    if len(prefix) <= len(typed):
        return Completion(text, words)
    out = render(prefix)
    if out.startswith('"') and out.endswith('"'):
        out = out[:-1]   # the quote stays open: the name goes on
    return Completion(text[:start] + out, words)


def help_lines() -> list[tuple[str, str]]:
    """(usage, description) of every command, for the help screen."""
    return [(c.usage, c.help) for c in COMMANDS]
