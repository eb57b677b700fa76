"""Operator actions on a fleet, each through the store's atomic operations and each
written to the event log: drain an instance (and cancel that), release a lock,
remove a dead instance's files.  The dashboard calls these; it never touches files itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec

from .clock import SYSTEM_CLOCK, Clock
from .events import EventLog
from .locks import LockRelease, LockService
from .models import ControlRequest, CorruptRecord, DistributedLock
from .store import CONTROL, INSTANCES, PARALLELISM, QUEUES, EntryUnreadable, ReadOnlyStore, Store, read_record

# An instance that has not acknowledged a drain within this many heartbeat
# intervals does not understand it (pi's own instances, for one).
ACK_INTERVALS = 2


@dataclass(frozen=True, slots=True)
class ActionResult:
    done: bool
    message: str


P = ParamSpec("P")


def _refused_when_read_only(
    action: Callable[Concatenate[FleetControl, P], ActionResult],
) -> Callable[Concatenate[FleetControl, P], ActionResult]:
    """On a read-only store the action is refused before anything is written, and says so."""

    @functools.wraps(action)
    def guarded(self: FleetControl, *args: P.args, **kwargs: P.kwargs) -> ActionResult:
        try:
            return action(self, *args, **kwargs)
        except ReadOnlyStore as exc:
            return ActionResult(False, str(exc))

    return guarded


class FleetControl:
    """What an operator may do to a fleet, on behalf of ``actor`` (e.g. ``pi-dash@host``)."""

    def __init__(self, store: Store, actor: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.actor = actor
        self.clock = clock
        self.events = EventLog(store, actor, clock)

    @_refused_when_read_only
    def request_drain(self, instance_id: str) -> ActionResult:
        """Ask an instance to finish its current work, take and steal none, then go offline."""
        request = ControlRequest(
            instance_id=instance_id, action="drain", requested_at=self.clock.now_ms(), requested_by=self.actor
        )
        if not self.store.create(CONTROL, instance_id, request.to_json()):
            return ActionResult(False, f"a control request for {instance_id} is already pending")
        self.events.emit("drain", f"drain requested for {instance_id}")
        return ActionResult(True, f"drain requested for {instance_id}")

    @_refused_when_read_only
    def cancel_drain(self, instance_id: str) -> ActionResult:
        """Withdraw a drain request that has not completed, so the instance resumes taking work.

        The request is removed only as it was read (compare-and-delete), so an
        acknowledgement written meanwhile is read again, not lost.  A core instance
        that was draining sees the request gone within a second and resumes; one that
        never acknowledged never stopped.  An agent that already decided it was done
        (``finish_drain``) still goes offline.
        """
        for _ in range(5):
            found = read_request(self.store, instance_id)
            if found is None:
                return ActionResult(False, f"no drain request for {instance_id} to cancel")
            request, seen = found
            if request.completed_at is not None:
                return ActionResult(False, f"{instance_id} has drained already and gone offline; nothing to cancel")
            if self.store.delete_if(CONTROL, instance_id, seen):
                self.events.emit("drain", f"drain of {instance_id} cancelled by {self.actor}")
                return ActionResult(True, f"drain of {instance_id} cancelled")
        return ActionResult(False, f"the drain request of {instance_id} kept changing; try again")

    @_refused_when_read_only
    def release_lock(self, lock: DistributedLock) -> ActionResult:
        """Release ``lock`` only if it is still exactly that lock (same ``lockId``)."""
        result: LockRelease = LockService(self.store, self.actor, self.clock).release_if_current(lock)
        if result.released:
            self.events.emit("lock-release", f"lock {lock.resource} of {lock.holder} released by {self.actor}")
            return ActionResult(True, f"released {lock.resource}")
        return ActionResult(False, f"{lock.resource} not released: {result.reason}")

    @_refused_when_read_only
    def remove_instance_files(self, key: str, seen: bytes) -> ActionResult:
        """Remove a dead instance's files, only if its instance file still holds ``seen``.

        The caller decides the instance is dead from a snapshot; if the file
        changed since (the instance came back), nothing is removed.
        """
        if not self.store.delete_if(INSTANCES, key, seen):
            if self.store.read(INSTANCES, key) is None:
                return ActionResult(False, f"{key} is gone already (removed meanwhile); nothing to remove")
            return ActionResult(False, f"{key} changed since it was seen dead; nothing removed")
        for space in (QUEUES, PARALLELISM, CONTROL):
            self.store.delete(space, key)
        self.events.emit("cleanup", f"files of dead instance {key} removed by {self.actor}")
        return ActionResult(True, f"removed the files of {key}")


def read_request(store: Store, instance_id: str) -> tuple[ControlRequest, bytes] | None:
    try:
        found = read_record(store, CONTROL, instance_id, ControlRequest)
    except (CorruptRecord, EntryUnreadable):
        return None
    return None if found is None else (found[0], found[1].data)


def update_request(store: Store, request: ControlRequest, seen: bytes, **changes: int) -> bool:
    return store.replace_if(CONTROL, request.instance_id, seen, request.model_copy(update=changes).to_json())
