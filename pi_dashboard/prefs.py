"""What pi-dash remembers between runs: the last theme and each table's sort order.

Kept in ``$XDG_CONFIG_HOME/pi-dash/prefs.json`` (default ``~/.config/pi-dash/``),
beside the user's own themes.  A missing or damaged file means the defaults: a
preference is never worth a failed start.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PREFS_FILE = "prefs.json"


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/pi-dash``, else ``~/.config/pi-dash``."""
    env = os.environ if env is None else env
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "pi-dash"


@dataclass(slots=True)
class Prefs:
    theme: str | None = None
    sorts: dict[str, tuple[str, bool]] = field(default_factory=dict)  # table id -> (column key, reversed)

    def to_json(self) -> str:
        document = {"theme": self.theme, "sorts": {table: list(sort) for table, sort in sorted(self.sorts.items())}}
        return json.dumps(document, indent=2) + "\n"


def load_prefs(directory: Path | None = None) -> Prefs:
    path = (directory or config_dir()) / PREFS_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return Prefs()
    if not isinstance(document, dict):
        return Prefs()
    theme = document.get("theme")
    sorts: dict[str, tuple[str, bool]] = {}
    raw_sorts = document.get("sorts")
    for table, sort in (raw_sorts.items() if isinstance(raw_sorts, dict) else ()):
        if isinstance(sort, list) and len(sort) == 2 and isinstance(sort[0], str) and isinstance(sort[1], bool):
            sorts[str(table)] = (sort[0], sort[1])
    return Prefs(theme if isinstance(theme, str) else None, sorts)


def save_prefs(prefs: Prefs, directory: Path | None = None) -> str | None:
    """Write ``prefs`` whole (temporary file, then rename); returns why it could not, or ``None``."""
    directory = directory or config_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".prefs-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(prefs.to_json())
            os.replace(temporary, directory / PREFS_FILE)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        return f"cannot save preferences in {directory}: {exc.strerror or exc}"
    return None
