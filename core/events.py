"""The fleet's append-only event log: 429s, parallelism changes, steals, drains, lock releases."""

from __future__ import annotations

import logging

from .clock import SYSTEM_CLOCK, Clock
from .models import CorruptRecord, FleetEvent
from .store import Store, StoreError

log = logging.getLogger("pi_dash.core.events")


def _storable(text: str | None) -> str | None:
    """Text JSON can hold: a key from a file name that is not UTF-8 carries lone
    surrogates, spelled here as ``\\udcff`` rather than failing the event."""
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class EventLog:
    def __init__(self, store: Store, instance_id: str | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.instance_id = instance_id
        self.clock = clock

    def emit(self, kind: str, message: str, *, provider: str | None = None, model: str | None = None) -> FleetEvent:
        """Append an event; a failing log never breaks the caller (it is logged instead)."""
        event = FleetEvent(
            at=self.clock.now_ms(),
            kind=_storable(kind),
            message=_storable(message),
            instance_id=_storable(self.instance_id),
            provider=_storable(provider),
            model=_storable(model),
        )
        try:
            self.store.append_event(event.model_dump_json(by_alias=True).encode())
        except StoreError as exc:
            log.warning("cannot append to the event log: %s", exc)
        return event

    def read(self, cursor: int = 0, limit: int = 1000) -> tuple[list[FleetEvent], int, int]:
        """Events after ``cursor``, the next cursor, and how many lines were unreadable."""
        lines, cursor = self.store.read_events(cursor, limit)
        events, bad = [], 0
        for line in lines:
            if not line.strip():
                continue
            try:
                events.append(FleetEvent.from_json(line))
            except CorruptRecord:
                bad += 1
        return events, cursor, bad
