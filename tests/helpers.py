"""Small builders shared by several test modules."""

from __future__ import annotations

from core.clock import Clock, utc_from_ms
from core.models import StealableQueueEntry


def stealable_entries(owner: str, clock: Clock, n: int, priority: str = "normal") -> list[StealableQueueEntry]:
    return [
        StealableQueueEntry(
            id=f"task-{i}", tool_name="bash", priority=priority, instance_id=owner, enqueued_at=utc_from_ms(clock.now_ms())
        )
        for i in range(n)
    ]
