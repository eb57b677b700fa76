"""Alerts: the rules, the pure evaluation over successive snapshots, and ``pi-dash watch``
with real instance processes (one that stops heartbeating; a 429 storm)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.alerts import CLEARED, FIRING, AlertRules, AlertState, evaluate, parse_rules
from core.clock import ManualClock, utc_from_ms
from core.control import FleetControl
from core.coordinator import Coordinator
from core.locks import LockService
from core.models import BroadcastQueueState, InstanceInfo
from core.snapshot import SnapshotBuilder
from core.store import INSTANCES, QUEUES, DirectoryStore

NOW = 1_900_000_000_000


def _instance(instance_id: str, beat_ms: int) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        pid=os.getpid(),
        session_id="s",
        started_at=utc_from_ms(NOW - 100_000),
        last_heartbeat=utc_from_ms(beat_ms),
        cwd="/w",
    )


def test_rules_from_config_keep_defaults_for_bad_keys():
    rules, problems = parse_rules(
        {"dashboard": {"alerts": {"queueDepthOver": 5, "backoffLongerThanSeconds": "10", "problemKinds": ["corrupt"], "nope": 1}}},
        "cfg.json",
    )
    assert rules.queue_depth_over == 5 and rules.backoff_longer_than_seconds == 30 and rules.problem_kinds == ("corrupt",)
    assert [p.split(":")[1].strip() for p in problems] == ["dashboard.alerts.backoffLongerThanSeconds", "dashboard.alerts.nope"]
    assert parse_rules({}, "x") == (AlertRules(), ())


def test_each_alert_fires_once_and_clears_once(store, root):
    clock = ManualClock(NOW)
    builder = SnapshotBuilder(store, clock=clock, check_pids=False)
    rules = AlertRules(queue_depth_over=3, queue_depth_for_seconds=10, clear_after_seconds=5, problem_kinds=("corrupt",))
    state = AlertState()
    log: list[tuple[str, str]] = []

    def step(advance_ms: int = 0) -> None:
        nonlocal state
        clock.advance(advance_ms)
        state, sent = evaluate(rules, builder.build(), state)
        log.extend((a.state, a.key) for a in sent)

    store.write(INSTANCES, "a", _instance("a", NOW).to_json())
    queue = BroadcastQueueState(instance_id="a", timestamp=utc_from_ms(NOW), pending_task_count=9)
    store.write(QUEUES, "a", queue.to_json())
    step()
    assert log == []  # deep, but not for 10 s yet
    store.write(INSTANCES, "a", _instance("a", NOW + 9_000).to_json())
    store.write(QUEUES, "a", queue.model_copy(update={"timestamp": utc_from_ms(NOW + 9_000)}).to_json())
    step(9_000)
    step(1_000)
    step(1_000)
    assert log == [(FIRING, "queue:a")]
    # The instance goes quiet (stale after two 15 s intervals); its queue state with it.
    step(30_000)
    assert log[1:] == [(FIRING, "instance:a")] and (CLEARED, "queue:a") not in log  # absent, but not 5 s yet
    step(5_000)
    step(60_000)
    assert log[2:] == [(CLEARED, "queue:a")]  # dead now: still the same alert, not a new one
    store.write(INSTANCES, "a", _instance("a", NOW + 106_000).to_json())
    step(1_000)
    step(4_000)
    assert log[3:] == []
    step(1_000)
    assert log[3:] == [(CLEARED, "instance:a")]

    # A lock past its TTL, an unanswered drain, a corrupt file.
    LockService(store, "holder").try_acquire("deploy", ttl_ms=1_000)
    FleetControl(store, "op", clock).request_drain("a")
    (root / "instances" / "torn.lock").write_text("{")
    step(2_000)
    assert sorted(log[4:]) == [(FIRING, "lock:deploy"), (FIRING, "problem:corrupt:instances/torn.lock")]
    step(31_000)  # two heartbeat intervals: the drain is not acknowledged (the heartbeat of "a" is old again too)
    # ... and "a" going quiet again is a new episode, after the first one cleared.
    assert sorted(log[6:]) == [(FIRING, "drain:a"), (FIRING, "instance:a")]


# ------------------------------------------------------------- real processes
CHILD_HEARTBEATS = """
import sys, time
from core.coordinator import Coordinator
c = Coordinator(root=sys.argv[1])
c.register(cwd="/w")
print(c.instance_id, flush=True)
time.sleep(600)
"""

CHILD_STORM = """
import sys, time
from core.coordinator import Coordinator
c = Coordinator(root=sys.argv[1])
c.register(cwd="/w", heartbeat=False)
print("ready", flush=True)
sys.stdin.readline()
end, n = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    with c.llm_slot("openai", "gpt-4o", timeout=30) as slot:
        slot.report_429(retry_after=0.3)
        n += 1
