"""The worker registry (seed 003's ``WorkerRegistry``): who is in the fleet, how loaded, how alive.

One record per worker in the ``WORKERS`` space.  Every change to an existing
worker (status, capacity, heartbeat, staleness) is one ``store.update``, an
atomic read-modify-write: two processes changing the same worker at once both
land, in some order, and neither overwrites the other with a stale copy.
That is why the registry also offers :meth:`WorkerRegistry.adjust_active_tasks`
(``+1`` / ``-1``): seed 003's worker reads its capacity, adds one and writes it
back, which loses counts when two tasks finish at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, utc_from_ms
from ..models import CorruptRecord
from ..store import WORKERS, EntryUnreadable, Store
from .errors import WorkerError, translated
from .models import WORKER_STATUSES, WorkerCapacity, WorkerInfo

log = logging.getLogger("pi_dash.core.distributed.registry")

_CAPACITY_KEYS = {
    "max_tasks": "max_tasks",
    "maxTasks": "max_tasks",
    "active_tasks": "active_tasks",
    "activeTasks": "active_tasks",
    "available_slots": "available_slots",
    "availableSlots": "available_slots",
}


def _check_status(status: str, worker_id: str | None) -> None:
    if status not in WORKER_STATUSES:
        raise WorkerError(f"unknown worker status {status!r} (one of {', '.join(WORKER_STATUSES)})", worker_id)


def _capacity_change(capacity: Mapping[str, Any] | WorkerCapacity | None, worker_id: str) -> dict[str, int]:
    """The capacity fields a caller wants to change, validated before any update runs."""
    if capacity is None:
        return {}
    if isinstance(capacity, WorkerCapacity):
        capacity = capacity.model_dump(exclude_none=True)
    change: dict[str, int] = {}
    for key, value in capacity.items():
        name = _CAPACITY_KEYS.get(key)
        if name is None:
            raise WorkerError(f"unknown capacity field {key!r}", worker_id)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise WorkerError(f"capacity {key} must be a whole number >= 0, not {value!r}", worker_id)
        change[name] = value
    return change


def _apply_capacity(current: WorkerCapacity, change: Mapping[str, int]) -> WorkerCapacity:
    """Merge a partial capacity; ``available_slots`` is always re-derived from the counts.

    ``active_tasks`` wins over ``available_slots``; ``available_slots`` alone
    sets ``active_tasks = max_tasks - available_slots``.
    """
    max_tasks = change.get("max_tasks", current.max_tasks)
    if "active_tasks" in change:
        active = change["active_tasks"]
    elif "available_slots" in change:
        active = max(0, max_tasks - change["available_slots"])
    else:
        active = current.active_tasks
    return WorkerCapacity(max_tasks=max_tasks, active_tasks=active).consistent()


class WorkerRegistry:
    """Register, update, find and expire workers in a store shared by the fleet."""

    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.clock = clock

    def _errors(self, worker_id: str | None):
        return translated(self.store, lambda message, exc: WorkerError(message, worker_id))

    def _modify(self, worker_id: str, change: Callable[[WorkerInfo], WorkerInfo | None]) -> WorkerInfo:
        """Apply ``change`` to the stored worker atomically; returns the worker as now stored.

        ``change`` may run more than once (see :meth:`Store.update`) and must be pure.
        """
        if not isinstance(worker_id, str) or not worker_id:
            raise ValueError("worker_id must be a non-empty string")

        def updater(data: bytes | None) -> bytes | None:
            if data is None:
                return None
            try:
                worker = WorkerInfo.from_json(data)
            except CorruptRecord:
                return None  # reported below, from the bytes left in place
            changed = change(worker)
            return None if changed is None else changed.to_json()

        with self._errors(worker_id):
            data = self.store.update(WORKERS, worker_id, updater)
        if data is None:
            raise WorkerError(f"worker {worker_id!r} is not registered", worker_id)
        try:
            return WorkerInfo.from_json(data)
        except CorruptRecord as exc:
            raise WorkerError(f"record of worker {worker_id!r} is corrupt: {exc.reason}", worker_id) from exc

    # ------------------------------------------------------------ writing
    def register(self, worker: WorkerInfo | Mapping[str, Any]) -> WorkerInfo:
        """Register (or re-register) a worker; returns the record written.

        Accepts a :class:`WorkerInfo` or seed 003's dict (camelCase or
        snake_case keys; ``status`` defaults to ``active``).  ``registeredAt``
        and ``lastHeartbeat`` are set to now and ``availableSlots`` is derived
        from the counts, whatever was passed.
        """
        now = utc_from_ms(self.clock.now_ms())
        if isinstance(worker, Mapping):
            data = dict(worker)
            for name, alias in (("registered_at", "registeredAt"), ("last_heartbeat", "lastHeartbeat")):
                data.pop(alias, None)
                data[name] = now
            status = data.get("status", "active")
            _check_status(status, data.get("workerId", data.get("worker_id")))
            try:
                info = WorkerInfo.model_validate(data)
            except ValueError as exc:  # pydantic's ValidationError
                raise WorkerError(f"invalid worker: {exc}", data.get("workerId", data.get("worker_id"))) from exc
        else:
            info = worker
        info = info.model_copy(
            update={"registered_at": now, "last_heartbeat": now, "stale_since": None, "capacity": info.capacity.consistent()}
        )
        with self._errors(info.worker_id):
            self.store.write(WORKERS, info.worker_id, info.to_json())
        return info

    def deregister(self, worker_id: str) -> bool:
        """Remove a worker's record; ``True`` if there was one."""
        with self._errors(worker_id):
            return self.store.delete(WORKERS, worker_id)

    def update_status(
        self, worker_id: str, status: str, capacity: Mapping[str, Any] | WorkerCapacity | None = None
    ) -> WorkerInfo:
        """Set the status and (partially) the capacity; raises :class:`WorkerError` for an unknown
        worker, status or capacity field.  See :func:`_apply_capacity` for how counts merge."""
        _check_status(status, worker_id)
        change = _capacity_change(capacity, worker_id)

        def apply(worker: WorkerInfo) -> WorkerInfo:
            update: dict[str, Any] = {"status": status, "capacity": _apply_capacity(worker.capacity, change)}
            if status != "offline":
                update["stale_since"] = None
            return worker.model_copy(update=update)

        return self._modify(worker_id, apply)

    def adjust_active_tasks(self, worker_id: str, delta: int, status: str | None = None) -> WorkerInfo:
        """Add ``delta`` to ``active_tasks`` (never below 0) atomically, optionally setting the status."""
        if status is not None:
            _check_status(status, worker_id)

        def apply(worker: WorkerInfo) -> WorkerInfo:
            active = max(0, worker.capacity.active_tasks + delta)
            update: dict[str, Any] = {"capacity": _apply_capacity(worker.capacity, {"active_tasks": active})}
            if status is not None:
                update["status"] = status
            return worker.model_copy(update=update)

        return self._modify(worker_id, apply)

    def heartbeat(self, worker_id: str, metadata: Mapping[str, Any] | None = None) -> WorkerInfo:
        """Record that the worker is alive now; ``metadata`` keys are merged into its metadata.

        A worker the monitor had marked offline for silence (``stale_since``)
        comes back as ``active``; its recovered locks stay recovered.
        """
        now = utc_from_ms(self.clock.now_ms())
        extra = dict(metadata or {})

        def apply(worker: WorkerInfo) -> WorkerInfo:
            update: dict[str, Any] = {"last_heartbeat": max(now, worker.last_heartbeat)}
            if extra:
                update["metadata"] = {**worker.metadata, **extra}
            if worker.stale_since is not None:
                update["stale_since"] = None
                if worker.status == "offline":
                    update["status"] = "active"
            return worker.model_copy(update=update)

        return self._modify(worker_id, apply)

    def mark_stale(self, stale_threshold_ms: int) -> list[str]:
        """Mark offline every worker (not yet offline) silent for more than ``stale_threshold_ms``.

        Returns the ids this call marked: when several monitors check at once,
        each stale worker is reported by exactly one of them.
        """
        now_ms = self.clock.now_ms()
        now = utc_from_ms(now_ms)
        marked = []
        for worker in self.list_workers():
            if worker.status == "offline" or now_ms - worker.heartbeat_ms <= stale_threshold_ms:
                continue
            made: list[bool] = [False]

            def apply(current: WorkerInfo) -> WorkerInfo | None:
                made[0] = False  # the run that commits is the last one
                if current.status == "offline" or now_ms - current.heartbeat_ms <= stale_threshold_ms:
                    return None  # it heartbeated, or someone else marked it, since we listed
                made[0] = True
                return current.model_copy(update={"status": "offline", "stale_since": now})

            try:
                self._modify(worker.worker_id, apply)
            except WorkerError as exc:
                log.info("could not mark worker %r stale: %s", worker.worker_id, exc)
                continue
            if made[0]:
                marked.append(worker.worker_id)
        return marked

    # ------------------------------------------------------------ reading
    def get_worker(self, worker_id: str) -> WorkerInfo | None:
        with self._errors(worker_id):
            try:
                blob = self.store.read(WORKERS, worker_id)
            except EntryUnreadable as exc:
                raise WorkerError(f"record of worker {worker_id!r} is unreadable: {exc.reason}", worker_id) from exc
        if blob is None:
            return None
        try:
            return WorkerInfo.from_json(blob.data)
        except CorruptRecord as exc:
            raise WorkerError(f"record of worker {worker_id!r} is corrupt: {exc.reason}", worker_id) from exc

    def list_workers(
        self,
        status: str | Iterable[str] | None = None,
        has_capacity: bool | None = None,
        supported_task_type: str | None = None,
    ) -> list[WorkerInfo]:
        """Workers (by id) matching every filter given; unreadable or corrupt records are skipped (logged).

        ``status`` is one status or several; ``has_capacity`` ``True`` keeps workers
        with a free slot, ``False`` those without; ``supported_task_type`` keeps
        workers that declare that type.
        """
        wanted = None if status is None else ({status} if isinstance(status, str) else set(status))
        for one in wanted or ():
            _check_status(one, None)
        with self._errors(None):
            blobs = self.store.read_all(WORKERS)
        workers = []
        for key, blob in sorted(blobs.items()):
            if isinstance(blob, EntryUnreadable):
                log.warning("record of worker %r is unreadable: %s", key, blob.reason)
                continue
            try:
                worker = WorkerInfo.from_json(blob.data)
            except CorruptRecord as exc:
                log.warning("record of worker %r is corrupt: %s", key, exc.reason)
                continue
            if wanted is not None and worker.status not in wanted:
                continue
            if has_capacity is not None and (worker.free_slots > 0) != has_capacity:
                continue
            if supported_task_type is not None and supported_task_type not in worker.capabilities.supported_task_types:
                continue
            workers.append(worker)
        return workers
