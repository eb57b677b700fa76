"""Everything known about one instance: its file, queue, parallelism, steals, requests."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Static

from core.snapshot import FleetSnapshot, InstanceView

from ..messages import RecordUnshown
from .scrolling import KeyScroll
from ..text import UserText, clock_datetime, clock_time, clock_zone, duration

# A label is the dashboard's own words (str) or a name from the record (UserText);
# a value is a figure of ours (str) or text from the record (UserText). Both render literally.
Pair = tuple[str | UserText, str | UserText]


def _cell(value: str | UserText) -> Text:
    return value.text() if isinstance(value, UserText) else Text(value)


def _pairs(rows: list[Pair]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(_cell(name), _cell(value))  # Text, never a str: Rich would parse a str as markup
    return table


def _table(title: str, *headers: str) -> Table:
    return Table(*headers, title=title, title_justify="left")


def describe(view: InstanceView, snapshot: FleetSnapshot) -> list[RenderableType]:
    """The details, the title first; every value is plain text, never markup."""
    info = view.info
    title = UserText(view.instance_id).text("bold")
    title.append(f"  (times in {clock_zone(snapshot.taken_at_ms)})", style="dim")
    parts: list[RenderableType] = [title]
    rows: list[Pair] = [("status", view.status.value), ("heartbeat age", duration(view.heartbeat_age_ms))]
    if info is not None:
        models = ", ".join(f"{m.provider}/{m.model} since {clock_time(m.since)}" for m in info.active_models)
        rows += [
            ("pid", f"{info.pid} ({view.pid_running.value})"),
            ("session", UserText(info.session_id)),
            ("cwd", UserText(info.cwd)),
            ("started", clock_datetime(info.started_at)),
            ("pending", str(info.pending)),
            ("parallel limit", str(view.parallel_limit) if view.parallel_limit is not None else "-"),
            ("avg latency", f"{info.avg_latency_ms} ms" if info.avg_latency_ms is not None else "-"),
            ("host", UserText(info.hostname or "-")),
            ("claims", "honours claims (core)" if view.honours_claims else "does not claim (pi): stolen entries may run twice"),
            ("name", UserText(info.instance_name or "-")),
            ("models", UserText(models or "-")),
            *(
                (
                    UserText(f"model limit ({m.rule}'s rule)"),
                    UserText(
                        f"{m.provider}/{m.model}: "
                        + ("pi's code throws on this name" if m.limit is None else f"{m.limit} ({m.instances} instance(s) using it)")
                    ),
                )
                for m in view.model_limits
            ),
        ]
        extras = info.model_extra or {}
        rows += [(UserText(f"{key} (extra)"), UserText(repr(value))) for key, value in sorted(extras.items())]
    if view.problem:
        rows.append(("problem", UserText(view.problem)))
    parts.append(_pairs(rows))
    waits = snapshot.waits.get(view.instance_id)
    if waits is not None:
        if waits.reasons:
            held = Table("waits on", "ends in", "why", title="held back by", title_justify="left")
            ordered = [waits.dominant, *(r for r in waits.reasons if r is not waits.dominant)]
            for reason in ordered:
                ends = duration(reason.ends_in_ms) if reason.ends_in_ms is not None else "-"
                held.add_row(Text(reason.kind.value), ends, UserText(reason.text).text())
            parts.append(held)
        else:
            note = "not held back" if waits.records_waits else "records nothing of why it waits (pi's own instance)"
            parts.append(_pairs([("waits", note)]))
    if view.queue is not None:
        queue = _table("stealable entries", "entry", "tool", "priority", "enqueued")
        for entry in view.queue.stealable_entries[:50]:
            queue.add_row(*(UserText(v).text() for v in (entry.id, entry.tool_name, entry.priority)), clock_time(entry.enqueued_at))
        parts.append(queue)
    if view.parallelism is not None:
        models_table = _table("parallelism", "model", "cur/base", "flight", "eff", "reason")
        for state in view.parallelism.models.values():
            models_table.add_row(
                UserText(f"{state.provider}/{state.model}").text(),
                f"{state.current_parallelism}/{state.base_parallelism}",
                str(state.active_requests),
                str(state.effective_parallelism),
                UserText(state.adjustment_reason).text(),
            )
        parts.append(models_table)
    if not view.stats_recorded and info is not None:
        parts.append(_pairs([("steal attempts", "not recorded: pi keeps its stealing statistics in process memory")]))
    elif view.stats is not None:
        stats = view.stats
        parts.append(
            _pairs(
                [
                    ("steal attempts", str(stats.total_attempts)),
                    ("stolen", f"{stats.successful_steals} ({stats.success_rate:.0%})"),
                    ("last success", clock_datetime(stats.last_success_at) if stats.last_success_at else "-"),
                ]
            )
        )
    for control in snapshot.controls:
        if control.instance_id == view.instance_id:
            request = control.request
            parts.append(_pairs([(UserText(f"{request.action} request"), UserText(f"{control.state}, by {request.requested_by}"))]))
    return parts


class DetailsScreen(ModalScreen[None]):
    """The details of one instance, redrawn from every new snapshot the app shows
    (none while paused); when the instance leaves the fleet the title says so and
    the last details stay below it."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]

    def __init__(self, view: InstanceView, snapshot: FleetSnapshot) -> None:
        super().__init__()
        self.view = view
        self.snapshot = snapshot
        self.gone = False

    def compose(self) -> ComposeResult:
        title, body = self._describe()
        with KeyScroll(id="details"):
            yield Static(title, classes="title", id="details-title")
            yield Static(body, id="details-body")

    def show(self, snapshot: FleetSnapshot) -> None:
        """Follow the fleet: the instance's newest view, or word that it is gone."""
        view = next((v for v in snapshot.instances if v.key == self.view.key), None)
        if view is None:
            if self.gone:
                return
            self.gone = True
        else:
            self.gone = False
            self.view, self.snapshot = view, snapshot
        title, body = self._describe()
        self.query_one("#details-title", Static).update(title)
        self.query_one("#details-body", Static).update(body)

    def _describe(self) -> tuple[Text, RenderableType]:
        try:
            title, *rest = describe(self.view, self.snapshot)
        except Exception as exc:  # the last guard: the record is shown as a problem, the app goes on
            reason = UserText(f"cannot show this instance: {type(exc).__name__}: {exc}")
            self.app.post_message(RecordUnshown(UserText(f"details/{self.view.key}"), reason))
            title, rest = UserText(self.view.key).text("bold"), [reason.text()]
        assert isinstance(title, Text)
        if self.gone:
            title = title.copy()
            title.append(
                f"\ngone: no longer in the fleet (last seen {clock_time(self.snapshot.taken_at_ms)}); below is what it showed then",
                style="bold reverse",
            )
        return title, Group(*rest)
