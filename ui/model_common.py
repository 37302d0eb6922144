"""What the contact model (model.py) and the group model (groups.py) share: time parsing and
the alerts they hand the controller. Its own module so neither imports the other's internals."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Optional


def parse_time(value: Any, default: Optional[float] = None) -> Optional[float]:
    """ISO-8601 (the API's form, 'Z' or offset), or a number of seconds, to epoch seconds."""
    if value is None or value == "":
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        moment = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return default
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


@dataclasses.dataclass
class Alert:
    """Something the controller must do beyond redrawing: ring, open a dialog, show a notice."""

    kind: str       # bell, mark_read, refresh, key_mismatch, contact_request, notice, group_refresh,
                    # group_history, group_mark_read
    data: dict
