"""``?``: what every key does, and beside it what every figure on the screen means."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Static

from ..actions import DashAction
from ..glossary import glossary
from .scrolling import KeyScroll


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, actions: Sequence[DashAction], *, read_only: bool = False) -> None:
        super().__init__()
        self.actions = actions
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for entry in self.actions:
            if entry.in_help:
                table.add_row(entry.shown_key, entry.description)
        note = (
            "Read-only: the fleet cannot be changed from here (no drain, release or removal). Escape closes."
            if self.read_only
            else "Every action is written to the fleet's event log. Escape closes."
        )
        with KeyScroll(id="help"):  # side by side when wide, one under the other when small
            with KeyScroll(id="help-keys"):
                yield Static("pi-dash keys", classes="title")
                yield Static(table)
                yield Static(note, classes="dim")
            with KeyScroll(id="help-glossary"):
                yield Static("What the figures mean", classes="title")
                yield Static(self._glossary())

    @staticmethod
    def _glossary() -> Table:
        terms = Table.grid(padding=(0, 1))
        terms.add_column(style="bold", no_wrap=True)
        terms.add_column()
        for section, entries in glossary():
            terms.add_row(Text(section, style="underline"), "")
            for term, meaning in entries:
                terms.add_row(Text(term), Text(meaning))
        return terms
