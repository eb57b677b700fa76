"""Problems found in the store: corrupt files, clock skew, dead pids, unanswered requests."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from core.snapshot import FleetSnapshot, Problem

from ..text import UserText
from .palette import role_style
from .text_pane import TextPane

SHOWN = 50


class ProblemsPanel(TextPane):
    def show(self, snapshot: FleetSnapshot, own: Sequence[Problem] = ()) -> None:
        """The dashboard's own problems (records it could not show, failed actions), then the snapshot's."""
        problems = [*own, *snapshot.problems]
        if not problems:
            self.show_text(Text("no problems", style=role_style(self.app, "success")))
            return
        text = Text()
        for problem in problems[:SHOWN]:
            kind = UserText(problem.kind).shown
            text.append(f"{kind:<16}", style=role_style(self.app, "error" if problem.kind == "corrupt" else "warning"))
            text.append(f"{UserText(problem.where)}: {UserText(problem.message)}\n")
        if len(problems) > SHOWN:
            text.append(f"... and {len(problems) - SHOWN} more", style="dim")
        self.show_text(text)
