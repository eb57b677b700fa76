"""Queue depth over the last five minutes: the fleet's total and the busiest instances.

Each series has its own marker (told apart without colour), named in the
title, which is the legend: a legend box inside the plot would cover the data.
Ticks are whole numbers: tasks on the left, seconds ago below.
"""

from __future__ import annotations

import math

from textual.app import RenderResult
from textual_plotext import PlotextPlot

from core.snapshot import FleetSnapshot

from ..queue_history import QueueHistory
from ..text import UserText, clip_middle

WINDOW_MS = 300_000  # the README's five minutes
STEP_MS = 5_000  # a replot costs more than a table update: five minutes in 60 points
LINES = 4  # the busiest instances drawn beside the total
MARKERS = ("•", "+", "x", "o", "*")  # the total's, then each instance's, in the title's order
LABEL_WIDTH = 10
X_TICKS = list(range(-WINDOW_MS // 1000, 1, 60))


def y_ticks(deepest: int, rows: int) -> list[int]:
    """Whole-number ticks from 0 past ``deepest``, about one per three rows of plot, at a round step."""
    wanted = max(1, min(6, rows // 3))
    step = 1
    for candidate in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        step = candidate
        if math.ceil(max(deepest, 1) / candidate) <= wanted:
            break
    else:
        step = math.ceil(max(deepest, 1) / wanted)
    return list(range(0, step * (math.ceil(max(deepest, 1) / step)) + 1, step))


def legend(series: list[tuple[str, str, list[int]]]) -> str:
    """The title: each series' marker and name."""
    return "  ".join(f"{marker} {label}" for marker, label, _ in series)


class QueueChart(PlotextPlot):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.history = QueueHistory(WINDOW_MS, STEP_MS)
        self.series: list[tuple[str, str, list[int]]] = []  # (marker, label, depth per point)
        self.xs: list[float] = []

    def shown_series(self, width: int) -> list[tuple[str, str, list[int]]]:
        """The series drawn: the total and as many of the busiest as the title (the legend) names
        within ``width`` cells (plotext leaves out a title wider than the plot)."""
        shown: list[tuple[str, str, list[int]]] = []
        for entry in self.series:
            if shown and len(legend([*shown, entry])) > width - 2:
                break
            shown.append(entry)
        return shown

    def show(self, snapshot: FleetSnapshot) -> None:
        if not self.history.add(snapshot) and self.series:
            return
        points = self.history.points()
        self.xs = [seconds for seconds, _ in points]
        totals = [sum(depths.values()) for _, depths in points]
        series = [("total", totals)]
        latest = points[-1][1] if points else {}
        for instance_id in sorted(latest, key=lambda i: (-latest[i], snapshot.label(i)))[:LINES]:
            label = clip_middle(UserText(snapshot.label(instance_id)).shown, LABEL_WIDTH)
            series.append((label, [depths.get(instance_id, 0) for _, depths in points]))
        self.series = [(marker, label, values) for (label, values), marker in zip(series, MARKERS)]
        self.refresh()

    def render(self) -> RenderResult:
        """Plot at the size there is now: the y ticks depend on the rows the plot has."""
        plt = self.plt
        plt.clear_data()
        shown = self.shown_series(self.size.width)
        for marker, _, values in shown:
            plt.plot(self.xs, values, marker=marker)
        plt.title(legend(shown))
        plt.xlabel("seconds ago")
        plt.xlim(-WINDOW_MS / 1000, 0)
        plt.xticks(X_TICKS, [str(-t) for t in X_TICKS])
        deepest = max((max(values, default=0) for _, _, values in shown), default=0)
        ticks = y_ticks(deepest, self.size.height - 4)
        plt.ylim(0, ticks[-1])
        plt.yticks(ticks, [str(t) for t in ticks])
        return super().render()
