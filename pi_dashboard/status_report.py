"""``pi-dash status``: a FleetSnapshot as a plain-text report, like pi's ``pi_instance_status``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.limits_view import whole_requests
from core.snapshot import FleetSnapshot, InstanceView, Status

from .text import UserText, clip, clip_middle, clock_datetime, clock_zone, duration

if TYPE_CHECKING:
    from core.limits_view import ProviderLimits


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], width: int, stretch: int
) -> list[str]:
    """Aligned columns; column ``stretch`` gives up width when the line is too long, its
    text cut in the middle (the dashboard's one rule for long text)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    spare = width - (sum(widths) + 2 * (len(widths) - 1))
    widths[stretch] = max(len(headers[stretch]), widths[stretch] + min(0, spare))
    lines = []
    for row in [headers, *rows]:
        cells = [
            clip_middle(cell, widths[i]).ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _maybe(value: int | None) -> str:
    return "-" if value is None else str(value)


def _shown(text: str) -> str:
    """User text as this report prints it: the escaped spelling of :class:`UserText`."""
    return UserText(text).shown


def _models(view: InstanceView) -> str:
    if view.info is None or not view.info.active_models:
        return "-"
    return ", ".join(_shown(f"{m.provider}/{m.model}") for m in view.info.active_models)


def _steals_line(snapshot: FleetSnapshot) -> str:
    stealing = snapshot.stealing
    line = (
        f"steals recorded {stealing.successes}/{stealing.attempts} ({stealing.success_rate:.0%}) · "
        f"claims {stealing.claims} · claimable {snapshot.figures.claimable_tasks} · locks {len(snapshot.locks)}"
    )
    if stealing.unrecorded_instances:
        line += (
            f" · steals of {stealing.unrecorded_instances} pi instance(s): not recorded "
            "(pi keeps them in process memory)"
        )
    return line


def render(snapshot: FleetSnapshot, width: int = 100) -> str:
    figures = snapshot.figures
    counts = figures.status_counts
    taken = f"{clock_datetime(snapshot.taken_at_ms)} {clock_zone(snapshot.taken_at_ms)}"
    stealing = snapshot.stealing
    lines = [
        f"pi fleet in {_shown(snapshot.source)} at {taken}"
        + (f" ({_shown(snapshot.notice)})" if snapshot.notice else ""),
        (
            f"{len(snapshot.instances)} instances: {counts.get(Status.ALIVE, 0)} alive, "
            f"{counts.get(Status.STALE, 0)} stale, {counts.get(Status.STALLED, 0)} stalled, {counts.get(Status.DEAD, 0)} dead, "
            f"{counts.get(Status.CORRUPT, 0)} corrupt"
        ),
        (
            f"pi's figures: active {figures.active_count} · limit {figures.parallel_limit} per instance "
            f"of totalMaxLlm {snapshot.config.total_max_llm} · fresh queues {figures.remote_instances}: "
            f"pending {figures.total_pending}, stealable {figures.stealable_tasks}, "
            f"idle {figures.idle_instances}, busy {figures.busy_instances}"
        ),
        _steals_line(snapshot),
    ]
    if figures.steal_work is not None or figures.steal_candidate is not None:
        entry = figures.steal_work
        pick = f"{_shown(entry.id)} ({_shown(entry.priority)}) of {_shown(entry.instance_id)}" if entry else "nothing"
        lines.append(f"pi's thieves would take {pick}; busiest: {_shown(figures.steal_candidate or '-')}")
    if snapshot.instances:
        rows = [
            [
                _shown(v.label),
                _shown(v.instance_id),
                str(v.info.pid) if v.info else "-",
                v.status.value,
                ("yes" if v.honours_claims else "no") if v.info else "-",
                duration(v.heartbeat_age_ms),
                str(v.pending) if v.info else "-",
                str(v.parallel_limit) if v.parallel_limit is not None else "-",
                _models(v),
                _shown(v.info.cwd) if v.info else "-",
            ]
            for v in sorted(snapshot.instances, key=lambda v: v.key)
        ]
        lines += ["", *_table(["LABEL", "INSTANCE", "PID", "STATUS", "CLAIMS", "BEAT", "PEND", "LIMIT", "MODELS", "CWD"], rows, width, 9)]
    if snapshot.models:
        rows = [
            [_shown(f"{m.provider}/{m.model}"), str(m.instance_count), _maybe(m.matching_instances), _maybe(m.parallel_limit)]
            for m in snapshot.models
        ]
        lines += ["", *_table(["MODEL", "USED BY", "PI COUNTS", "LIMIT"], rows, width, 0)]
    if snapshot.queues:
        rows = [
            [
                _shown(q.instance_id),
                str(q.state.pending_task_count),
                str(len(q.state.stealable_entries)),
                str(q.claimed_entries),
                duration(q.age_ms) + ("" if q.fresh else " (ignored)"),
            ]
            for q in sorted(snapshot.queues, key=lambda q: (-q.state.pending_task_count, q.instance_id))
        ]
        lines += ["", *_table(["QUEUE", "PENDING", "STEALABLE", "CLAIMED", "AGE"], rows, width, 0)]
    if snapshot.locks:
        rows = [
            [
                _shown(lv.resource),
                _shown(lv.lock.holder) if lv.lock else "?",
                duration(lv.age_ms),
                "expired" if lv.expired else duration(lv.ttl_left_ms),
            ]
            for lv in sorted(snapshot.locks, key=lambda lv: lv.key)
        ]
        lines += ["", *_table(["LOCK", "HOLDER", "AGE", "TTL LEFT"], rows, width, 0)]
    if snapshot.problems:
        lines += ["", f"{len(snapshot.problems)} problem(s):"]
        lines += [clip(f"  ! {_shown(str(p))}", width) for p in snapshot.problems]
    return "\n".join(lines)


def render_limits(rows: Sequence[ProviderLimits], problems: Sequence[str] = ()) -> str:
    """pi's ``pi_model_limits`` layout, with the fleet's live usage and backoff."""
    lines: list[str] = []
    for row in rows:
        effective = whole_requests(row.effective_requests_per_minute)
        configured = whole_requests(row.requests_per_minute)
        adapted = "" if effective == configured else f" (effective {effective} after 429s)"
        lines += [
            f"Provider: {_shown(row.provider)}",
            f"  Requests/minute: {configured}{adapted}",
            f"  Burst: {row.burst}",
            f"  Current usage: {row.used_last_minute}/{effective} requests in the last minute (used/effective limit)",
        ]
        for model, rpm, burst in row.model_limits:
            lines.append(f"  Model {_shown(model)}: {whole_requests(rpm)}/minute" + (f", burst {burst}" if burst else ""))
        active = [b for b in row.backoffs if b.active]
        if not active:
            lines.append("  Backoff: none")
        for backoff in active:
            lines.append(
                f"  Backoff: {_shown(backoff.model)} for {duration(backoff.remaining_ms)} more "
                f"({backoff.recent429s} 429s in 5 min, {backoff.instances_waiting} instance(s) waiting)"
            )
        lines.append("")
    if not rows:
        lines.append("No such provider.")
    lines += [f"! {_shown(p)}" for p in problems]
    return "\n".join(lines).rstrip()
