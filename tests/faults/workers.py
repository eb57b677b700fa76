"""Child processes for the fault tests (importable: the "spawn" start method pickles targets by name)."""

from __future__ import annotations

import os
import time
from typing import Any

from core.locks import LockService
from tests.backends import StoreSpec, open_store
from tests.child_processes import READY, report_errors


def lock_holder(spec: StoreSpec, resource: str, ttl_ms: int, restart_grace_ms: int, out: Any) -> None:
    """Take a lock, report it, then hold it (believing it is ours) until killed."""

    def body() -> None:
        import core.store.redis_store

        core.store.redis_store.RESTART_GRACE_MS = restart_grace_ms
        lock = LockService(open_store(spec), holder_id="holder").try_acquire(resource, ttl_ms=ttl_ms)
        out.put((READY, "holder", None if lock is None else lock.model_dump()))
        time.sleep(120)

    report_errors("holder", out, body)


# ------------------------------------------------------------------ stealing
# Every run of an entry is one line appended to a shared log ("owner/entry runner"),
# so the test counts runs per entry: exactly once is the only right answer.


def fleet_env(interval_ms: int, timeout_ms: int) -> dict[str, str]:
    return {**os.environ, "PI_HEARTBEAT_INTERVAL_MS": str(interval_ms), "PI_HEARTBEAT_TIMEOUT_MS": str(timeout_ms)}


def record_run(runs_log: str, owner: str, entry_id: str, runner: str) -> None:
    fd = os.open(runs_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{owner}/{entry_id} {runner}\n".encode())
    finally:
        os.close(fd)


def owner(root: str, env: dict[str, str], runs_log: str, n_entries: int, pace_s: float, start: Any, out: Any) -> None:
    """Offer ``n_entries`` and run them, last first (thieves take them from the front).

    The owner's part of exactly-once: run an entry only with its claim, keep an
    entry somebody else claimed until :meth:`done_entries` names it (its
    thief may die first), mark what it ran done.
    """
    from core.coordinator import Coordinator
    from tests.procs_helpers import make_entries

    def body() -> dict[str, Any]:
        coordinator = Coordinator(root=root, env=env)
        coordinator.register()
        me = coordinator.info.instance_id
        pending = list(reversed(make_entries(me, n_entries)))
        coordinator.update_workload(len(pending))
        coordinator.broadcast_queue_state(len(pending), 1, pending)
        out.put((READY, "owner", me))
        start.wait()
        ran = 0
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            done = coordinator.done_entries()
            pending = [e for e in pending if e.id not in done]
            for entry in pending:
                if coordinator.claim_own(entry):
                    record_run(runs_log, me, entry.id, "owner")
                    time.sleep(pace_s)
                    coordinator.finish(entry)
                    pending.remove(entry)
                    ran += 1
                    break
            else:
                time.sleep(0.02)  # everything left is being run by thieves
            coordinator.update_workload(len(pending))
            coordinator.broadcast_queue_state(len(pending), 1, pending)
        return {"ran": ran, "left": [e.id for e in pending]}

    report_errors("owner", out, body)


def thief(root: str, env: dict[str, str], runs_log: str, name: str, pace_s: float, start: Any, stop: Any, out: Any) -> None:
    """Steal, run, mark done; until told to stop."""
    from core.coordinator import Coordinator

    def body() -> dict[str, Any]:
        coordinator = Coordinator(root=root, env=env)
        coordinator.register()
        out.put((READY, name, coordinator.info.instance_id))
        start.wait()
        ran = 0
        while not stop.is_set():
            work = coordinator.safe_steal_work()
            if work is None:
                time.sleep(0.02)
                continue
            record_run(runs_log, work.owner_instance_id, work.entry.id, name)
            time.sleep(pace_s)
            coordinator.finish(work)
            ran += 1
        coordinator.unregister()
        return {"ran": ran}

    report_errors(name, out, body)


def doomed_thief(root: str, env: dict[str, str], stolen_file: str, start: Any, out: Any) -> None:
    """Steal one entry, say which (in ``stolen_file``: a process killed right after
    putting on the shared queue may die holding the queue's lock), and wait for SIGKILL."""
    from core.coordinator import Coordinator

    def body() -> None:
        coordinator = Coordinator(root=root, env=env)
        coordinator.register()
        out.put((READY, "doomed", coordinator.info.instance_id))
        start.wait()
        while (work := coordinator.safe_steal_work()) is None:
            time.sleep(0.01)
        with open(stolen_file + ".tmp", "w") as handle:
            handle.write(work.entry.id)
        os.replace(stolen_file + ".tmp", stolen_file)
        time.sleep(120)

    report_errors("doomed", out, body)


def registered(root: str, env: dict[str, str], out: Any) -> None:
    """Register, heartbeat, and wait to be stopped, resumed and killed."""
    from core.coordinator import Coordinator

    def body() -> None:
        coordinator = Coordinator(root=root, env=env)
        coordinator.register()
        out.put((READY, "registered", coordinator.info.instance_id))
        time.sleep(120)

    report_errors("registered", out, body)


def stopped_holder(spec: StoreSpec, ttl_ms: int, resumed: Any, out: Any) -> None:
    """Hold a lock and a fenced task lock; once resumed (after SIGSTOP/SIGCONT), say
    whether the fencing token and a release are still honoured."""
    from core.distributed import LockManager

    def body() -> dict[str, Any]:
        store = open_store(spec)
        lock = LockService(store, holder_id="holder").try_acquire("resource", ttl_ms=ttl_ms)
        task = LockManager(store).acquire_lock("task", "holder", ttl_seconds=ttl_ms / 1000)
        assert lock is not None and task is not None
        out.put((READY, "holder", task.fencing_token))
        resumed.wait()
        return {
            "fencing_accepted": LockManager(store).check_fencing("task", task.fencing_token),
            "released": LockService(store, holder_id="holder").release(lock),
        }

    report_errors("holder", out, body)


class _ClockAhead:
    """This host's clock, ``ahead_ms`` fast (a laptop that lost NTP)."""

    def __init__(self, ahead_ms: int) -> None:
        self.ahead_ms = ahead_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.ahead_ms

    def monotonic(self) -> float:
        return time.monotonic()


def fenced_holder(spec: StoreSpec, task: str, ttl_ms: int, ahead_ms: int, out: Any) -> None:
    """Take a task lock with a fencing token, on a clock ``ahead_ms`` fast (so the token lies
    ahead of everyone else's clock), report the lock, then hold it until killed."""
    from core.distributed import LockManager

    def body() -> None:
        import core.store.redis_store

        core.store.redis_store.RESTART_GRACE_MS = 0  # it looked at the server long after it started
        lock = LockManager(open_store(spec), clock=_ClockAhead(ahead_ms)).acquire_lock(task, "holder", ttl_seconds=ttl_ms / 1000)
        assert lock is not None
        out.put((READY, "holder", {"token": lock.fencing_token, "believed_until_ms": lock.expires_at.timestamp() * 1000 - ahead_ms}))
        time.sleep(120)

    report_errors("holder", out, body)
