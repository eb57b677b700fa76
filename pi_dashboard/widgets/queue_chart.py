"""Queue depth over time: the fleet's total and the busiest instances, five minutes back."""

from __future__ import annotations

from collections import deque

from textual_plotext import PlotextPlot

from core.snapshot import FleetSnapshot

from ..text import UserText

HISTORY_S = 300
SAMPLE_EVERY_MS = 5000  # a replot costs more than a table update: five minutes in 60 points
LINES = 4


class QueueChart(PlotextPlot):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._samples: deque[tuple[int, dict[str, int]]] = deque(maxlen=HISTORY_S * 1000 // SAMPLE_EVERY_MS)

    def on_mount(self) -> None:
        self.plt.title("Queue depth")

    def show(self, snapshot: FleetSnapshot) -> None:
        if self._samples and snapshot.taken_at_ms - self._samples[-1][0] < SAMPLE_EVERY_MS:
            return
        depth = {v.instance_id: v.pending for v in snapshot.instances if v.counted}
        self._samples.append((snapshot.taken_at_ms, depth))
        self._replot(snapshot.taken_at_ms)

    def _replot(self, now_ms: int) -> None:
        plt = self.plt
        plt.clear_data()
        if not self._samples:
            return
        xs = [(t - now_ms) / 1000 for t, _ in self._samples]
        plt.plot(xs, [sum(d.values()) for _, d in self._samples], label="total", marker="braille")
        latest = self._samples[-1][1]
        busiest = sorted(latest, key=lambda i: (-latest[i], i))[:LINES]
        for instance_id in busiest:
            label = UserText(instance_id).clip(18).shown
            plt.plot(xs, [d.get(instance_id, 0) for _, d in self._samples], label=label, marker="braille")
        plt.xlabel("seconds ago")
        plt.xlim(min(-60.0, xs[0]), 0)
        plt.ylim(0, None)
        self.refresh()
