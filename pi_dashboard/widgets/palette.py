"""Status colours taken from the current theme, so panes follow theme changes."""

from __future__ import annotations

from rich.style import Style
from textual.app import App

from core.snapshot import Status

_STATUS_ROLE = {
    Status.ALIVE: "success",
    Status.STALE: "warning",
    Status.DEAD: "error",
    Status.STALLED: "warning",
    Status.CORRUPT: "error",
    Status.DRAINING: "accent",
}


def role_style(app: App, role: str, bold: bool = False) -> Style:
    """A Rich style for a theme role (success, warning, error, accent, secondary, primary)."""
    colour = getattr(app.current_theme, role, None) or app.current_theme.primary
    return Style(color=colour, bold=bold)


def status_style(app: App, status: Status) -> Style:
    if status is Status.OFFLINE:
        return Style(dim=True, italic=True)  # gone on purpose: quieter than any live state, in every theme
    return role_style(app, _STATUS_ROLE[status], bold=status in (Status.DEAD, Status.CORRUPT, Status.STALLED))
