"""The fleet's event log: 429s, parallelism changes, steals, drains, lock releases."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widgets import RichLog

from core.models import FleetEvent
from core.snapshot import FleetSnapshot

from ..messages import RecordUnshown
from ..text import UserText, clock_time
from .palette import role_style

KIND_ROLE = {
    "429": "error",
    "rate-limit": "warning",
    "parallelism": "warning",
    "steal": "success",
    "drain": "accent",
    "lock-release": "accent",
    "cleanup": "secondary",
}


class EventLogView(RichLog):
    def __init__(self, **kwargs: object) -> None:
        # Wrapped, not cut: an event's end (the victim of a steal, a deadline) is often what matters.
        super().__init__(max_lines=1000, markup=False, highlight=False, wrap=True, **kwargs)
        self._shown = 0

    def on_resize(self, event: events.Resize) -> None:
        # Shown again (a compact pane switch) or resized: the newest line stays in view once
        # the scrollbars have settled, whether or not a horizontal one took a line meanwhile.
        # (RichLog's own handler runs too: Textual calls each class's.)
        if self.auto_scroll:
            self.call_after_refresh(self.scroll_end, animate=False, x_axis=False)

    def show(self, snapshot: FleetSnapshot) -> None:
        new = snapshot.event_count - self._shown
        if new <= 0:
            return
        for event in snapshot.events[-min(new, len(snapshot.events)) :]:
            self.write(self._line(event, snapshot))
        self._shown = snapshot.event_count

    def note(self, kind: str, message: str, at_ms: int) -> None:
        """A line of the dashboard's own (what a key press did, right away)."""
        self.write(self._line(FleetEvent(at=at_ms, kind=kind, message=message, instance_id="pi-dash")))

    def _line(self, event: FleetEvent, snapshot: FleetSnapshot | None = None) -> Text:
        """``HH:MM:SS kind label message``: instances named by label, in the message too."""
        try:
            line = Text(f"{clock_time(event.at)} ", style="dim")
            kind = UserText(event.kind).shown
            line.append(f"{kind:<12} ", style=role_style(self.app, KIND_ROLE.get(event.kind, "primary")))
            message = event.message
            if snapshot is not None and event.instance_id:  # the fleet's (the dashboard's own notes have no author)
                message = snapshot.shorten(message)
                label = snapshot.label(event.instance_id)
                # "birch stole ... from fjord" by birch: its label once, not twice.
                message = message[len(label) :].lstrip() if message.startswith(label + " ") else message
                line.append(f"{UserText(label)} ", style="bold")
            line.append(str(UserText(message)))
            return line
        except Exception as exc:  # the last guard: this event becomes a problem, the log goes on
            reason = UserText(f"cannot show this event: {type(exc).__name__}: {exc}")
            self.post_message(RecordUnshown(UserText(f"events/{event.kind}@{event.at}"), reason))
            return reason.text("bold")
