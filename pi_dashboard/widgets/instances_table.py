"""Instances: id, pid, status, whether it claims stolen work, heartbeat age, pending, limit, what it waits on, latency, models, cwd."""

from __future__ import annotations

from core.snapshot import FleetSnapshot, InstanceView, Status

from ..text import UserText, duration
from .keyed_table import Cell, Column, KeyedTable, Row
from .palette import status_style

STATUS_ORDER = {s: n for n, s in enumerate([Status.CORRUPT, Status.DEAD, Status.STALLED, Status.STALE, Status.DRAINING, Status.ALIVE, Status.OFFLINE])}


class InstancesTable(KeyedTable):
    COLUMNS = (
        ("id", "Instance"),
        ("pid", "PID"),
        ("status", "Status"),
        ("claims", "Claims"),
        Column("beat", "Beat", "right", descending=True),
        Column("pending", "Pend", "right", descending=True),
        Column("limit", "Lim", "right", descending=True),
        ("wait", "Wait"),
        Column("latency", "Lat", "right", descending=True),
        ("models", "Models"),
        ("cwd", "Cwd"),
    )

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.filter_text = ""

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
            Cell(str(view.parallel_limit) if view.parallel_limit is not None else "", view.parallel_limit if view.parallel_limit is not None else -1),
            Cell(wait),
            Cell(latency, info.avg_latency_ms if info and info.avg_latency_ms is not None else -1),
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

