"""How `chatp2pctl group ...` prints its answers for people (`--json` prints them raw).

Why apart from ctl.py: the group views are the largest answers the client formats, and ctl.py
only needs to know which printer goes with which action (`PRINTERS`).
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

from .ctl import format_data, format_table


def _local(iso: Any) -> str:
    """An ISO 8601 UTC time of the API as local `YYYY-MM-DD HH:MM`."""
    try:
        moment = datetime.datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return str(iso)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def _who(member: dict) -> str:
    return str(member.get("name") or member.get("id") or "?")


def format_groups(groups: list) -> str:
    if not groups:
        return "no groups"
    rows = []
    for group in groups:
        members = group.get("members") or []
        rows.append([str(group.get("group", "")), str(group.get("name", "")), str(len(members)),
                     str(group.get("online", 0)), str(group.get("unread", 0)),
                     str(group.get("state", "")) + (", admin" if group.get("admin") else "")])
    return format_table(["GROUP", "NAME", "MEMBERS", "ONLINE", "UNREAD", "STATE"], rows)


def format_group(group: dict) -> str:
    """A group's summary, then its members (`*` marks this node)."""
    lines = [f"{group.get('name')}  ({group.get('group')}, {group.get('state')})"]
    extra = [f"{key} {group[key]}" for key in ("records", "pending", "key_epoch") if key in group]
    if extra:
        lines.append(", ".join(extra))
    rows = []
    for member in group.get("members") or []:
        state = ",".join(flag for flag, on in (("online", member.get("online")), ("contact", member.get("contact")),
                                               ("verified", member.get("verified"))) if on) or "-"
        rows.append([("* " if member.get("me") else "  ") + _who(member), str(member.get("role", "")), state,
                     str(member.get("id", ""))])
    lines.append(format_table(["  MEMBER", "ROLE", "STATE", "ID"], rows))
    if group.get("former"):
        lines.append("former members: " + ", ".join(map(str, group["former"])))
    return "\n".join(lines)


def format_group_message(message: dict) -> str:
    """`2026-01-31 18:02  Bob: text`; our own with ✓ (some members have it) or ✓✓ (all)."""
    when = _local(message.get("created"))
    if message.get("kind") == "gap":
        return f"{when}  — {message.get('body')} messages are no longer available —"
    who = "me" if message.get("outgoing") else str(message.get("from_name") or message.get("from") or "?")
    file = message.get("file")
    text = f"[file {file.get('name')} ({file.get('size')} bytes)]" if isinstance(file, dict) else str(message.get("body", ""))
    marks = ""
    if message.get("outgoing"):
        marks = " ✓✓" if message.get("delivered_all") else " ✓" if message.get("delivered") else ""
    if not message.get("pq_verified"):
        marks += " (not yet pq-verified)"
    lines = text.split("\n")
    indent = " " * (len(when) + 2)
    return f"{when}  {who}{marks}: {lines[0]}" + "".join(f"\n{indent}{line}" for line in lines[1:])


def format_history(history: dict) -> str:
    messages = history.get("messages") or []
    return "\n".join(format_group_message(m) for m in messages) if messages else "no messages"


def _checked(printer: Callable[[Any], str], kind: type) -> Callable[[Any], str]:
    """A printer for answers of the expected type; anything else is shown as JSON."""
    return lambda data: printer(data) if isinstance(data, kind) else format_data(data)


PRINTERS: dict[tuple[str, Any], Callable[[Any], str]] = {
    ("group", "list"): _checked(format_groups, list),
    ("group", "history"): _checked(format_history, dict),
    **{("group", action): _checked(format_group, dict)
       for action in ("create", "info", "invite", "remove", "promote", "leave", "rename")},
}
