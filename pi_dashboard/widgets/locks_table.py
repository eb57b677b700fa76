"""Locks: resource, holder, age, time to live; the selected one can be released."""

from __future__ import annotations

from core.snapshot import FleetSnapshot, LockView

from ..text import UserText, duration
from .keyed_table import SHORT_ID, Cell, Column, KeyedTable, Row
from .palette import role_style


class LocksTable(KeyedTable):
    COLUMNS = (("resource", "Resource"), Column("ttl", "TTL left", "right"), Column("age", "Age", "right", descending=True), ("holder", "Holder"))

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.views: dict[str, LockView] = {}

    @property
    def selected_lock(self) -> LockView | None:
        key = self.selected_key
        return None if key is None else self.views.get(key)

    def show(self, snapshot: FleetSnapshot) -> None:
        self.views = {view.key: view for view in snapshot.locks}
        rows = {}
        for view in snapshot.locks:
            rows[view.key] = self.row_for(view.key, view, lambda: self._row(view))
        self.sync(rows)

    def _row(self, view: LockView) -> Row:
        lock = view.lock
        if lock is None:
            return (
                Cell(UserText(view.key)),
                Cell(UserText(view.problem or "unreadable"), style=role_style(self.app, "error")),
                Cell(""),
                Cell("?", style=role_style(self.app, "error")),
            )
        ttl = "expired" if view.expired else duration(view.ttl_left_ms)
        return (
            Cell(UserText(lock.resource).clip(26)),
            Cell(ttl, view.ttl_left_ms, style=role_style(self.app, "warning") if view.expired else ""),
            Cell(duration(view.age_ms), view.age_ms),
            Cell(UserText(lock.holder).clip_middle(SHORT_ID)),
        )
