"""A Static that repaints only when what it shows changed (most snapshots change nothing in it)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class TextPane(Static):
    _shown: Text | None = None

    def show_text(self, text: Text) -> None:
        if text != self._shown:
            self._shown = text
            self.update(text)
