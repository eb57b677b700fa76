"""Worker functions for tests/test_concurrency.py.

They live in an importable module because the "spawn" start method pickles a
child's target by name.  Every worker reports through a queue as
``(tag, worker_name, payload)``; a worker that raises reports
``("error", worker_name, traceback_text)`` so the test fails with the child's
traceback instead of timing out.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

from core.clock import utc_from_ms
from core.coordinator import Coordinator
from core.locks import LockService
from core.models import CorruptRecord, InstanceInfo, StealableQueueEntry
from core.store import CLAIMS, INSTANCES, DirectoryStore

from tests.child_processes import ERROR, READY, RESULT, report_errors  # noqa: F401 (tests use ph.RESULT...)


def instance_info(instance_id: str, i: int) -> InstanceInfo:
    now = time.time_ns() // 1_000_000
    return InstanceInfo(
        instance_id=instance_id,
        pid=os.getpid(),
        session_id="0123456789abcdef",
        started_at=utc_from_ms(now),
        last_heartbeat=utc_from_ms(now),
        cwd="/tmp/project-with-a-longish-path/" + "x" * (i % 97),
        pending_task_count=i,
    )


# ----------------------------------------------------------------- test 1
def lock_contender(root: str, name: str, resource: str, seconds: float, start: Any, out: Any) -> None:
    """Take and release ``resource`` for ``seconds``; report the monotonic hold intervals."""

    def body() -> dict[str, Any]:
        locks = LockService(DirectoryStore(root), holder_id=name)
        rng = random.Random(name)
        intervals: list[tuple[int, int]] = []
        attempts = failed_releases = 0
        out.put((READY, name, os.getpid()))
        start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            attempts += 1
            lock = locks.try_acquire(resource, ttl_ms=10_000)
            if lock is None:
                time.sleep(rng.random() * 0.0005)
                continue
            began = time.monotonic_ns()
            time.sleep(rng.random() * 0.001)
            ended = time.monotonic_ns()
            intervals.append((began, ended))
            if not locks.release(lock):
                failed_releases += 1
        return {"intervals": intervals, "attempts": attempts, "failed_releases": failed_releases}

    report_errors(name, out, body)


# ----------------------------------------------------------------- test 2
def instance_writer(root: str, key: str, count: int, durable: bool, start: Any, done: Any, out: Any) -> None:
    """Rewrite one instance file ``count`` times with ``pendingTaskCount`` = 1..count."""

    def body() -> dict[str, Any]:
        store = DirectoryStore(root)
        payloads = [instance_info(key, i).to_json() for i in range(1, count + 1)]
        out.put((READY, "writer", os.getpid()))
        start.wait()
        began = time.monotonic()
        try:
            for data in payloads:
                store.write(INSTANCES, key, data, durable=durable)
        finally:
            done.set()
        return {"writes": count, "seconds": time.monotonic() - began}

    report_errors("writer", out, body)


def instance_reader(root: str, name: str, key: str, start: Any, done: Any, out: Any) -> None:
    """Read the file in a loop, alternately raw and through the store, until the writer is done."""

    def body() -> dict[str, Any]:
        store = DirectoryStore(root)
        path = os.path.join(root, "instances", key + ".lock")
        reads = raw_reads = store_reads = 0
        torn: list[str] = []
        missing = 0
        backwards: list[tuple[int, int]] = []
        last_seen = 0
        values: set[int] = set()
        out.put((READY, name, os.getpid()))
        start.wait()
        finishing = False
        while True:
            if done.is_set():
                finishing = True  # one more round after the last write
            for raw in (True, False):
                reads += 1
                try:
                    if raw:
                        raw_reads += 1
                        with open(path, "rb") as f:
                            data = f.read()
                    else:
                        store_reads += 1
                        blob = store.read(INSTANCES, key)
                        if blob is None:
                            missing += 1
                            continue
                        data = blob.data
                except FileNotFoundError:
                    missing += 1
                    continue
                try:
                    info = InstanceInfo.from_json(data)
                except CorruptRecord as exc:
                    if len(torn) < 5:
                        torn.append(f"{exc}: {data[:80]!r}...{data[-40:]!r} ({len(data)} bytes)")
                    else:
                        torn.append("")
                    continue
                value = info.pending_task_count or 0
                values.add(value)
                if value < last_seen and len(backwards) < 5:
                    backwards.append((last_seen, value))
                last_seen = max(last_seen, value)
            if finishing:
                break
        return {
            "reads": reads,
            "raw_reads": raw_reads,
            "store_reads": store_reads,
            "torn": torn,
            "missing": missing,
            "backwards": backwards,
            "last_seen": last_seen,
            "distinct_values": len(values),
        }

    report_errors(name, out, body)


# ----------------------------------------------------------------- test 3
def make_entries(owner: str, n: int) -> list[StealableQueueEntry]:
    now = utc_from_ms(time.time_ns() // 1_000_000)
    priorities = ("critical", "high", "normal", "low", "background")
    return [
        StealableQueueEntry(
            id=f"task-{i:04d}",
            tool_name="bash",
            priority=priorities[i % len(priorities)],
            instance_id=owner,
            enqueued_at=now,
            estimated_duration_ms=1000,
        )
        for i in range(n)
    ]


def steal_victim(root: str, n_entries: int, pace_s: float, reverse: bool, start: Any, out: Any) -> None:
    """Register, offer ``n_entries``, then (once thieves start) claim its own entries.

    In reverse order the owner meets the thieves (who take entries from the
    front) once, in the middle; in queue order it races them for every entry.

    Between two claims it "runs" the task it claimed for ``pace_s`` seconds, as
    a real owner would, so the thieves get a fair share of the queue.
    """

    def body() -> dict[str, Any]:
        coordinator = Coordinator(root=root)
        coordinator.register(heartbeat=False)
        me = coordinator.info.instance_id
        entries = make_entries(me, n_entries)
        coordinator.update_workload(n_entries)
        coordinator.broadcast_queue_state(
            pending_task_count=n_entries, active_orchestrations=1, stealable_entries=entries
        )
        out.put((READY, "victim", me))
        start.wait()
        mine = []
        lost = 0
        for entry in reversed(entries) if reverse else entries:
            if coordinator.claim_own(entry.id):
                mine.append(entry.id)
                time.sleep(pace_s)
            else:
                lost += 1
        return {"instance_id": me, "claimed": mine, "lost": lost}

    report_errors("victim", out, body)


def steal_thief(root: str, name: str, n_entries: int, seconds: float, start: Any, out: Any) -> None:
    """Call ``safe_steal_work`` until every entry is claimed by someone; report what this thief got."""

    def body() -> dict[str, Any]:
        coordinator = Coordinator(root=root)
        coordinator.register(heartbeat=False)
        me = coordinator.info.instance_id
        store = coordinator.store
        out.put((READY, name, me))
        start.wait()
        deadline = time.monotonic() + seconds
        stolen: list[tuple[str, str]] = []
        calls = nones = 0
        while time.monotonic() < deadline:
            calls += 1
            work = coordinator.safe_steal_work()
            if work is not None:
                assert work.claim.claimed_by == me, work.claim
                assert work.entry.instance_id == work.owner_instance_id
                stolen.append((work.owner_instance_id, work.entry.id))
                continue
            nones += 1
            # None is normal while another thief holds the steal lock; stop
            # only when every entry has a claim.
            if len(store.keys(CLAIMS)) >= n_entries:
                break
        return {
            "instance_id": me,
            "stolen": stolen,
            "calls": calls,
            "nones": nones,
            "timed_out": time.monotonic() >= deadline,
            "stats": coordinator.stealing_stats().model_dump(),
        }

    report_errors(name, out, body)


# ----------------------------------------------------------------- test 4
def doomed_holder(root: str, resource: str, ttl_ms: int, out: Any) -> None:
    """Take a lock, report it, then wait to be killed with SIGKILL."""

    def body() -> None:
        lock = LockService(DirectoryStore(root), holder_id="doomed").try_acquire(resource, ttl_ms=ttl_ms)
        out.put((READY, "doomed", None if lock is None else lock.model_dump()))
        time.sleep(60)  # never returns normally: the test kills us

    report_errors("doomed", out, body)


# ----------------------------------------------------------------- test 5
def expiring_contender(
    root: str, name: str, resource: str, ttl_ms: int, seconds: float, start: Any, out: Any
) -> None:
    """Take over an expiring lock again and again; report wall-clock intervals of believed ownership.

    A holder believes it holds the lock from the moment ``try_acquire``
    returns until it checks that the lease has not run out (``now <
    expiresAt``).  Half the time it then releases, half the time it abandons
    the lock so the next taker must go through the expired-lock takeover
    (``replace_if``).  Each grant is reported with whether the lease was
    still valid at the end of the hold (a holder whose lease ran out knows it
    lost the lock and does not count as having held it to the end).
    """

    def body() -> dict[str, Any]:
        locks = LockService(DirectoryStore(root), holder_id=name)
        rng = random.Random(name)
        grants: list[tuple[int, int, str, bool, bool]] = []
        failed_releases = attempts = 0
        out.put((READY, name, os.getpid()))
        start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            attempts += 1
            lock = locks.try_acquire(resource, ttl_ms=ttl_ms)
            if lock is None:
                time.sleep(rng.random() * 0.001)
                continue
            began = time.time_ns()
            time.sleep(rng.random() * 0.002)
            ended = time.time_ns()
            in_lease = ended < lock.expires_at * 1_000_000
            release = rng.random() < 0.5
            if release and not locks.release(lock) and in_lease:
                failed_releases += 1
            grants.append((began, ended, lock.lock_id, in_lease, release))
            time.sleep(rng.random() * 0.001)
        return {"grants": grants, "attempts": attempts, "failed_releases": failed_releases}

    report_errors(name, out, body)


# ----------------------------------------------------------------- test 6
def _space(space_name: str) -> Any:
    from core import store as spaces

    return getattr(spaces, space_name)


def counter_updater(root: str, name: str, space_name: str, key: str, count: int, start: Any, out: Any) -> None:
    """``count`` read-modify-write increments through ``store.update``; report the counter each one produced."""

    def body() -> dict[str, Any]:
        store = DirectoryStore(root)
        space = _space(space_name)

        def increment(current: bytes | None) -> bytes:
            state = json.loads(current) if current else {"n": 0, "by": {}}
            n = state["n"] + 1
            state["n"] = n
            state["by"][name] = state["by"].get(name, 0) + 1
            state["pad"] = "x" * (n * 7 % 61)  # the size changes both ways: in-place writes must truncate
            return json.dumps(state).encode()

        produced = []
        out.put((READY, name, os.getpid()))
        start.wait()
        began = time.monotonic()
        for _ in range(count):
            produced.append(json.loads(store.update(space, key, increment))["n"])
        return {"produced": produced, "seconds": time.monotonic() - began}

    report_errors(name, out, body)


def counter_reader(root: str, name: str, space_name: str, key: str, start: Any, done: Any, out: Any) -> None:
    """Read the counter until the updaters are done: it must always parse and never go back."""

    def body() -> dict[str, Any]:
        store = DirectoryStore(root)
        space = _space(space_name)
        reads = missing = 0
        torn: list[str] = []
        backwards: list[tuple[int, int]] = []
        last = 0
        values: set[int] = set()
        out.put((READY, name, os.getpid()))
        start.wait()
        finishing = False
        while not finishing:
            finishing = done.is_set()
            reads += 1
            blob = store.read(space, key)
            if blob is None:
                missing += 1
                continue
            try:
                state = json.loads(blob.data)
                n = state["n"]
                if sum(state["by"].values()) != n:
                    raise ValueError(f"counts {state['by']} do not add up to {n}")
            except (ValueError, KeyError, TypeError) as exc:
                torn.append(f"{exc}: {blob.data[:60]!r}")
                continue
            values.add(n)
            if n < last and len(backwards) < 5:
                backwards.append((last, n))
            last = max(last, n)
        return {"reads": reads, "missing": missing, "torn": torn[:5], "torn_count": len(torn),
                "backwards": backwards, "last": last, "distinct": len(values)}

    report_errors(name, out, body)


# ----------------------------------------------------------------- test 7
def event_appender(root: str, name: str, count: int, start: Any, segment_bytes: int | None, out: Any) -> None:
    """Append ``count`` numbered events to the fleet's event log (segments of ``segment_bytes``)."""

    def body() -> dict[str, Any]:
        if segment_bytes is not None:
            import core.store.directory as directory

            directory.EVENTS_MAX_BYTES = segment_bytes
        store = DirectoryStore(root)
        out.put((READY, name, os.getpid()))
        start.wait()
        for i in range(count):
            store.append_event(json.dumps({"w": name, "i": i, "pad": "x" * (i % 50)}).encode())
        return {"appended": count}

    report_errors(name, out, body)


def event_follower(root: str, name: str, start: Any, done: Any, out: Any) -> None:
    """Follow the log with ``read_events`` cursors while it is being appended to."""

    def body() -> dict[str, Any]:
        store = DirectoryStore(root)
        cursor = 0
        seen: list[tuple[str, int]] = []
        torn: list[bytes] = []
        calls = 0
        out.put((READY, name, os.getpid()))
        start.wait()
        while True:
            finishing = done.is_set()
            calls += 1
            events, cursor = store.read_events(cursor, limit=100)
            for event in events:
                try:
                    record = json.loads(event)
                    seen.append((record["w"], record["i"]))
                except (ValueError, KeyError):
                    torn.append(event[:80])
            if finishing and not events:
                break
        return {"seen": seen, "torn": torn[:5], "torn_count": len(torn), "calls": calls}

    report_errors(name, out, body)
