"""FleetSnapshot: statuses, figures, problems, and incremental rebuilds."""

from __future__ import annotations

import os

from core.clock import ManualClock, utc_from_ms
from core.coordinator import Coordinator
from core.models import InstanceInfo, StealClaim
from core.snapshot import SnapshotBuilder, Status
from core.store import INSTANCES, STEALING_STATS, DirectoryStore
from tests.helpers import stealable_entries


def _instance(instance_id: str, heartbeat_ms: int, pending: int = 0, pid: int | None = None) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        pid=os.getpid() if pid is None else pid,
        session_id="s",
        started_at=utc_from_ms(heartbeat_ms - 1),
        last_heartbeat=utc_from_ms(heartbeat_ms),
        cwd="/w",
        pending_task_count=pending,
    )


def test_statuses_follow_heartbeat_age(store, root):
    now = 1_900_000_000_000
    clock = ManualClock(now)
    for name, age in [("fresh", 1_000), ("late", 31_000), ("gone", 61_000)]:
        # "gone" runs on another host: only its heartbeat and its file's age can tell
        info = _instance(name, now - age).model_copy(update={"hostname": "another-host" if name == "gone" else None})
        store.write(INSTANCES, name, info.to_json())
    os.utime(root / "instances" / "gone.lock", (now / 1000 - 100, now / 1000 - 100))
    snapshot = SnapshotBuilder(store, clock=clock).build()
    status = {v.key: v.status for v in snapshot.instances}
    assert status == {"fresh": Status.ALIVE, "late": Status.STALE, "gone": Status.DEAD}
    assert snapshot.figures.active_count == 2  # pi counts stale ones too
    assert snapshot.figures.parallel_limit == 3
    assert snapshot.problems == ()


def test_dead_pid_is_dead_even_with_a_fresh_heartbeat(store, clock):
    info = _instance("ghost", clock.now_ms(), pid=2**22 + 12345)
    store.write(INSTANCES, "ghost", info.to_json())
    snapshot = SnapshotBuilder(store, clock=clock).build()
    view = snapshot.instance("ghost")
    assert view.status is Status.DEAD and view.counted
    assert [p.kind for p in snapshot.problems] == ["dead-pid"]


def test_future_heartbeat_is_reported_as_clock_skew(store, clock):
    store.write(INSTANCES, "ahead", _instance("ahead", clock.now_ms() + 60_000).to_json())
    snapshot = SnapshotBuilder(store, clock=clock, check_pids=False).build()
    assert [p.kind for p in snapshot.problems] == ["clock-skew"]
    assert snapshot.instance("ahead").status is Status.ALIVE


def test_corrupt_and_unknown_version_files_are_problems_not_crashes(store, root, clock):
    store.write(INSTANCES, "ok", _instance("ok", clock.now_ms()).to_json())
    (root / "instances" / "torn.lock").write_bytes(b'{"instanceId": "torn", "pid": 1')
    future = StealClaim(owner_instance_id="ok", entry_id="e", claimed_by="x", claimed_at=clock.now_ms(), format_version=99)
    store.write(STEALING_STATS, "ok", b"[]")
    from core.store import CLAIMS

    store.write(CLAIMS, "ok/e", future.to_json())
    snapshot = SnapshotBuilder(store, clock=clock, check_pids=False).build()
    kinds = sorted((p.kind, p.where) for p in snapshot.problems)
    assert kinds == [
        ("corrupt", "instances/torn.lock"),
        ("corrupt", "pi-dash/stealing-stats/ok.json"),
        ("unknown-version", "pi-dash/claims/ok/e.json"),
    ]
    assert snapshot.instance("torn").status is Status.CORRUPT
    assert snapshot.figures.active_count == 1


def test_rebuild_sees_changes_and_hints_limit_the_work(store, clock):
    builder = SnapshotBuilder(store, clock=clock, check_pids=False)
    store.write(INSTANCES, "a", _instance("a", clock.now_ms(), pending=0).to_json())
    assert builder.build().instance("a").pending == 0
    store.write(INSTANCES, "a", _instance("a", clock.now_ms(), pending=4).to_json())
    assert builder.build({}).instance("a").pending == 0  # not told: not looked at
    assert builder.build({INSTANCES: ["a"]}).instance("a").pending == 4
    store.write(INSTANCES, "b", _instance("b", clock.now_ms()).to_json())
    assert len(builder.build().instances) == 2
    store.delete(INSTANCES, "a")
    assert [v.key for v in builder.build({INSTANCES: ["a"]}).instances] == ["b"]


def test_snapshot_matches_what_instances_compute(root, clock):
    a, b, c = (Coordinator(root=root, clock=clock) for _ in range(3))
    for coordinator in (a, b, c):
        coordinator.register(heartbeat=False)
    a.update_workload(6)
    b.update_workload(1)
    a.set_active_model("anthropic", "claude-3-5-sonnet")
    b.set_active_model("anthropic", "claude-3-5-sonnet")
    snapshot = SnapshotBuilder(a.store, clock=clock).build()
    assert snapshot.figures.active_count == a.active_instance_count() == 3
    assert snapshot.figures.parallel_limit == a.my_parallel_limit() == 2
    for coordinator in (a, b, c):
        assert snapshot.instance(coordinator.instance_id).parallel_limit == coordinator.dynamic_parallel_limit()
    (model,) = snapshot.models
    assert (model.provider, model.model, model.instance_count) == ("anthropic", "claude-3-5-sonnet", 2)
    assert model.parallel_limit == a.model_parallel_limit("anthropic", "claude-3-5-sonnet", 2)


