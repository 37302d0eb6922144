"""The conf file's UI sections: `[keys]`, `[theme]` and `[ui]`, read once at start-up."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping, Optional

from chatp2p_core.util import parse_bool

from .keys import KeyMap
from .theme import Theme


@dataclasses.dataclass
class UiSettings:
    """The conf file's `[ui]` section."""

    bell: bool = True
    errors: list = dataclasses.field(default_factory=list)

    @classmethod
    def from_section(cls, values: Mapping[str, str]) -> "UiSettings":
        settings = cls()
        for key, raw in values.items():
            if key == "bell":
                flag = parse_bool(raw)
                if flag is None:
                    settings.errors.append(f"[ui] bell: {raw!r} is not a boolean (true/false)")
                else:
                    settings.bell = flag
            else:
                settings.errors.append(f"[ui] {key}: unknown setting (known: bell)")
        return settings


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
