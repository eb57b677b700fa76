"""Instances: label, status, heartbeat age, pending, limit, what it waits on, queue depth over
the last minute, latency, models, cwd, whether it claims stolen work, pid."""

from __future__ import annotations

from rich.style import Style

from core.snapshot import FleetSnapshot, InstanceView, Status

from ..queue_history import QueueHistory
from ..text import UserText, duration
from .keyed_table import Cell, Column, KeyedTable, Row
from .palette import status_style

STATUS_ORDER = {s: n for n, s in enumerate([Status.CORRUPT, Status.DEAD, Status.STALLED, Status.STALE, Status.DRAINING, Status.ALIVE, Status.OFFLINE])}
PROBLEM_WIDTH = 28  # a corrupt file's reason, in its Cwd cell (in full in Problems and details)
SPARK_WINDOW_MS, SPARK_STEP_MS = 60_000, 6_000  # the Queue column: one bar per 6 s over the last minute


class InstancesTable(KeyedTable):
    COLUMNS = (
        Column("label", "Instance", help="short unique label: its name, else the shortest unique part of its id (full id: enter)"),
        Column("status", "Status", help="alive, stale (heartbeat late), stalled, dead, draining, offline, corrupt; \"no ack\": a drain it does not answer"),
        Column("beat", "Beat", "right", descending=True, help="seconds since its last heartbeat"),
        Column("pending", "Pend", "right", descending=True, help="tasks in its queue (its pendingTaskCount)"),
        Column("limit", "Lim", "right", descending=True, help="its dynamic share of the fleet's LLM slots (totalMaxLlm), weighted by pending; the header's even share is the same slots split evenly"),
        Column("wait", "Wait", drop=6, shrink=9, help="what holds its LLM calls back now and for how long, +N more reasons (details: enter)"),
        Column("cwd", "Cwd", drop=7, shrink=12, help="its working directory"),
        Column("queue", "Queue 1m", drop=8, help="queue depth over the last minute, one bar per 6 s, full bar = deepest queue of the fleet then"),
        Column("models", "Models", drop=9, shrink=12, help="models in use (provider in the Parallelism pane and details)"),
        Column("latency", "Lat", "right", descending=True, drop=10, help="its average LLM request latency"),
        Column("claims", "Claims", drop=11, help="yes: claims each entry before running it (core), so stolen work runs once; no: pi's own"),
        Column("pid", "PID", "right", drop=12, help="its process id"),
    )

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.filter_text = ""
        self.history = QueueHistory(SPARK_WINDOW_MS, SPARK_STEP_MS)

    def _row(self, view: InstanceView, unanswered: set[str], wait: str, spark: str, styles: dict[Status, Style]) -> Row:
        info = view.info
        status = view.status.value + (" (no ack)" if view.instance_id in unanswered else "")
        models = UserText(", ".join(m.model for m in info.active_models) if info else "")
        latency = f"{info.avg_latency_ms:.0f}ms" if info and info.avg_latency_ms is not None else ""
        age = view.heartbeat_age_ms
        return (
            Cell(UserText(view.label), (view.label, view.instance_id)),
            Cell(status, STATUS_ORDER[view.status], style=styles[view.status]),
            Cell(duration(age, whole_seconds=True), (age // 1000) if age is not None else -1),
            Cell(str(view.pending) if info else "", view.pending),
            Cell(str(view.parallel_limit) if view.parallel_limit is not None else "", view.parallel_limit if view.parallel_limit is not None else -1),
            Cell(wait),
            Cell(UserText(info.cwd) if info else UserText(view.problem or "").clip_middle(PROBLEM_WIDTH)),
            Cell(spark),
            Cell(models),
            Cell(latency, info.avg_latency_ms if info and info.avg_latency_ms is not None else -1),
            Cell(("yes" if view.honours_claims else "no") if info else ""),
            Cell(str(info.pid) if info else "", info.pid if info else 0),
        )

    def show(self, snapshot: FleetSnapshot) -> None:
        self.history.add(snapshot)
        scale = self.history.deepest()
        unanswered = {c.instance_id for c in snapshot.controls if c.state == "not-acknowledged"}
        needle = self.filter_text.lower()
        styles = {status: status_style(self.app, status) for status in Status}  # the theme's, once a snapshot
        rows = {}
        for view in snapshot.instances:
            age_s = view.heartbeat_age_ms // 1000 if view.heartbeat_age_ms is not None else None
            waits = snapshot.waits.get(view.instance_id)
            wait = waits.cell if waits is not None else ""
            spark = self.history.sparkline(view.instance_id, scale) if view.counted else ""
            source = (view.info, view.status, age_s, view.parallel_limit, view.problem, view.instance_id in unanswered, wait, view.label, spark)
            row = self.row_for(view.key, source, lambda: self._row(view, unanswered, wait, spark, styles))
            if needle and not any(needle in cell.plain.lower() for cell in row) and needle not in view.instance_id.lower():
                continue
            rows[view.key] = row
        self.sync(rows)