def test_stealing_totals_add_up_every_instance(root, clock):
    owner, t1, t2 = (Coordinator(root=root, clock=clock) for _ in range(3))
    for coordinator in (owner, t1, t2):
        coordinator.register(heartbeat=False)
    owner.update_workload(9)
    owner.broadcast_queue_state(9, 1, stealable_entries(owner.instance_id, clock, 3))
    for thief in (t1, t2, t1, t2):
        thief.safe_steal_work()
    snapshot = SnapshotBuilder(owner.store, clock=clock).build()
    assert (snapshot.stealing.attempts, snapshot.stealing.successes, snapshot.stealing.claims) == (4, 3, 3)
    (queue,) = snapshot.queues
    assert queue.claimed_entries == 3 and queue.fresh


def test_to_dict_is_json_ready(root, clock):
    import json

    coordinator = Coordinator(root=root, clock=clock)
    coordinator.register(heartbeat=False)
    coordinator.try_acquire_lock("steal:x")
    data = json.loads(json.dumps(SnapshotBuilder(coordinator.store, clock=clock).build().to_dict()))
    assert data["figures"]["activeCount"] == 1
    assert data["locks"][0]["resource"] == "steal:x"
    assert data["instances"][0]["info"]["instanceId"] == coordinator.instance_id


def _written_json(snapshot) -> bytes:
    import io

    out = io.BytesIO()
    snapshot.write_json(out)
    return out.getvalue()


def test_write_json_is_to_dict_as_json_dumps_writes_it(tmp_path):
    """Every kind of record (the dashboard fixture has them all, hostile names included),
    and lists longer than one slice, with text that must be escaped."""
    import json
    import shutil
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "dashboard_fleet"
    root = tmp_path / "runtime"
    shutil.copytree(fixture, root)
    store = DirectoryStore(root)
    now = 1_900_000_000_000
    for n in range(1_234):
        info = _instance(f"i{n}", now - n).model_copy(update={"cwd": f'/w/\x1b[31m"é\n{n}\\'})
        store.write(INSTANCES, f"i{n}", info.to_json(), durable=False)
    snapshot = SnapshotBuilder(store, clock=ManualClock(now)).build()
    assert len(snapshot.instances) > 1_234 and snapshot.locks and snapshot.events and snapshot.controls
    expected = json.dumps(snapshot.to_dict(), indent=2, ensure_ascii=False).encode()
    assert _written_json(snapshot) == expected


def test_write_json_of_an_empty_fleet(root):
    import json

    snapshot = SnapshotBuilder(DirectoryStore(root)).build()
    assert _written_json(snapshot) == json.dumps(snapshot.to_dict(), indent=2, ensure_ascii=False).encode()


def test_write_json_escapes_text_that_is_no_unicode(root):
    """A file name with undecodable bytes (a lone surrogate once decoded) is still valid JSON."""
    import json

    store = DirectoryStore(root)
    now = 1_900_000_000_000
    store.write(INSTANCES, "bad-\udc80", _instance("bad", now).to_json())
    snapshot = SnapshotBuilder(store, clock=ManualClock(now)).build()
    assert [i["key"] for i in json.loads(_written_json(snapshot))["instances"]] == ["bad-\udc80"]


DASHBOARD_NOW = 1_771_373_735_675  # the dashboard fixture's instant (tests/dashboard/conftest.py)
STATUS_GOLDEN = "dashboard_fleet.status.json"


def _golden_fleet(tmp_path):
    """The dashboard fixture plus an instance file no writer of ours would make: compact,
    keys in another order, explicit nulls (a known key's and unknown keys', a model's
    too), an offset time with microseconds, an integral float and an odd ``honoursClaims``."""
    import shutil
    from pathlib import Path

    root = tmp_path / "runtime"
    shutil.copytree(Path(__file__).parent / "fixtures" / "dashboard_fleet", root)
    odd = (
        b'{"pid":4242,"instanceId":"sess-0dd0dd00-pid4242-mlr80000-nul1","sessionId":"s",'
        b'"lastHeartbeat":"2026-02-18T02:15:30.123456+02:00","startedAt":"2026-02-18T00:00:00Z",'
        b'"cwd":"/w","pendingTaskCount":null,"avgLatencyMs":1200.0,"honoursClaims":"yes",'
        b'"futureKey":null,"activeModels":[{"since":"2026-02-18T00:15:00.000Z","provider":"openai",'
        b'"model":"gpt-5","note":null}],"nested":{"a":null}}'
    )
    (root / "instances" / "sess-0dd0dd00-pid4242-mlr80000-nul1.lock").write_bytes(odd)
    moment = (DASHBOARD_NOW - 1_000) * 1_000_000
    for path in root.rglob("*"):
        os.utime(path, ns=(moment, moment))  # git keeps no mtimes: the ages must not depend on the checkout
    return root


def test_status_json_of_the_dashboard_fixture_is_pinned(tmp_path):
    """``status --json`` of a fixed fleet, byte for byte: the output path may be made
    faster, never different (a change of the document renews the file on purpose)."""
    import json
    from pathlib import Path

    root = _golden_fleet(tmp_path)
    snapshot = SnapshotBuilder(DirectoryStore(root), clock=ManualClock(DASHBOARD_NOW), check_pids=False).build()
    golden = (Path(__file__).parent / "fixtures" / STATUS_GOLDEN).read_bytes().replace(b"ROOT", str(root).encode())
    assert _written_json(snapshot) == golden
    assert json.dumps(snapshot.to_dict(), indent=2, ensure_ascii=False).encode() == golden
