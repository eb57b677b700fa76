"""Typed messages the dashboard's widgets and workers post to the app."""

from __future__ import annotations

from textual.message import Message

from core.control import ActionResult
from core.store import Store

from .text import UserText


class RecordUnshown(Message):
    """A record (or a whole pane) raised while being rendered; it is shown as a problem instead."""

    def __init__(self, where: UserText, reason: UserText) -> None:
        super().__init__()
        self.where = where
        self.reason = reason


class ActionDone(Message):
    """An operator action ran to its end (``result.done`` tells whether it changed anything)."""

    def __init__(self, action: str, result: ActionResult) -> None:
        super().__init__()
        self.action = action
        self.result = result


class ActionFailed(Message):
    """An operator action raised (the store failed: Redis gone, disk full, permissions)."""

    def __init__(self, action: str, reason: UserText) -> None:
        super().__init__()
        self.action = action
        self.reason = reason


class DemoStarted(Message):
    """The demo fleet's processes are up (started in a worker: spawning them blocks)."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
