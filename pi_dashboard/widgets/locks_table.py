"""Locks: resource, holder, age, time to live; the selected one can be released."""

from __future__ import annotations

from core.snapshot import FleetSnapshot, LockView

from ..text import clip, clip_middle, duration, printable
from .keyed_table import SHORT_ID, Cell, Column, KeyedTable, by_value
from .palette import role_style


class LocksTable(KeyedTable):
    COLUMNS = (("resource", "Resource"), Column("ttl", "TTL left", "right"), Column("age", "Age", "right"), ("holder", "Holder"))

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.views: dict[str, LockView] = {}

    def on_mount(self) -> None:
        self.sort_by("resource", key=by_value)

    @property
    def selected_lock(self) -> LockView | None:
        key = self.selected_key
        return None if key is None else self.views.get(key)

    def show(self, snapshot: FleetSnapshot) -> None:
        self.views = {view.key: view for view in snapshot.locks}
        rows = {}
        for view in snapshot.locks:
            lock = view.lock
            if lock is None:
                rows[view.key] = (
                    Cell(printable(view.key)),
                    Cell(printable(view.problem or "unreadable"), style=role_style(self.app, "error")),
                    Cell(""),
                    Cell("?", style=role_style(self.app, "error")),
                )
                continue
            ttl = "expired" if view.expired else duration(view.ttl_left_ms)
            rows[view.key] = (
                Cell(clip(printable(lock.resource), 26)),
                Cell(ttl, view.ttl_left_ms, style=role_style(self.app, "warning") if view.expired else ""),
                Cell(duration(view.age_ms), view.age_ms),
                Cell(clip_middle(printable(lock.holder), SHORT_ID)),
            )
        self.sync(rows)
