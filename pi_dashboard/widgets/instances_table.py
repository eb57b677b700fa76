"""Instances: id, pid, status, whether it claims stolen work, heartbeat age, pending, limit, what it waits on, latency, models, cwd."""

from __future__ import annotations

from core.snapshot import FleetSnapshot, InstanceView, Status

from ..text import UserText, duration
from .keyed_table import Cell, Column, KeyedTable, Row, by_value
from .palette import status_style

STATUS_ORDER = {s: n for n, s in enumerate([Status.CORRUPT, Status.DEAD, Status.STALLED, Status.STALE, Status.DRAINING, Status.ALIVE, Status.OFFLINE])}


class InstancesTable(KeyedTable):
    COLUMNS = (
        ("id", "Instance"),
        ("pid", "PID"),
        ("status", "Status"),
        ("claims", "Claims"),
        Column("beat", "Beat", "right"),
        Column("pending", "Pend", "right"),
        Column("limit", "Lim", "right"),
        ("wait", "Wait"),
        Column("latency", "Lat", "right"),
        ("models", "Models"),
        ("cwd", "Cwd"),
    )
    SORTS = (
        ("id", "instance id", False),
        ("status", "status (worst first)", False),
        ("pending", "pending (most first)", True),
        ("beat", "heartbeat age (oldest first)", True),
        ("cwd", "cwd", False),
    )

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.filter_text = ""
        self.sort_index = 0

    def on_mount(self) -> None:
        self.apply_sort()

    def apply_sort(self) -> str:
        column, label, reverse = self.SORTS[self.sort_index]
        self.sort_by(column, key=by_value, reverse=reverse)
        return label

    def next_sort(self) -> str:
        self.sort_index = (self.sort_index + 1) % len(self.SORTS)
        return self.apply_sort()

    @property
    def sort_state(self) -> tuple[str, bool]:
        """(column key, reversed): what is remembered between runs."""
        column, _, reverse = self.SORTS[self.sort_index]
        return column, reverse

    def restore_sort(self, column: str, reverse: bool) -> None:
        for index, (key, _, descending) in enumerate(self.SORTS):
            if (key, descending) == (column, reverse):
                self.sort_index = index
                self.apply_sort()

    def _row(self, view: InstanceView, unanswered: set[str], wait: str) -> Row:
        info = view.info
        status = view.status.value + (" (no ack)" if view.instance_id in unanswered else "")
        models = UserText(", ".join(f"{m.provider}/{m.model}" for m in info.active_models) if info else "")
        latency = f"{info.avg_latency_ms:.0f}ms" if info and info.avg_latency_ms is not None else ""
        age = view.heartbeat_age_ms
        return (
            Cell(UserText(view.instance_id)),
            Cell(str(info.pid) if info else "", info.pid if info else 0),
            Cell(status, STATUS_ORDER[view.status], style=status_style(self.app, view.status)),
            Cell(("yes" if view.honours_claims else "no") if info else ""),
            Cell(duration(age, whole_seconds=True), (age // 1000) if age is not None else -1),
            Cell(str(view.pending) if info else "", view.pending),
            Cell(str(view.parallel_limit) if view.parallel_limit is not None else ""),
            Cell(wait),
            Cell(latency),
            Cell(models),
            Cell(UserText(info.cwd if info else view.problem or "")),
        )

    def show(self, snapshot: FleetSnapshot) -> None:
        unanswered = {c.instance_id for c in snapshot.controls if c.state == "not-acknowledged"}
        needle = self.filter_text.lower()
        rows = {}
        for view in snapshot.instances:
            age_s = view.heartbeat_age_ms // 1000 if view.heartbeat_age_ms is not None else None
            waits = snapshot.waits.get(view.instance_id)
            wait = waits.cell if waits is not None else ""
            source = (view.info, view.status, age_s, view.parallel_limit, view.problem, view.instance_id in unanswered, wait)
            row = self.row_for(view.key, source, lambda: self._row(view, unanswered, wait))
            if needle and not any(needle in cell.plain.lower() for cell in row):
                continue
            rows[view.key] = row
        self.sync(rows)

