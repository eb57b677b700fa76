"""The built-in demo fleet: real worker processes that show every moving part of core."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from core.config import load_config
from core.control import FleetControl
from core.provider_config import load_settings
from core.snapshot import FleetSnapshot, SnapshotBuilder, Status
from core.store import INSTANCES, DirectoryStore
from pi_dashboard import demo_worker
from pi_dashboard.demo import CONFIG_NAME, LOG_DIR, DemoFleet
from pi_dashboard.demo_worker import STORM_LENGTH_S, storm_at

LIVE = (Status.ALIVE, Status.STALE, Status.DRAINING)


def _summary(snapshot: FleetSnapshot) -> str:
    statuses = {i.instance_id: i.status.value for i in snapshot.instances}
    return (
        f"statuses={statuses} pending={snapshot.figures.total_pending} "
        f"queues={[(q.instance_id, len(q.state.claimable_entries or ())) for q in snapshot.queues]} "
        f"parallelism={len(snapshot.parallelism)} rate_limits={len(snapshot.rate_limits)} "
        f"events={len(snapshot.events)} steals={snapshot.stealing.successes}/{snapshot.stealing.attempts}"
    )


def wait_for(
    build: Callable[[], FleetSnapshot], predicate: Callable[[FleetSnapshot], object], timeout: float, what: str, interval: float = 0.1
) -> FleetSnapshot:
    deadline = time.monotonic() + timeout
    while True:
        snapshot = build()
        if predicate(snapshot):
            return snapshot
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout:g} s: {what}; last snapshot: {_summary(snapshot)}")
        time.sleep(interval)


def named(snapshot: FleetSnapshot, name: str) -> list:
    return [i for i in snapshot.instances if i.info is not None and i.info.instance_name == name]


def test_worker_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pi_dashboard.demo_worker", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--root" in done.stdout and "--name" in done.stdout and "--seed" in done.stdout


def test_storms_are_a_function_of_the_clock() -> None:
    epoch = 1_800_000_000.0
    starts: list[tuple[float, str]] = []
    previous = None
    t = epoch
    while t < epoch + 400:
        storm = storm_at(t, epoch)
        assert storm == storm_at(t, epoch)  # every process computes the same storm
        if storm is not None and storm != previous:
            starts.append((storm.start, storm.provider))
            assert storm.end - storm.start == STORM_LENGTH_S
        previous = storm
        t += 0.1
    assert 5 <= starts[0][0] - epoch <= 10  # something to see within ten seconds
    gaps = [b[0] - a[0] for a, b in zip(starts, starts[1:])]
    assert gaps and all(20 <= gap <= 30 for gap in gaps)
    assert {provider for _, provider in starts} == {"openai", "anthropic"}
    assert all(a[1] != b[1] for a, b in zip(starts, starts[1:]))  # the providers take turns
    assert storm_at(epoch + 1, epoch) is None


def test_layout(tmp_path: Path) -> None:
    fleet = DemoFleet(tmp_path / "demo", workers=3, seed=1)
    fleet.prepare()
    root = fleet.root
    assert json.loads((root / "coordinator.json").read_text()) == {
        "totalMaxLlm": 12,
        "heartbeatIntervalMs": 1000,
        "heartbeatTimeoutMs": 5000,
    }
    config, problems = load_config(DirectoryStore(root), None, {})
    assert problems == [] and config.heartbeat_interval_ms == 1000 and config.heartbeat_timeout_ms == 5000
    settings = load_settings(root / CONFIG_NAME)
    assert settings.problems == ()
    assert (settings.limit("openai").requests_per_minute, settings.limit("openai").burst) == (600, 20)
    assert (settings.limit("anthropic").requests_per_minute, settings.limit("anthropic").burst) == (120, 10)
    assert settings.adaptive.enabled
    policy = settings.policy(fleet.reserved_name)
    assert (policy.priority, policy.reserved_capacity) == (9, 60)
    assert (root / LOG_DIR).is_dir()
    assert fleet.names == ["atlas", "birch", "cedar"]


def test_chaos_never_kills_the_reserved_worker(tmp_path: Path) -> None:
    fleet = DemoFleet(tmp_path / "demo", workers=3, seed=5)
    fleet.prepare()
    sleepers = []
    try:
        for worker in fleet._workers:  # stand-ins: the choice is what is tested here
            worker.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            sleepers.append(worker.proc)
        by_pid = {proc.pid: proc for proc in sleepers}
        killed = []
        for _ in range(3):
            found = fleet.kill_random_worker()
            killed.append(found)
            if found is not None:
                by_pid[found[1]].wait(10)
        assert {k[0] for k in killed if k is not None} == set(fleet.names) - {fleet.reserved_name}
        assert killed[2] is None
        assert fleet.worker_pids() == {fleet.reserved_name: sleepers[0].pid}
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        seconds[pid] = times.user + times.system
    return seconds


@pytest.mark.slow
def test_demo_fleet_end_to_end(tmp_path: Path) -> None:
    began = time.monotonic()
    root = tmp_path / "demo"
    fleet = DemoFleet(root, workers=4, seed=11, chaos=False)  # chaos off: this test kills on its own
    store = DirectoryStore(root)
    builder = SnapshotBuilder(store)
    seen_pids: set[int] = set()
    try:
        fleet.start()
        seen_pids.update(fleet.worker_pids().values())
        assert len(seen_pids) == 4
        fleet.start()  # idempotent
        assert len(fleet.worker_pids()) == 4

        # Everything moves within ten seconds.
        snapshot = wait_for(
            builder.build,
            lambda s: sum(1 for i in s.instances if i.status is Status.ALIVE) >= 4
            and s.figures.total_pending > 0
            and any(q.state.claimable_entries for q in s.queues)
            and s.parallelism
            and s.rate_limits
            and s.events,
            10,
            "four live instances with pending work, stealable entries, parallelism, rate limits and events",
        )
        print(f"\nall moving after {time.monotonic() - began:.1f} s")
        names = {i.info.instance_name for i in snapshot.instances if i.info is not None}
        assert names == set(fleet.names)
        assert all(i.info.cwd.startswith("/home/demo/") for i in snapshot.instances if i.info is not None)

        # Somebody steals.
        wait_for(builder.build, lambda s: s.stealing.successes > 0, 20, "a successful steal")
        print(f"first steal after {time.monotonic() - began:.1f} s")

        # CPU: the whole fleet over five seconds, once past start-up (imports, first calls).
        time.sleep(max(0.0, 3.0 - (time.monotonic() - began)))
        pids = list(fleet.worker_pids().values())
        before = _cpu_seconds(pids)
        measured_from = time.monotonic()
        time.sleep(5)
        after = _cpu_seconds(pids)
        elapsed = time.monotonic() - measured_from
        used = sum(after[pid] - before[pid] for pid in after if pid in before)
        share = 100 * used / elapsed
        print(f"demo fleet of {len(pids)} workers: {used:.3f} CPU s in {elapsed:.1f} s = {share:.1f} % of one core")
        assert share < 25

        # Drain one instance: draining, then offline, and never restarted.
        snapshot = builder.build()
        drained_name = "birch"
        (target,) = [i for i in named(snapshot, drained_name) if i.status is Status.ALIVE]
        result = FleetControl(store, "test").request_drain(target.instance_id)
        assert result.done, result.message
        wait_for(
            builder.build,
            lambda s: (v := s.instance(target.instance_id)) is not None and v.status is Status.DRAINING,
            10,
            f"{target.instance_id} draining",
        )
        wait_for(
            builder.build,
            lambda s: (v := s.instance(target.instance_id)) is not None and v.status is Status.OFFLINE,
            15,  # its in-flight calls, then five seconds of draining
            f"{target.instance_id} offline",
        )
        print(f"drained after {time.monotonic() - began:.1f} s")

        # Kill -9 another: its dead pid is noticed at once, and it comes back.
        victim_name = "cedar"
        victim_pid = fleet.worker_pids()[victim_name]
        snapshot = builder.build()
        (victim,) = [i for i in named(snapshot, victim_name) if i.info is not None and i.info.pid == victim_pid]
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        seen_dead = removed = False
        # Looked for for 4 s only: its heartbeat (1 s old at most) stays younger than the 5 s
        # timeout, so whatever is noticed here is noticed by the pid check.
        while time.monotonic() - killed_at < 4 and not (seen_dead or removed):
            fresh = SnapshotBuilder(store).build()  # no liveness cache: ask the OS now
            view = fresh.instance(victim.instance_id)
            if view is None:
                removed = True  # a peer removed it for its dead pid (its heartbeat is younger than the timeout)
            elif view.status is Status.DEAD:
                seen_dead = True
                assert any(p.kind == "dead-pid" for p in fresh.problems)
            time.sleep(0.05)
        assert seen_dead or removed, "the killed instance was neither shown dead nor removed"
        print(f"kill -9 noticed ({'shown dead' if seen_dead else 'removed by a peer'}) after {time.monotonic() - killed_at:.2f} s")
        wait_for(
            builder.build,
            lambda s: not any(i.instance_id == victim.instance_id and i.status in LIVE for i in s.instances)
            and any(i.instance_id != victim.instance_id and i.status is Status.ALIVE for i in named(s, victim_name)),
            12,
            f"{victim_name} restarted as a new instance",
        )
        restarted_pid = fleet.worker_pids()[victim_name]
        assert restarted_pid != victim_pid
        seen_pids.update(fleet.worker_pids().values())
        print(f"restarted after {time.monotonic() - killed_at:.1f} s")

        # Well past the restart delay, the drained worker is still offline.
        assert drained_name not in fleet.worker_pids()
        snapshot = builder.build()
        assert not [i for i in named(snapshot, drained_name) if i.status in LIVE]
        assert snapshot.instance(target.instance_id).status is Status.OFFLINE
        kinds = {e.kind for e in snapshot.events}
        assert {"steal", "drain", "demo"} <= kinds
    finally:
        stop_began = time.monotonic()
        fleet.stop()
        stop_took = time.monotonic() - stop_began
    fleet.stop()  # idempotent
    print(f"stopped in {stop_took:.2f} s; whole test {time.monotonic() - began:.1f} s")
    assert stop_took < 5
    assert fleet.worker_pids() == {}
    for pid in seen_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    left = [i for i in SnapshotBuilder(store).build().instances if i.status in LIVE]
    assert left == [], "stop() left live instances behind"
    assert not store.keys(INSTANCES), "the workers did not unregister on SIGTERM"
    logs = list((root / LOG_DIR).glob("*.log"))
    assert len(logs) == 4
    assert not any("Traceback" in log.read_text() for log in logs)


def test_profiles_cover_the_cycle() -> None:
    from pi_dashboard.demo import PROFILE_CYCLE

    assert set(PROFILE_CYCLE) <= set(demo_worker.PROFILES)
    assert {"busy", "light"} <= set(PROFILE_CYCLE[:4])  # four workers already steal from each other
