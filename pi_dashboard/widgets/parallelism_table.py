"""Per-model parallelism of each live instance: current/base/min/max, in flight, effective."""

from __future__ import annotations

from core.snapshot import FleetSnapshot

from ..text import clip_middle, printable
from .keyed_table import SHORT_ID, Cell, Column, KeyedTable, by_value
from .palette import role_style


class ParallelismTable(KeyedTable):
    COLUMNS = (
        ("model", "Provider/model"),
        ("current", "Cur/Base"),
        Column("effective", "Eff", "right"),
        Column("flight", "Flight", "right"),
        ("health", "Health"),
        ("range", "Min-Max"),
        ("instance", "Instance"),
    )

    def on_mount(self) -> None:
        self.sort_by("model", key=by_value)

    def show(self, snapshot: FleetSnapshot) -> None:
        rows = {}
        for view in snapshot.parallelism:
            state = view.state
            reduced = state.current_parallelism < state.base_parallelism
            health = "ok" if state.healthy else f"{state.recent429_count}x429" if state.recent429_count else "degraded"
            health_role = "success" if state.healthy else "error" if state.recent429_count else "warning"
            key = f"{view.instance_id}\x1f{state.provider}:{state.model}"
            rows[key] = (
                Cell(printable(f"{state.provider}/{state.model}"), (state.provider, state.model, view.instance_id)),
                Cell(
                    f"{state.current_parallelism}/{state.base_parallelism}",
                    style=role_style(self.app, "warning") if reduced else "",
                ),
                Cell(str(state.effective_parallelism)),
                Cell(str(state.active_requests)),
                Cell(health, style=role_style(self.app, health_role)),
                Cell(f"{state.min_parallelism}-{state.max_parallelism}"),
                Cell(clip_middle(printable(view.instance_id), SHORT_ID)),
            )
        self.sync(rows)