print(n, flush=True)
c.unregister()
"""


def _watch(root: Path, tmp_path: Path, rules: dict) -> tuple[subprocess.Popen[str], Path, Path]:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"dashboard": {"alerts": rules}}))
    piped, jsonl = tmp_path / "piped.jsonl", tmp_path / "alerts.jsonl"
    watcher = subprocess.Popen(
        [sys.executable, "-m", "pi_dashboard", "watch", "--root", str(root), "--config", str(config),
         "--on-alert", f"cat >> {piped}", "--alert-log", str(jsonl)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert watcher.stdout.readline().startswith("watching ")
    return watcher, piped, jsonl


def _alerts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def _stop(watcher: subprocess.Popen[str]) -> None:
    watcher.send_signal(signal.SIGTERM)
    assert watcher.wait(timeout=30) == 0, watcher.stderr.read()
    assert "Traceback" not in watcher.stderr.read()


@pytest.mark.slow
def test_an_instance_that_stops_heartbeating_fires_stale_once_and_cleared_once(root, tmp_path, monkeypatch):
    (root / "coordinator.json").write_text('{"heartbeatIntervalMs": 200, "heartbeatTimeoutMs": 60000}')
    child = subprocess.Popen([sys.executable, "-c", CHILD_HEARTBEATS, str(root)], stdout=subprocess.PIPE, text=True)
    watcher = None
    try:
        instance_id = child.stdout.readline().strip()
        key = f"instance:{instance_id}"
        watcher, piped, jsonl = _watch(root, tmp_path, {"clearAfterSeconds": 1})
        time.sleep(1.0)
        assert _alerts(jsonl) == []  # alive: nothing to say
        child.send_signal(signal.SIGSTOP)
        _wait_for(lambda: any(a["key"] == key for a in _alerts(jsonl)), 30, "the stale alert")
        time.sleep(2.0)  # still stale: no second alert
        child.send_signal(signal.SIGCONT)
        _wait_for(lambda: any(a["state"] == CLEARED for a in _alerts(jsonl)), 30, "the cleared alert")
        time.sleep(1.5)
        _stop(watcher)
        for sink in (jsonl, piped):
            seen = [(a["alert"], a["state"], a["key"]) for a in _alerts(sink)]
            assert seen == [("instance-stale", FIRING, key), ("instance-stale", CLEARED, key)], sink
        assert _alerts(jsonl)[0]["figures"]["status"] == "stale"
    finally:
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait()
        if watcher is not None and watcher.poll() is None:
            watcher.kill()


@pytest.mark.slow
def test_a_429_storm_fires_one_backoff_alert(root, tmp_path):
    config = tmp_path / "limits.json"
    config.write_text('{"crossInstance": {"providers": {"openai": {"requestsPerMinute": 6000000, "burst": 100000}}}}')
    env = {**os.environ, "PI_CONFIG": str(config)}
    watcher, piped, jsonl = _watch(root, tmp_path, {"backoffLongerThanSeconds": 0.05, "clearAfterSeconds": 2})
    storm = [
        subprocess.Popen([sys.executable, "-c", CHILD_STORM, str(root), "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    try:
        for proc in storm:
            assert proc.stdout.readline().strip() == "ready"
        for proc in storm:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reported = sum(int(proc.stdout.readline()) for proc in storm)
        for proc in storm:
            assert proc.wait(timeout=60) == 0
        _wait_for(lambda: any(a["state"] == CLEARED for a in _alerts(jsonl)), 30, "the backoff alert clearing")
        time.sleep(0.5)
        _stop(watcher)
    finally:
        for proc in storm:
            proc.kill()
            proc.wait()
        if watcher.poll() is None:
            watcher.kill()
    assert reported >= 10, f"only {reported} 429s: not a storm"
    for sink in (jsonl, piped):
        seen = [(a["alert"], a["state"]) for a in _alerts(sink)]
        assert seen == [("backoff", FIRING), ("backoff", CLEARED)], (sink, seen, reported)
    print(f"\n{reported} 429s from 3 processes: one backoff alert, cleared once")


@pytest.mark.slow
def test_watch_fires_as_soon_as_the_fleet_changes(root, tmp_path):
    """watch follows the store's changes as the dashboard does, not a timer: each backoff alert
    reaches the JSONL file within half a second of the 429 (polling once a second, one in eight
    runs would pass by luck)."""
    watcher, _, jsonl = _watch(root, tmp_path, {"backoffLongerThanSeconds": 5, "clearAfterSeconds": 60})
    coordinator = Coordinator(root=root)
    coordinator.register(cwd="/w", heartbeat=False)
    latencies = []
    try:
        for n, model in enumerate(("gpt-4o", "gpt-4.1", "o3")):
            time.sleep(0.7)  # lands anywhere in what was a 1 s polling interval
            started = time.monotonic()
            with coordinator.llm_slot("openai", model, timeout=5) as slot:
                slot.report_429(retry_after=30)
            _wait_for(lambda: len(_alerts(jsonl)) > n, 10, f"the backoff alert of {model}")
            latencies.append(time.monotonic() - started)
        _stop(watcher)
    finally:
        coordinator.unregister()
        if watcher.poll() is None:
            watcher.kill()
    assert [a["key"] for a in _alerts(jsonl)] == [f"backoff:openai:{m}" for m in ("gpt-4o", "gpt-4.1", "o3")]
    print(f"\nalert latency after a 429: {', '.join(f'{s * 1000:.0f} ms' for s in latencies)}")
    assert max(latencies) < 0.5, latencies
