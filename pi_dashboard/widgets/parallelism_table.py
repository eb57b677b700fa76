"""Per-model parallelism of each live instance: current/base/min/max, in flight, effective."""

from __future__ import annotations

from core.snapshot import FleetSnapshot, ModelParallelismView

from ..text import UserText
from .keyed_table import SHORT_ID, Cell, Column, KeyedTable, Row
from .palette import role_style


class ParallelismTable(KeyedTable):
    COLUMNS = (
        ("model", "Provider/model"),
        ("current", "Cur/Base"),
        Column("effective", "Eff", "right"),
        Column("flight", "Flight", "right", descending=True),
        ("health", "Health"),
        ("range", "Min-Max"),
        ("instance", "Instance"),
    )

    def show(self, snapshot: FleetSnapshot) -> None:
        rows = {}
        for view in snapshot.parallelism:
            key = f"{view.instance_id}\x1f{view.state.provider}:{view.state.model}"
            rows[key] = self.row_for(key, view, lambda: self._row(view))
        self.sync(rows)

    def _row(self, view: ModelParallelismView) -> Row:
        state = view.state
        reduced = state.current_parallelism < state.base_parallelism
        health = "ok" if state.healthy else f"{state.recent429_count}x429" if state.recent429_count else "degraded"
        worst_first = (2, 0) if state.healthy else (0, -state.recent429_count) if state.recent429_count else (1, 0)
        health_role = "success" if state.healthy else "error" if state.recent429_count else "warning"
        return (
            Cell(UserText(f"{state.provider}/{state.model}"), (state.provider, state.model, view.instance_id)),
            Cell(
                f"{state.current_parallelism}/{state.base_parallelism}",
                (state.current_parallelism / max(1, state.base_parallelism), state.current_parallelism),  # most cut first
                style=role_style(self.app, "warning") if reduced else "",
            ),
            Cell(str(state.effective_parallelism), state.effective_parallelism),
            Cell(str(state.active_requests), state.active_requests),
            Cell(health, worst_first, style=role_style(self.app, health_role)),
            Cell(f"{state.min_parallelism}-{state.max_parallelism}", (state.min_parallelism, state.max_parallelism)),
            Cell(UserText(view.instance_id).clip_middle(SHORT_ID)),
        )
