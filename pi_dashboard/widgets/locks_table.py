"""Locks: resource, holder, age, time to live; the selected one can be released."""

from __future__ import annotations

from core.snapshot import FleetSnapshot, LockView

from ..text import UserText, duration
from .keyed_table import Cell, Column, KeyedTable, Row
from .palette import role_style


class LocksTable(KeyedTable):
    COLUMNS = (
        Column("resource", "Resource", shrink=12, help="what is locked; steal:LABEL is that instance's queue, taken by a thief"),
        Column("holder", "Holder", help="the label of the instance holding it"),
        Column("ttl", "TTL left", "right", help="time until it expires (pi then takes it as free); expired: past it"),
        Column("age", "Age", "right", descending=True, drop=1, help="time since it was taken"),
    )

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
            holder = snapshot.label(view.lock.holder) if view.lock else ""
            resource = steal_target(view.resource, snapshot)
            rows[view.key] = self.row_for(view.key, (view, holder, resource), lambda: self._row(view, holder, resource))
        self.sync(rows)

    def _row(self, view: LockView, holder: str, resource: str) -> Row:
        lock = view.lock
        if lock is None:
            return (
                Cell(UserText(view.key)),
                Cell("?", style=role_style(self.app, "error")),
                Cell(UserText(view.problem or "unreadable"), style=role_style(self.app, "error")),
                Cell(""),
            )
        ttl = "expired" if view.expired else duration(view.ttl_left_ms)
        return (
            Cell(UserText(resource), lock.resource),
            Cell(UserText(holder), (holder, lock.holder)),
            Cell(ttl, view.ttl_left_ms, style=role_style(self.app, "warning") if view.expired else None),
            Cell(duration(view.age_ms), view.age_ms),
        )


def steal_target(resource: str, snapshot: FleetSnapshot) -> str:
    """A steal lock's resource names its queue's owner by id: shown by label."""
    prefix, _, owner = resource.partition(":")
    if prefix == "steal" and owner:
        return f"steal:{snapshot.label(owner)}"
    return resource
