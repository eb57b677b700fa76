"""``?``: what every key does."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("q", "quit"),
    ("?", "this help"),
    ("ctrl+p", "command palette: every action by name"),
    ("tab / shift+tab", "move between panes"),
    ("1 .. 7", "on a small terminal, show that pane below the instances"),
    ("enter", "details of the selected instance"),
    ("d", "drain the selected instance: it finishes its work, then goes offline"),
    ("x", "remove the files of the selected instance (dead ones only)"),
    ("r", "release the selected lock (locks pane)"),
    ("/", "filter instances (id, cwd, model, status); escape clears"),
    ("s", "cycle the instances' sort order"),
    ("p", "pause / resume live updates"),
    ("t", "next theme (remembered; built-in ones and ~/.config/pi-dash/themes/*.toml)"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        with VerticalScroll(id="help"):
            yield Static("pi-dash keys", classes="title")
            yield Static(table)
            yield Static("Every action is written to the fleet's event log. Escape closes.", classes="dim")
