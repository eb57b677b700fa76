"""Work stealing: recorded attempts, successes, success rate, latency, claims, pi's queue
figures and the latest steals."""

from __future__ import annotations

from rich.text import Text

from core.snapshot import FleetSnapshot

from ..text import UserText
from .text_pane import TextPane

RECENT = 5
LINE_WIDTH = 36  # before the pane is laid out: its width at 160 columns


class StealStats(TextPane):
    def show(self, snapshot: FleetSnapshot) -> None:
        totals = snapshot.stealing
        text = Text()
        text.append(f"attempts {totals.attempts}  ", style="bold")
        text.append(f"stolen {totals.successes}  failed {totals.failures}\n")
        text.append(f"success {totals.success_rate:.0%}  avg {totals.avg_latency_ms:.1f} ms  claims {totals.claims}\n")
        if totals.unrecorded_instances:
            text.append(f"pi steals: not recorded ({totals.unrecorded_instances})\n", style="dim")
        figures = snapshot.figures
        text.append(f"pi: stealable {figures.stealable_tasks}  busy {figures.busy_instances}  idle {figures.idle_instances}\n")
        text.append(f"claimable {figures.claimable_tasks}\n")
        steals = [e for e in snapshot.events if e.kind == "steal"][-RECENT:]
        if steals:
            text.append("latest steals:\n", style="bold")
        width = self.content_region.width or LINE_WIDTH
        for event in reversed(steals):
            # Cut in the middle (the one rule): the thief at the start, the victim at the end.
            text.append(f"{UserText(snapshot.shorten(event.message)).clip_middle(width)}\n", style="dim")
        self.show_text(text)
