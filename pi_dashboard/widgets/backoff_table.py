"""429 backoff: which model, who reported it, countdown to the shared deadline."""

from __future__ import annotations

from core.snapshot import BackoffView, FleetSnapshot

from ..text import UserText, duration
from .keyed_table import SHORT_ID, Cell, Column, KeyedTable, Row
from .palette import role_style


class BackoffTable(KeyedTable):
    COLUMNS = (
        ("model", "Provider/model"),
        Column("left", "Wait", "right", descending=True),
        Column("count", "429s/5m", "right", descending=True),
        Column("waiting", "Waiting", "right", descending=True),
        ("by", "Last reported by"),
    )
    SORT = ("left", True)  # the longest wait first

    def show(self, snapshot: FleetSnapshot) -> None:
        rows = {}
        for view in snapshot.backoffs:
            if not view.active and not view.recent429s:
                continue  # long quiet: nothing to say
            key = f"{view.provider}:{view.model}"
            rows[key] = self.row_for(key, view, lambda: self._row(view))
        self.sync(rows)

    def _row(self, view: BackoffView) -> Row:
        return (
            Cell(UserText(f"{view.provider}/{view.model}")),
            Cell(
                duration(view.remaining_ms) if view.active else "done",
                view.remaining_ms,
                style=role_style(self.app, "error" if view.active else "success"),
            ),
            Cell(str(view.recent429s), view.recent429s),
            Cell(str(view.instances_waiting), view.instances_waiting),
            Cell(UserText(view.last_reported_by or "").clip_middle(SHORT_ID)),
        )
