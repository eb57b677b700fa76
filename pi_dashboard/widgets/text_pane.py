"""A Static that repaints only when what it shows changed (most snapshots change nothing in it)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.widgets import Static


class TextPane(Static):
    # A pane whose size the CSS fixes skips the layout pass an update would
    # otherwise trigger: that pass repaints every pane on the screen.
    FIXED_SIZE: ClassVar[bool] = False
    _shown: Text | None = None

    def show_text(self, text: Text) -> None:
        if text != self._shown:
            self._shown = text
            self.update(text, layout=not self.FIXED_SIZE)
