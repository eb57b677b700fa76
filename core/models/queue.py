"""Records of ``queue-states/{instanceId}.json``: work an instance offers to others."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from functools import cached_property
from typing import Any

from pydantic import Field

from ._base import Count, DurationMs, JsTime, Record, to_epoch_ms


class Priority(IntEnum):
    """pi's task priorities; a lower value is more urgent."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4

    @classmethod
    def rank(cls, name: str) -> int:
        """Rank of a priority name; unknown names sort after ``background``."""
        try:
            return cls[name.upper()].value
        except KeyError:
            return len(cls)


class StealableQueueEntry(Record):
    """A task another instance may take over."""

    id: str
    tool_name: str
    priority: str
    instance_id: str
    enqueued_at: JsTime
    estimated_duration_ms: DurationMs | None = None
    estimated_rounds: Count | None = None

    @property
    def priority_rank(self) -> int:
        return Priority.rank(self.priority)


EntryLike = StealableQueueEntry | Mapping[str, Any]
"""A queue entry as callers hand it over: the record, or a mapping of its fields
(camelCase as on disk, or snake_case)."""


def as_entry(value: EntryLike) -> StealableQueueEntry:
    """The one way an entry given by a caller becomes a :class:`StealableQueueEntry`."""
    return value if isinstance(value, StealableQueueEntry) else StealableQueueEntry.model_validate(value)


class BroadcastQueueState(Record):
    """An instance's advertised queue: its load and the entries it lets others steal.

    ``stealable_entries`` are what pi's thieves read; pi's thieves claim nothing,
    so a ``core`` owner lists there only what it lets run twice.
    ``claimable_entries`` (written by ``core`` owners only; pi ignores the key)
    are offered to thieves that claim before running, exactly once.
    """

    instance_id: str = Field(min_length=1)
    timestamp: JsTime
    pending_task_count: Count
    active_orchestrations: Count = 0
    stealable_entries: tuple[StealableQueueEntry, ...] = ()
    avg_latency_ms: DurationMs | None = None  # pi writes it last
    claimable_entries: tuple[StealableQueueEntry, ...] | None = None

    @cached_property
    def timestamp_ms(self) -> int:
        return to_epoch_ms(self.timestamp)
