"""The peer of the dashboard's CPU benchmark: the least a Textual app can do while updating.

    python -m tests.bench.textual_floor --hz 20

One Static showing a counter, updated ``--hz`` times a second without a layout
pass, and a Footer: what any Textual app showing a live value pays for its
frames, input thread and terminal output, whatever it shows.
"""

from __future__ import annotations

import argparse

from textual.app import App, ComposeResult
from textual.widgets import Footer, Static


class Floor(App[None]):
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, hz: float) -> None:
        super().__init__()
        self.hz = hz
        self.count = 0

    def compose(self) -> ComposeResult:
        yield Static("textual floor", id="value")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(1 / self.hz, self.tick)

    def tick(self) -> None:
        self.count += 1
        self.query_one("#value", Static).update(f"textual floor: update {self.count}", layout=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hz", type=float, default=1.0)
    Floor(parser.parse_args().hz).run()
