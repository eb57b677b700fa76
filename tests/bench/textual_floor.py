"""The peer of the dashboard's CPU benchmark: the least a Textual app can do while updating.

    python -m tests.bench.textual_floor --hz 20 [--lines 13]

``--lines`` Statics showing a counter (one by default), each updated ``--hz``
times a second without a layout pass, and a Footer: what any Textual app
showing live values pays for its frames, input thread and terminal output,
whatever it shows.  With ``--lines`` set to the lines pi-dash repaints per frame
(the header's clock and the instances' heartbeat ages), it is what Textual
charges for repainting that much, whoever asks.
"""

from __future__ import annotations

import argparse

from textual.app import App, ComposeResult
from textual.widgets import Footer, Static


class Floor(App[None]):
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, hz: float, lines: int = 1) -> None:
        super().__init__()
        self.hz = hz
        self.lines = lines
        self.count = 0

    def compose(self) -> ComposeResult:
        for n in range(self.lines):
            yield Static("textual floor", id=f"value{n}")
        yield Footer()

    def on_mount(self) -> None:
        self.values = [self.query_one(f"#value{n}", Static) for n in range(self.lines)]
        self.set_interval(1 / self.hz, self.tick)

    def tick(self) -> None:
        self.count += 1
        for n, value in enumerate(self.values):
            value.update(f"textual floor: line {n}, update {self.count}", layout=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hz", type=float, default=1.0)
    parser.add_argument("--lines", type=int, default=1)
    arguments = parser.parse_args()
    Floor(arguments.hz, arguments.lines).run()
