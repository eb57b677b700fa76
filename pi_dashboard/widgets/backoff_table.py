"""429 backoff: which model, who reported it, countdown to the shared deadline."""

from __future__ import annotations

from core.snapshot import BackoffView, FleetSnapshot

from ..text import UserText, duration
from .keyed_table import Cell, Column, KeyedTable, Row
from .palette import role_style


class BackoffTable(KeyedTable):
    COLUMNS = (
        Column("model", "Model", shrink=11, help="provider/model: the model the fleet backs off from"),
        Column("left", "Wait", "right", descending=True, help="time left of the shared backoff; done: over"),
        Column("count", "429s/5m", "right", descending=True, help="429s reported in the last five minutes"),
        Column("by", "By", help="the label of the instance that reported the last 429"),
        Column("waiting", "Insts", "right", descending=True, drop=2, help="instances using the model, so waiting while it lasts"),
    )
    SORT = ("left", True)  # the longest wait first

    def show(self, snapshot: FleetSnapshot) -> None:
        rows = {}
        for view in snapshot.backoffs:
            if not view.active and not view.recent429s:
                continue  # long quiet: nothing to say
            key = f"{view.provider}:{view.model}"
            by = snapshot.label(view.last_reported_by) if view.last_reported_by else ""
            rows[key] = self.row_for(key, (view, by), lambda: self._row(view, by))
        self.sync(rows)

    def _row(self, view: BackoffView, by: str) -> Row:
        return (
            Cell(UserText(f"{view.provider}/{view.model}")),
            Cell(
                duration(view.remaining_ms) if view.active else "done",
                view.remaining_ms,
                style=role_style(self.app, "error" if view.active else "success"),
            ),
            Cell(str(view.recent429s), view.recent429s),
            Cell(UserText(by)),
            Cell(str(view.instances_waiting), view.instances_waiting),
        )
