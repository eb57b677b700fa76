"""Queue depth over time, kept by the dashboard from the snapshots it is shown.

A snapshot is the fleet at one instant; how a queue filled and drained is the
dashboard's own memory of successive snapshots.  :class:`QueueHistory` keeps,
per time step, the deepest queue each counted instance had in that step (a
burst that fills and drains within a step still shows).  The queue chart keeps
five minutes in 5 s steps; the Instances table's sparklines one minute in 6 s
steps.
"""

from __future__ import annotations

from collections import deque

from core.snapshot import FleetSnapshot

SPARK_LEVELS = "▁▂▃▄▅▆▇█"  # an empty queue is the lowest bar; an empty step is a blank


class QueueHistory:
    def __init__(self, window_ms: int, step_ms: int) -> None:
        self.window_ms = window_ms
        self.step_ms = step_ms
        self.steps = window_ms // step_ms
        # (step number, instance id -> deepest queue in that step), oldest first
        self._samples: deque[tuple[int, dict[str, int]]] = deque(maxlen=self.steps)
        # Sparklines change in their last bar only, until a step begins or the scale changes:
        # the bars before it are kept per instance for that (last step, scale).
        self._earlier: dict[str, str] = {}
        self._earlier_for: tuple[int, int] | None = None
        self._deepest_before: tuple[int, int] | None = None  # (last step, deepest queue of the steps before it)

    def add(self, snapshot: FleetSnapshot) -> bool:
        """Record the snapshot's queue depths; True when a new step began (the history moved)."""
        step = snapshot.taken_at_ms // self.step_ms
        depths = {v.instance_id: v.pending for v in snapshot.instances if v.counted}
        if self._samples and self._samples[-1][0] == step:
            deepest = self._samples[-1][1]
            for instance_id, depth in depths.items():
                if depth > deepest.get(instance_id, -1):
                    deepest[instance_id] = depth
            return False
        if self._samples and step < self._samples[-1][0]:
            return False  # a clock that went back: keep what is known
        self._samples.append((step, depths))
        return True

    def points(self) -> list[tuple[float, dict[str, int]]]:
        """(seconds before the latest step, depths) of each step kept within the window, oldest first."""
        if not self._samples:
            return []
        last = self._samples[-1][0]
        return [((step - last) * self.step_ms / 1000, depths) for step, depths in self._samples if last - step < self.steps]

    def deepest(self) -> int:
        """The deepest queue any instance had within the window (the steps before the current
        one are looked at once per step: this is asked on every snapshot)."""
        if not self._samples:
            return 0
        last, latest = self._samples[-1]
        if self._deepest_before is None or self._deepest_before[0] != last:
            before = (max(d.values(), default=0) for s, d in self._samples if s != last and last - s < self.steps)
            self._deepest_before = (last, max(before, default=0))
        return max(self._deepest_before[1], max(latest.values(), default=0))

    def sparkline(self, instance_id: str, scale: int) -> str:
        """One character per step: the instance's depth as a bar, ``scale`` being the full bar.

        A fleet's worth of them is asked for on every snapshot: the bars of the
        steps before the current one are made once per step (and scale), so a
        snapshot costs each instance one bar.
        """
        if not self._samples:
            return " " * self.steps
        last, latest = self._samples[-1]
        if self._earlier_for != (last, scale):
            self._earlier_for = (last, scale)
            self._earlier = {}
        earlier = self._earlier.get(instance_id)
        if earlier is None:
            by_step = {step: depths.get(instance_id) for step, depths in self._samples if last - step < self.steps}
            earlier = self._earlier[instance_id] = sparkline([by_step.get(step) for step in range(last - self.steps + 1, last)], scale)
        return earlier + sparkline([latest.get(instance_id)], scale)


def sparkline(values: list[int | None], scale: int) -> str:
    """Bars for ``values`` (None: a blank), ``scale`` reaching the top bar; 0 is the lowest bar."""
    top = len(SPARK_LEVELS) - 1
    bars = []
    for value in values:
        if value is None:
            bars.append(" ")
        elif value <= 0 or scale <= 0:
            bars.append(SPARK_LEVELS[0])
        else:
            bars.append(SPARK_LEVELS[max(1, min(top, round(value * top / scale)))])
    return "".join(bars)
