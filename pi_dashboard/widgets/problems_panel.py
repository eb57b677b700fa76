"""Problems found in the store: corrupt files, clock skew, dead pids, unanswered requests."""

from __future__ import annotations

from rich.text import Text

from core.snapshot import FleetSnapshot

from ..text import printable
from .palette import role_style
from .text_pane import TextPane

SHOWN = 50


class ProblemsPanel(TextPane):
    def show(self, snapshot: FleetSnapshot) -> None:
        problems = snapshot.problems
        if not problems:
            self.show_text(Text("no problems", style=role_style(self.app, "success")))
            return
        text = Text()
        for problem in problems[:SHOWN]:
            text.append(f"{problem.kind:<16}", style=role_style(self.app, "error" if problem.kind == "corrupt" else "warning"))
            text.append(printable(f"{problem.where}: {problem.message}") + "\n")
        if len(problems) > SHOWN:
            text.append(f"... and {len(problems) - SHOWN} more", style="dim")
        self.show_text(text)
