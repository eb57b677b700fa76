"""A Static that repaints only when what it shows changed (most snapshots change nothing in it)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class TextPane(Static):
    _shown: Text | None = None

    def show_text(self, text: Text) -> None:
        if text == self._shown:
            return
        # A layout pass repaints every pane on the screen: only when the text's
        # height may have changed (more or fewer lines, or lines that wrap).
        relayout = self._shown is None or self._shown.plain.count("\n") != text.plain.count("\n") or self.styles.text_wrap != "nowrap"
        self._shown = text
        self.update(text, layout=relayout)
