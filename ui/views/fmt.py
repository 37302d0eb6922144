"""Text formatting shared by the views: times, days, sizes, rates, durations."""

from __future__ import annotations

import datetime
import time
from typing import Optional


def clock(ts: float) -> str:
    """Local HH:MM."""
    return time.strftime("%H:%M", time.localtime(ts))


def day_label(day: datetime.date, today: Optional[datetime.date] = None) -> str:
    today = today or datetime.date.today()
    if day == today:
        return "Today"
    if day == today - datetime.timedelta(days=1):
        return "Yesterday"
    label = f"{day.strftime('%A')} {day.day} {day.strftime('%B')}"
    return label if day.year == today.year else f"{label} {day.year}"


def size(n: Optional[float]) -> str:
    if n is None:
        return "? B"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def rate(bytes_per_s: Optional[float]) -> str:
    return "" if not bytes_per_s else size(bytes_per_s) + "/s"


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def ago(ts: Optional[float], now: Optional[float] = None) -> str:
    if not ts:
        return "never"
    delta = max(0, (now or time.time()) - ts)
    if delta < 60:
        return "just now"
    if delta < 3600:
        return f"{int(delta // 60)} min ago"
    if delta < 86400:
        return f"{int(delta // 3600)} h ago"
    return time.strftime("%Y-%m-%d", time.localtime(ts))
