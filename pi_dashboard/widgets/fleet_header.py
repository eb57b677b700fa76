"""The fleet at a glance: where, how many instances in which state, limits and provider usage."""

from __future__ import annotations

from rich.text import Text

from core.limits_view import whole_requests
from core.snapshot import FleetSnapshot, Status

from ..text import UserText, clock_time, clock_zone
from .palette import role_style, status_style
from .text_pane import TextPane


class FleetHeader(TextPane):
    def show(self, snapshot: FleetSnapshot | None, *, paused: bool, watching: str, error: str | None) -> None:
        text = Text()
        if snapshot is None:
            text.append("pi-dash  ", style="bold")
            text.append(str(UserText(error or "starting...")), style=role_style(self.app, "error"))
            self.show_text(text)
            return
        stamp = f"{clock_time(snapshot.taken_at_ms)} {clock_zone(snapshot.taken_at_ms)}"
        text.append("pi-dash ", style="bold")
        text.append(f"{UserText(snapshot.source)}  ")
        text.append(f"{stamp}  [{watching}]", style="dim")
        if paused:
            text.append("  PAUSED", style=role_style(self.app, "warning", bold=True))
        if error:
            text.append(f"  {UserText(error)}", style=role_style(self.app, "error"))
        if snapshot.notice:
            text.append(f"  {UserText(snapshot.notice)}", style=role_style(self.app, "warning", bold=True))
        text.append("\n")
        counts = snapshot.figures.status_counts
        text.append(f"{len(snapshot.instances)} instances ")
        for status in Status:
            if counts.get(status):
                text.append(f"{counts[status]} {status.value} ", style=status_style(self.app, status))
        if snapshot.problems:
            count = len(snapshot.problems)
            text.append(f"│ {count} problem{'s' if count != 1 else ''}", style=role_style(self.app, "warning"))
        text.append("\n")
        figures = snapshot.figures
        # Each segment ends in its space (an SVG export drops a segment's leading one).
        text.append(f"pending {figures.total_pending} tasks │ ")
        if snapshot.rate_limits:
            text.append("requests/min used/limit: ")
        for rate in sorted(snapshot.rate_limits, key=lambda r: r.provider):
            backing_off = any(b.active for b in snapshot.backoffs if b.provider == rate.provider)
            style = role_style(self.app, "error") if backing_off else ""
            usage = f"{UserText(rate.provider)} {rate.used_last_minute}/{whole_requests(rate.effective_requests_per_minute)}"
            text.append(usage + (" backing off " if backing_off else " "), style=style)
        if snapshot.rate_limits:
            text.append("│ ")
        text.append(f"LLM slots {snapshot.config.total_max_llm}, even share {figures.parallel_limit}/instance (Lim: by pending)")
        self.show_text(text)
