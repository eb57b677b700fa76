"""Work stealing: attempts, successes, success rate, latency, claims and the latest steals."""

from __future__ import annotations

from rich.text import Text

from core.snapshot import FleetSnapshot

from ..text import printable
from .text_pane import TextPane

RECENT = 5


class StealStats(TextPane):
    def show(self, snapshot: FleetSnapshot) -> None:
        totals = snapshot.stealing
        text = Text()
        text.append(f"attempts {totals.attempts}  ", style="bold")
        text.append(f"stolen {totals.successes}  failed {totals.failures}\n")
        text.append(f"success {totals.success_rate:.0%}  avg {totals.avg_latency_ms:.1f} ms  claims {totals.claims}\n")
        text.append(f"stealable now {snapshot.figures.stealable_tasks}  busy {snapshot.figures.busy_instances}")
        text.append(f"  idle {snapshot.figures.idle_instances}\n")
        steals = [e for e in snapshot.events if e.kind == "steal"][-RECENT:]
        if steals:
            text.append("latest steals:\n", style="bold")
        for event in reversed(steals):
            text.append(printable(event.message) + "\n", style="dim")
        self.show_text(text)
