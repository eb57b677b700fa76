"""Everything known about one instance: its file, queue, parallelism, steals, requests."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from core.snapshot import FleetSnapshot, InstanceView

from ..text import clock_datetime, clock_time, clock_zone, duration, printable


def _when(epoch_ms: int | None) -> str:
    if not epoch_ms:
        return "-"
    return clock_datetime(epoch_ms)


def _pairs(rows: list[tuple[str, str]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, Text(printable(value)))
    return table


def describe(view: InstanceView, snapshot: FleetSnapshot) -> list[Static]:
    """The details as widgets; every value is plain text, never markup."""
    info = view.info
    title = Text(printable(view.instance_id), style="bold")
    title.append(f"  (times in {clock_zone(snapshot.taken_at_ms)})", style="dim")
    parts = [Static(title, classes="title")]
    rows = [("status", view.status.value), ("heartbeat age", duration(view.heartbeat_age_ms))]
    if info is not None:
        rows += [
            ("pid", f"{info.pid} ({view.pid_running.value})"),
            ("session", info.session_id),
            ("cwd", info.cwd),
            ("started", clock_datetime(info.started_at)),
            ("pending", str(info.pending)),
            ("parallel limit", str(view.parallel_limit) if view.parallel_limit is not None else "-"),
            ("avg latency", f"{info.avg_latency_ms} ms" if info.avg_latency_ms is not None else "-"),
            ("host", info.hostname or "-"),
            ("claims", "honours claims (core)" if view.honours_claims else "does not claim (pi): stolen entries may run twice"),
            ("name", info.instance_name or "-"),
            ("models", ", ".join(f"{m.provider}/{m.model} since {clock_time(m.since)}" for m in info.active_models) or "-"),
            *(
                (
                    f"model limit ({m.rule}'s rule)",
                    f"{m.provider}/{m.model}: "
                    + ("pi's code throws on this name" if m.limit is None else f"{m.limit} ({m.instances} instance(s) using it)"),
                )
                for m in view.model_limits
            ),
        ]
        extras = info.model_extra or {}
        rows += [(f"{key} (extra)", repr(value)) for key, value in sorted(extras.items())]
    if view.problem:
        rows.append(("problem", view.problem))
    parts.append(Static(_pairs(rows)))
    waits = snapshot.waits.get(view.instance_id)
    if waits is not None:
        if waits.reasons:
            held = Table("waits on", "ends in", "why", title="held back by", title_justify="left")
            ordered = [waits.dominant, *(r for r in waits.reasons if r is not waits.dominant)]
            for reason in ordered:
                ends = duration(reason.ends_in_ms) if reason.ends_in_ms is not None else "-"
                held.add_row(reason.kind.value, ends, Text(printable(reason.text)))
            parts.append(Static(held))
        else:
            note = "not held back" if waits.records_waits else "records nothing of why it waits (pi's own instance)"
            parts.append(Static(_pairs([("waits", note)])))
    if view.queue is not None:
        queue = Table("entry", "tool", "priority", "enqueued", title="stealable entries", title_justify="left")
        for entry in view.queue.stealable_entries[:50]:
            queue.add_row(*(Text(printable(v)) for v in (entry.id, entry.tool_name, entry.priority)), clock_time(entry.enqueued_at))
        parts.append(Static(queue))
    if view.parallelism is not None:
        models = Table("model", "cur/base", "flight", "eff", "reason", title="parallelism", title_justify="left")
        for state in view.parallelism.models.values():
            models.add_row(
                Text(printable(f"{state.provider}/{state.model}")),
                f"{state.current_parallelism}/{state.base_parallelism}",
                str(state.active_requests),
                str(state.effective_parallelism),
                Text(printable(state.adjustment_reason)),
            )
        parts.append(Static(models))
    if not view.stats_recorded and info is not None:
        parts.append(Static(_pairs([("steal attempts", "not recorded: pi keeps its stealing statistics in process memory")])))
    elif view.stats is not None:
        stats = view.stats
        parts.append(
            Static(
                _pairs(
                    [
                        ("steal attempts", str(stats.total_attempts)),
                        ("stolen", f"{stats.successful_steals} ({stats.success_rate:.0%})"),
                        ("last success", _when(stats.last_success_at)),
                    ]
                )
            )
        )
    for control in snapshot.controls:
        if control.instance_id == view.instance_id:
            parts.append(Static(_pairs([(f"{control.request.action} request", f"{control.state}, by {control.request.requested_by}")])))
    return parts


class DetailsScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]

    def __init__(self, view: InstanceView, snapshot: FleetSnapshot) -> None:
        super().__init__()
        self.view = view
        self.snapshot = snapshot

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="details"):
            yield from describe(self.view, self.snapshot)
