"""The engine's guarantees under real concurrency: separate OS processes, one directory.

Every test here starts real processes (multiprocessing, "spawn" start method)
on one coordination directory and checks an exact property:

* a lock is never held by two processes at once (``create`` is atomic, release
  is compare-and-delete), and expired-lock takeover (``replace_if``) never lets
  two processes both believe they hold it;
* a file rewritten 10,000 times is never seen torn, never seen missing and
  never seen going back in time;
* 1,000 stealable entries raced by 8 thieves and their owner are each
  executed exactly once;
* a lock whose holder was SIGKILLed stays held until ``expiresAt`` and is
  free right after;
* ``store.update`` read-modify-writes from 4 processes lose nothing, in-place
  (``flock`` + ``pwrite``) and replace-by-rename spaces alike, and a reader
  never sees one torn;
* events appended to the event log by 3 processes reach a ``read_events``
  follower whole, exactly once and in each writer's order (without rotation).

The worker functions live in :mod:`tests.procs_helpers` (spawn needs importable
targets).  Timing figures are printed (``-s`` shows them) and included in every
assertion message.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest

from core.locks import LockService, lock_key
from core.models import DistributedLock, InstanceInfo, StealClaim, StealingStats
from core.store import CLAIMS, INSTANCES, LOCKS, STEALING_STATS, DirectoryStore, read_record
from tests import procs_helpers as ph
from tests.child_processes import CTX, fleet

START_TIMEOUT_S = 30  # spawning 9 interpreters on a loaded 2-core machine
INSTANCE_KEY = "sess-01234567-pid4242-m0abcdef-wxyz"


def overlaps(intervals: list[tuple[int, int, str]]) -> list[str]:
    """Every interval that starts before an earlier-starting one has ended."""
    found = []
    latest_end, latest_who = -1, ""
    for began, ended, who in sorted(intervals):
        assert began <= ended, (began, ended, who)
        if began < latest_end:
            found.append(f"{who} began {(latest_end - began) / 1e3:.1f} us before {latest_who} released")
        if ended > latest_end:
            latest_end, latest_who = ended, who
    return found


# --------------------------------------------------------------------------- 1
@pytest.mark.slow
def test_eight_processes_never_hold_one_lock_at_once(root):
    workers, seconds, resource = 8, 3.0, "steal:sess-contended"
    with fleet() as f:
        for n in range(workers):
            f.spawn(ph.lock_contender, str(root), f"w{n}", resource, seconds, f.start)
        f.collect(ph.READY, workers, START_TIMEOUT_S)
        f.start.set()
        results = f.collect(ph.RESULT, workers, seconds + 30)
        f.join()

    intervals = [(b, e, name) for name, r in results.items() for b, e in r["intervals"]]
    per_worker = {name: len(r["intervals"]) for name, r in sorted(results.items())}
    attempts = sum(r["attempts"] for r in results.values())
    failed_releases = {name: r["failed_releases"] for name, r in results.items() if r["failed_releases"]}
    held_ms = sum(e - b for b, e, _ in intervals) / 1e6
    figures = f"{len(intervals)} grants in {attempts} attempts, {held_ms:.0f} ms held in total; per worker {per_worker}"
    print(f"\nlock contention: {figures}")

    bad = overlaps(intervals)
    assert not bad, f"{len(bad)} overlapping holds, e.g. {bad[:5]}; {figures}"
    assert not failed_releases, f"releases of still-valid locks failed: {failed_releases}; {figures}"
    assert len(intervals) > 200, figures
    assert all(count >= 1 for count in per_worker.values()), figures
    assert not os.path.exists(root / "locks" / f"{lock_key(resource)}.lock"), "last holder's release left the file"


# --------------------------------------------------------------------------- 2
@pytest.mark.slow
@pytest.mark.parametrize(("writes", "durable"), [(10_000, False), (500, True)], ids=["10000-fast", "500-durable"])
def test_readers_never_see_a_torn_or_missing_instance_file(root, writes, durable):
    readers = 3
    store = DirectoryStore(root)
    store.write(INSTANCES, INSTANCE_KEY, ph.instance_info(INSTANCE_KEY, 0).to_json())
    done = CTX.Event()
    with fleet() as f:
        for n in range(readers):
            f.spawn(ph.instance_reader, str(root), f"r{n}", INSTANCE_KEY, f.start, done)
        f.spawn(ph.instance_writer, str(root), INSTANCE_KEY, writes, durable, f.start, done)
        f.collect(ph.READY, readers + 1, START_TIMEOUT_S)
        f.start.set()
        results = f.collect(ph.RESULT, readers + 1, 120)
        f.join()

    writer = results.pop("writer")
    reads = sum(r["reads"] for r in results.values())
    figures = (
        f"{writes} writes (durable={durable}) in {writer['seconds']:.2f}s; {reads} reads "
        + ", ".join(
            f"{name}: {r['raw_reads']} raw + {r['store_reads']} store, {r['distinct_values']} distinct values"
            for name, r in sorted(results.items())
        )
    )
    print(f"\natomic rewrite: {figures}")

    for name, r in sorted(results.items()):
        assert not r["torn"], f"{name}: {len(r['torn'])} torn reads, e.g. {r['torn'][:3]}; {figures}"
        assert r["missing"] == 0, f"{name}: the file was missing {r['missing']} times; {figures}"
        assert not r["backwards"], f"{name}: saw versions go back {r['backwards']}; {figures}"
        assert r["last_seen"] == writes, f"{name}: last value seen {r['last_seen']}, want {writes}; {figures}"
        # The reads really overlapped the writes: many versions were seen.
        assert r["distinct_values"] >= min(50, writes // 10), figures
    final = read_record(store, INSTANCES, INSTANCE_KEY, InstanceInfo)
    assert final is not None and final[0].pending_task_count == writes
    leftovers = [name for name in os.listdir(root / "instances") if name != f"{INSTANCE_KEY}.lock"]
    assert leftovers == [], f"temporary files left behind: {leftovers[:5]}"


# --------------------------------------------------------------------------- 3
@pytest.mark.slow
@pytest.mark.parametrize("owner_order", ["reverse", "queue-order"])
def test_thieves_and_owner_execute_every_stolen_entry_exactly_once(root, owner_order):
    thieves, entries, seconds = 8, 1000, 40.0
    with fleet() as f:
        f.spawn(ph.steal_victim, str(root), entries, 0.003, owner_order == "reverse", f.start)
        for n in range(thieves):
            f.spawn(ph.steal_thief, str(root), f"t{n}", entries, seconds, f.start)
        # The victim must have broadcast before any thief looks: thieves report
        # ready only after registering, the victim only after broadcasting.
        ready = f.collect(ph.READY, thieves + 1, START_TIMEOUT_S)
        victim_id = ready["victim"]
        began = time.monotonic()
        f.start.set()
        results = f.collect(ph.RESULT, thieves + 1, seconds + 30)
        elapsed = time.monotonic() - began
        f.join()

    victim = results.pop("victim")
    all_ids = {f"task-{i:04d}" for i in range(entries)}
    executed: Counter[str] = Counter(victim["claimed"])
    for r in results.values():
        assert all(owner == victim_id for owner, _ in r["stolen"]), r["stolen"][:3]
        executed.update(entry_id for _, entry_id in r["stolen"])
    per_thief = {name: len(r["stolen"]) for name, r in sorted(results.items())}
    calls = sum(r["calls"] for r in results.values())
    figures = (
        f"{entries} entries in {elapsed:.2f}s: owner ran {len(victim['claimed'])} (lost {victim['lost']} to thieves), "
        f"thieves {per_thief} "
        f"({sum(per_thief.values())} steals in {calls} safe_steal_work calls)"
    )
    print(f"\nstealing: {figures}")

    twice = sorted(entry_id for entry_id, n in executed.items() if n > 1)
    assert twice == [], f"{len(twice)} entries executed more than once, e.g. {twice[:10]}; {figures}"
    missing = sorted(all_ids - set(executed))
    assert missing == [], f"{len(missing)} entries never executed, e.g. {missing[:10]}; {figures}"
    assert set(executed) == all_ids, figures
    assert not any(r["timed_out"] for r in results.values()), f"a thief ran out of time; {figures}"
    assert all(n >= 1 for n in per_thief.values()), f"a thief stole nothing; {figures}"
    assert victim["claimed"], f"the owner claimed none of its own entries; {figures}"

    # The claim files agree with what each executor believes it got.
    store = DirectoryStore(root)
    claimed_by = {}
    for key in store.keys(CLAIMS):
        claim, _ = read_record(store, CLAIMS, key, StealClaim)
        assert claim.owner_instance_id == victim_id
        claimed_by[claim.entry_id] = claim.claimed_by
    believed = {entry_id: victim_id for entry_id in victim["claimed"]}
    for r in results.values():
        believed.update({entry_id: r["instance_id"] for _, entry_id in r["stolen"]})
    assert claimed_by == believed
    # Persisted statistics count every success (and the attempts that failed under contention).
    for name, r in results.items():
        stats, _ = read_record(store, STEALING_STATS, r["instance_id"], StealingStats)
        assert stats.successful_steals == len(r["stolen"]) == r["stats"]["successful_steals"], name
        assert stats.total_attempts == r["stats"]["total_attempts"] <= r["calls"], name


# --------------------------------------------------------------------------- 4
def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.slow
def test_lock_of_a_sigkilled_holder_is_held_until_expiry_and_free_right_after(root):
    resource, ttl_ms = "steal:sess-doomed", 2000
    with fleet() as f:
        holder = f.spawn(ph.doomed_holder, str(root), resource, ttl_ms)
        taken = f.collect(ph.READY, 1, START_TIMEOUT_S)["doomed"]
        holder.kill()
        holder.join(5)
        killed_at = now_ms()
    assert holder.exitcode == -signal.SIGKILL
    assert taken is not None, "the doomed holder could not take a free lock"
    dead_lock = DistributedLock.model_validate(taken)
    expires_at = dead_lock.expires_at

    on_disk = read_record(DirectoryStore(root), LOCKS, lock_key(resource), DistributedLock)
    assert on_disk is not None and on_disk[0] == dead_lock, "the lock file does not survive its holder"

    survivor = LockService(DirectoryStore(root), holder_id="survivor")
    early_attempts = 0
    early_grants = []
    while now_ms() < expires_at - 20:
        got = survivor.try_acquire(resource, ttl_ms=10_000)
        answered = now_ms()
        if answered < expires_at:
            early_attempts += 1
            if got is not None:
                early_grants.append((got.acquired_at, answered))
        elif got is not None:
            break  # took a few ms too long and the lock expired meanwhile: fine, and done
        time.sleep(0.005)
    figures = (
        f"holder killed {expires_at - killed_at} ms before its lock expired; "
        f"{early_attempts} attempts to take it before expiry"
    )
    assert not early_grants, f"acquired before expiry (acquiredAt, answered): {early_grants}; {figures}"
    assert early_attempts >= 10, figures

    got = None
    while got is None and now_ms() < expires_at + 1000:
        got = survivor.try_acquire(resource, ttl_ms=10_000)
        if got is None:
            time.sleep(0.002)
    assert got is not None, f"still not acquired 1 s after expiry; {figures}"
    print(f"\nkilled holder: {figures}; acquired {got.acquired_at - expires_at} ms after expiry")
    assert got.acquired_at >= expires_at
    current = read_record(DirectoryStore(root), LOCKS, lock_key(resource), DistributedLock)
    assert current is not None and current[0] == got and current[0].holder == "survivor"


# --------------------------------------------------------------------------- 5
@pytest.mark.slow
def test_expired_lock_takeover_never_gives_two_processes_the_lock(root):
    workers, seconds, ttl_ms, resource = 4, 3.0, 25, "steal:sess-expiring"
    with fleet() as f:
        for n in range(workers):
            f.spawn(ph.expiring_contender, str(root), f"x{n}", resource, ttl_ms, seconds, f.start)
        f.collect(ph.READY, workers, START_TIMEOUT_S)
        f.start.set()
        results = f.collect(ph.RESULT, workers, seconds + 30)
        f.join()

    grants = sorted((g[0], g[1], g[2], g[3], g[4], name) for name, r in results.items() for g in r["grants"])
    valid = [(b, e, f"{name}:{lock_id}") for b, e, lock_id, in_lease, _, name in grants if in_lease]
    # A grant that follows an abandoned (never released) lock was a takeover of an expired lock.
    takeovers = sum(1 for prev, _ in zip(grants, grants[1:]) if not prev[4])
    lock_ids = [g[2] for g in grants]
    per_worker = {name: len(r["grants"]) for name, r in sorted(results.items())}
    figures = (
        f"{len(grants)} grants ({len(valid)} held within their lease, {takeovers} takeovers of expired locks), "
        f"per worker {per_worker}, {sum(r['attempts'] for r in results.values())} attempts, "
        f"{sum(r['failed_releases'] for r in results.values())} releases found the lock taken over"
    )
    print(f"\nexpired takeover: {figures}")

    bad = overlaps(valid)
    assert not bad, f"{len(bad)} double holds, e.g. {bad[:5]}; {figures}"
    assert len(set(lock_ids)) == len(lock_ids), f"a lockId was issued twice; {figures}"
    assert takeovers >= 20, figures
    assert len(valid) >= 50, figures
    assert all(n >= 1 for n in per_worker.values()), figures


# --------------------------------------------------------------------------- 6
@pytest.mark.slow
@pytest.mark.parametrize(
    ("space_name", "count"), [("RATE_LIMITS", 5000), ("PARALLELISM", 1000)], ids=["in-place", "replace"]
)
def test_concurrent_updates_are_never_lost_and_never_seen_torn(root, space_name, count):
    updaters, key = 4, "anthropic"
    store = DirectoryStore(root)
    store.update(ph._space(space_name), key, lambda _: json.dumps({"n": 0, "by": {}}).encode())
    done = CTX.Event()
    with fleet() as f:
        f.spawn(ph.counter_reader, str(root), "reader", space_name, key, f.start, done)
        for n in range(updaters):
            f.spawn(ph.counter_updater, str(root), f"u{n}", space_name, key, count, f.start)
        f.collect(ph.READY, updaters + 1, START_TIMEOUT_S)
        f.start.set()
        results = f.collect(ph.RESULT, updaters, 60)
        done.set()
        reader = f.collect(ph.RESULT, 1, 30)["reader"]
        f.join()

    total = updaters * count
    produced = [n for r in results.values() for n in r["produced"]]
    seconds = max(r["seconds"] for r in results.values())
    figures = (
        f"{total} updates of {space_name} in {seconds:.2f}s "
        f"({seconds / count * 1e6:.0f} us per update as each updater saw it); "
        f"reader: {reader['reads']} reads, {reader['distinct']} distinct values, {reader['torn_count']} torn, "
        f"{reader['missing']} missing"
    )
    print(f"\nread-modify-write: {figures}")

    # Each update saw the one before it: the counters produced are exactly 1..total.
    duplicates = [n for n, c in Counter(produced).items() if c > 1]
    assert not duplicates, f"{len(duplicates)} counters produced twice (lost updates), e.g. {duplicates[:5]}; {figures}"
    assert sorted(produced) == list(range(1, total + 1)), figures
    for name, r in results.items():
        assert r["produced"] == sorted(r["produced"]), f"{name} saw the counter go back; {figures}"
    final = json.loads(store.read(ph._space(space_name), key).data)
    assert final["n"] == total and final["by"] == {f"u{n}": count for n in range(updaters)}, final
    assert reader["torn_count"] == 0, f"torn reads {reader['torn']}; {figures}"
    assert reader["missing"] == 0, f"the file was missing; {figures}"
    assert not reader["backwards"], f"reader saw the counter go back {reader['backwards']}; {figures}"
    assert reader["last"] == total, figures
    assert reader["distinct"] >= 5, f"the reader hardly overlapped the updates; {figures}"


# --------------------------------------------------------------------------- 7
@pytest.mark.slow
@pytest.mark.parametrize("segment_bytes", [None, 64 * 1024], ids=["one-segment", "rotating"])
def test_event_log_appends_from_many_processes_reach_a_follower_exactly_once_in_order(root, segment_bytes):
    appenders, count = 3, 3000
    done = CTX.Event()
    with fleet() as f:
        f.spawn(ph.event_follower, str(root), "follower", f.start, done)
        for n in range(appenders):
            f.spawn(ph.event_appender, str(root), f"a{n}", count, f.start, segment_bytes)
        f.collect(ph.READY, appenders + 1, START_TIMEOUT_S)
        f.start.set()
        f.collect(ph.RESULT, appenders, 60)
        done.set()
        follower = f.collect(ph.RESULT, 1, 30)["follower"]
        f.join()

    from core.store.directory import EVENTS_DIR

    segments = sorted((root / EVENTS_DIR).iterdir())
    seen = follower["seen"]
    counts = Counter(seen)
    figures = (
        f"{appenders}x{count} events in {len(segments)} segment(s) kept, "
        f"follower saw {len(seen)} in {follower['calls']} read_events calls"
    )
    print(f"\nevent log: {figures}")
    assert follower["torn_count"] == 0, f"torn events {follower['torn']}; {figures}"
    assert [e for e, c in counts.items() if c > 1] == [], f"events delivered twice; {figures}"
    for n in range(appenders):
        mine = [i for w, i in seen if w == f"a{n}"]
        assert mine == sorted(mine), f"a{n}'s events out of order; {figures}"
    if segment_bytes is not None:
        # A follower that falls behind by more than the kept segments resumes at
        # the oldest one: it may miss events, never see one twice or torn.
        assert len(segments) > 1, figures
        return
    assert len(segments) == 1, figures
    assert set(counts) == {(f"a{n}", i) for n in range(appenders) for i in range(count)}, figures
    lines = segments[0].read_bytes().split(b"\n")
    # Blank lines are no events: an append that saw another one mid-copy starts with a newline.
    assert lines[-1] == b"" and len([line for line in lines if line]) == appenders * count
