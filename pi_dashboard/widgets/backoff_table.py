"""429 backoff: which model, who reported it, countdown to the shared deadline."""

from __future__ import annotations

from core.snapshot import FleetSnapshot

from ..text import clip_middle, duration, printable
from .keyed_table import SHORT_ID, Cell, Column, KeyedTable, by_value
from .palette import role_style


class BackoffTable(KeyedTable):
    COLUMNS = (
        ("model", "Provider/model"),
        Column("left", "Wait", "right"),
        Column("count", "429s/5m", "right"),
        Column("waiting", "Waiting", "right"),
        ("by", "Last reported by"),
    )

    def on_mount(self) -> None:
        self.sort_by("left", key=by_value, reverse=True)

    def show(self, snapshot: FleetSnapshot) -> None:
        rows = {}
        for view in snapshot.backoffs:
            if not view.active and not view.recent429s:
                continue  # long quiet: nothing to say
            rows[f"{view.provider}:{view.model}"] = (
                Cell(printable(f"{view.provider}/{view.model}")),
                Cell(
                    duration(view.remaining_ms) if view.active else "done",
                    view.remaining_ms,
                    style=role_style(self.app, "error" if view.active else "success")
                ),
                Cell(str(view.recent429s)),
                Cell(str(view.instances_waiting)),
                Cell(clip_middle(printable(view.last_reported_by or ""), SHORT_ID)),
            )
        self.sync(rows)
