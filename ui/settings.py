"""The conf file's UI sections: `[keys]`, `[theme]` and `[ui]`, read once at start-up."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping, Optional

from chatp2p_core.util import parse_bool

from .keys import KeyMap
from .notify import OSC_MODES, NotifySettings
from .theme import Theme


@dataclasses.dataclass
class UiSettings:
    """The conf file's `[ui]` section."""

    bell: bool = True
    notify: NotifySettings = dataclasses.field(default_factory=NotifySettings)
    errors: list = dataclasses.field(default_factory=list)

    @classmethod
    def from_section(cls, values: Mapping[str, str]) -> "UiSettings":
        settings = cls()
        notify: dict[str, object] = {}
        for key, raw in values.items():
            if key in ("bell", "notify_text"):
                flag = parse_bool(raw)
                if flag is None:
                    settings.errors.append(f"[ui] {key}: {raw!r} is not a boolean (true/false)")
                elif key == "bell":
                    settings.bell = flag
                else:
                    notify["show_text"] = flag
            elif key == "notify_desktop":
                flag = parse_bool(raw)
                if raw.strip().lower() == "auto" or flag is not None:
                    notify["desktop"] = "auto" if flag is None else str(flag).lower()
                else:
                    settings.errors.append(f"[ui] notify_desktop: {raw!r} is not auto, true or false")
            elif key == "notify_osc":
                if raw.strip().lower() in OSC_MODES:
                    notify["osc"] = raw.strip().lower()
                else:
                    settings.errors.append(f"[ui] notify_osc: {raw!r} is not one of {', '.join(OSC_MODES)}")
            elif key == "on_message":
                notify["on_message"] = raw.strip()
            else:
                settings.errors.append(f"[ui] {key}: unknown setting (known: {', '.join(UI_KEYS)})")
        settings.notify = NotifySettings(**notify)  # type: ignore[arg-type]
        return settings


UI_KEYS = ("bell", "notify_desktop", "notify_osc", "on_message", "notify_text")


def load_ui_config(config_path: Optional[pathlib.Path], environ: Optional[Mapping[str, str]] = None
                   ) -> tuple[KeyMap, Theme, UiSettings, list[str]]:
    """Key bindings, theme and UI settings from the conf file; errors are reported, not fatal."""
    from chatp2p_core.config import read_sections

    from . import keys as keys_mod
    from . import theme as theme_mod

    errors: list[str] = []
    try:
        keys_sections = read_sections(config_path, "keys")
        theme_sections = read_sections(config_path, "theme")
        ui_sections = read_sections(config_path, "ui")
    except Exception as exc:   # the core already parsed the file; this is belt and braces
        errors.append(f"{config_path}: {exc}")
        keys_sections = theme_sections = ui_sections = {}
    keymap = KeyMap(keys_mod.parse_overrides(keys_sections))
    theme = theme_mod.from_sections(theme_sections, environ)
    settings = UiSettings.from_section(ui_sections.get("ui") or {})
    errors += keymap.errors + theme.errors + settings.errors
    return keymap, theme, settings, errors
