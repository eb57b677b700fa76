"""Per-model parallelism of each live instance: current/base, share, effective, in flight, health, min-max."""

from __future__ import annotations

from core.snapshot import FleetSnapshot, ModelParallelismView

from ..text import UserText
from .keyed_table import Cell, Column, KeyedTable, Row
from .palette import role_style

REDUCED = "↓"  # beside Cur/Base when a 429 or a timeout lowered it: shown without colour too


class ParallelismTable(KeyedTable):
    COLUMNS = (
        Column("instance", "Instance", help="the instance's label"),
        Column("model", "Provider/model", shrink=14, help="the model this row is about"),
        Column("current", "Cur/Base", help="parallelism now / as configured; ↓: lowered after 429s or timeouts"),
        Column("share", "×Share", "right", drop=3, help="its share of the model across the fleet's instances (cross-instance multiplier)"),
        Column("effective", "Eff", "right", help="requests it may run at once: Cur × Share, at least 1"),
        Column("flight", "Flight", "right", descending=True, drop=1, help="requests in flight now"),
        Column("health", "Health", drop=2, help="ok, N×429 (429s lately) or degraded (other errors)"),
        Column("range", "Min-Max", drop=4, help="the range the adaptive control keeps Cur in"),
    )

    def show(self, snapshot: FleetSnapshot) -> None:
        rows = {}
        for view in snapshot.parallelism:
            key = f"{view.instance_id}\x1f{view.state.provider}:{view.state.model}"
            label = snapshot.label(view.instance_id)
            rows[key] = self.row_for(key, (view, label), lambda: self._row(view, label))
        self.sync(rows)

    def _row(self, view: ModelParallelismView, label: str) -> Row:
        state = view.state
        reduced = state.current_parallelism < state.base_parallelism
        health = "ok" if state.healthy else f"{state.recent429_count}×429" if state.recent429_count else "degraded"
        worst_first = (2, 0) if state.healthy else (0, -state.recent429_count) if state.recent429_count else (1, 0)
        health_role = "success" if state.healthy else "error" if state.recent429_count else "warning"
        return (
            Cell(UserText(label), (label, view.instance_id)),
            Cell(UserText(f"{state.provider}/{state.model}"), (state.provider, state.model, view.instance_id)),
            Cell(
                f"{state.current_parallelism}/{state.base_parallelism}{REDUCED if reduced else ''}",
                (state.current_parallelism / max(1, state.base_parallelism), state.current_parallelism),  # most cut first
                style=role_style(self.app, "warning") if reduced else None,
            ),
            Cell(f"×{state.cross_instance_multiplier:.2g}", state.cross_instance_multiplier),
            Cell(str(state.effective_parallelism), state.effective_parallelism),
            Cell(str(state.active_requests), state.active_requests),
            Cell(health, worst_first, style=role_style(self.app, health_role)),
            Cell(f"{state.min_parallelism}-{state.max_parallelism}", (state.min_parallelism, state.max_parallelism)),
        )
