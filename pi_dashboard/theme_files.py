"""Themes shipped as files (``pi_dashboard/themes/*.toml``, package data) and the user's own
(``$XDG_CONFIG_HOME/pi-dash/themes/*.toml``, by default ``~/.config/pi-dash/themes``)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from textual.theme import Theme

from .prefs import config_dir

BUILT_IN = Path(__file__).parent / "themes"
THEME_KEYS = (
    "primary",
    "secondary",
    "warning",
    "error",
    "success",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)


def user_theme_dir(env: Mapping[str, str] | None = None) -> Path:
    return config_dir(env) / "themes"


def parse_theme(path: Path) -> Theme:
    """One theme file; raises ``ValueError`` saying what is wrong with it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    name, primary = data.get("name"), data.get("primary")
    if not isinstance(name, str) or not name or not isinstance(primary, str):
        raise ValueError(f"{path}: needs a name and a primary colour")
    colours = {key: data[key] for key in THEME_KEYS if key in data}
    if any(not isinstance(value, str) for value in colours.values()):
        raise ValueError(f"{path}: colours must be strings like \"#5fafff\"")
    try:
        return Theme(name=name, dark=bool(data.get("dark", True)), **colours)
    except Exception as exc:  # Textual validates colours its own way
        raise ValueError(f"{path}: {exc}") from None


def load_themes(directories: list[Path] | None = None) -> tuple[list[Theme], list[str]]:
    """Every readable theme in the built-in and user folders, and what was wrong with the rest."""
    themes: list[Theme] = []
    problems: list[str] = []
    for directory in directories if directories is not None else [BUILT_IN, user_theme_dir()]:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            try:
                themes.append(parse_theme(path))
            except ValueError as exc:
                problems.append(str(exc))
    return themes, problems
