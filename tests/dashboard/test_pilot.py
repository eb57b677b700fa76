"""The dashboard's keys, driven with Textual's pilot, checked where it matters: on disk, through core.

Operator actions (release a lock, drain, remove a dead instance) must change the
coordination directory exactly as asked, refuse what they must refuse, and leave
an event in the fleet's log; view actions (pause, filter, sort, theme) change
only the screen and leave a line in the event pane.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from core.clock import SYSTEM_CLOCK, ManualClock, utc_from_ms
from core import coordinator as coordinator_module
from core.control import FleetControl
from core.coordinator import Coordinator
from core.locks import LockService, lock_key
from core.models import ControlRequest, InstanceInfo
from core.snapshot import SnapshotBuilder, Status
from core.store import CONTROL, INSTANCES, LOCKS, PARALLELISM, QUEUES, DirectoryStore
from pi_dashboard.app import PiDashApp
from pi_dashboard.screens.confirm import ConfirmScreen
from pi_dashboard.screens.details import DetailsScreen
from pi_dashboard.widgets.fleet_header import FleetHeader
from pi_dashboard.widgets.instances_table import InstancesTable
from pi_dashboard.widgets.keyed_table import KeyedTable
from pi_dashboard.widgets.locks_table import LocksTable
from pi_dashboard.widgets.parallelism_table import ParallelismTable
from pi_dashboard.widgets.problems_panel import ProblemsPanel

from .conftest import (
    confirm,
    A,
    B,
    C,
    D,
    E,
    F,
    G_KEY,
    LOCK_DEPLOY,
    LOCK_EXPIRED,
    LOCK_HELD,
    NOW,
    OFFLINE,
    event_lines,
    fleet_events,
    make_app,
    record_notices,
    row_keys,
    cell_text,
    screen_text,
    select,
    until,
)

pytestmark = pytest.mark.anyio
BY_ID = [A, B, OFFLINE, G_KEY, C, D, E, F]  # the instances table's first order


def header_text(app: PiDashApp) -> str:
    return str(app.query_one(FleetHeader).render())


# ----------------------------------------------------------------- locks (r)
async def test_release_the_selected_lock(fleet: Path, frozen: ManualClock) -> None:
    store = DirectoryStore(fleet)
    app = make_app(store, frozen)
    notices = record_notices(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")  # small terminal: show (and focus) the locks pane
        locks = app.query_one(LocksTable)
        assert app.focused is locks and locks.display
        assert row_keys(locks) == [lock_key(r) for r in (LOCK_DEPLOY, LOCK_HELD, LOCK_EXPIRED)]
        await pilot.press("down")
        assert locks.selected_lock is not None and locks.selected_lock.resource == LOCK_HELD
        await pilot.press("r")
        assert isinstance(app.screen, ConfirmScreen)
        await confirm(pilot)
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert lock_key(LOCK_HELD) not in row_keys(locks)  # rebuilt at once
    assert store.read(LOCKS, lock_key(LOCK_HELD)) is None
    assert store.read(LOCKS, lock_key(LOCK_DEPLOY)) is not None and store.read(LOCKS, lock_key(LOCK_EXPIRED)) is not None
    assert ("lock-release", f"lock {LOCK_HELD} of {B} released by {app.control.actor}") in fleet_events(store)
    assert notices == [(f"released {LOCK_HELD}", "information")]


async def test_a_lock_that_changed_hands_is_not_released(fleet: Path, frozen: ManualClock) -> None:
    store = DirectoryStore(fleet)
    app = make_app(store, frozen)
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        locks = app.query_one(LocksTable)
        await select(pilot, locks, lock_key(LOCK_EXPIRED))
        seen = locks.selected_lock
        assert seen is not None and seen.expired and seen.lock is not None and seen.lock.holder == C
        # After the snapshot, another instance takes the expired lock over.
        newcomer = "sess-99999999-pid4242-mlrd0000-newb"
        taken = LockService(store, newcomer, frozen).try_acquire(LOCK_EXPIRED)
        assert taken is not None
        await pilot.press("r")
        await confirm(pilot)
        await pilot.pause()
        assert locks.views[lock_key(LOCK_EXPIRED)].lock.holder == newcomer  # the pane now shows who has it
    current = store.read(LOCKS, lock_key(LOCK_EXPIRED))
    assert current is not None and taken.lock_id.encode() in current.data  # the new holder keeps it
    assert notices == [(f"{LOCK_EXPIRED} not released: now held by {newcomer}", "warning")]
    assert "lock-release" not in [kind for kind, _ in fleet_events(store)]


async def test_release_needs_a_selected_lock(fleet: Path, frozen: ManualClock) -> None:
    store = DirectoryStore(fleet)
    for path in (fleet / "locks").iterdir():
        path.unlink()
    app = make_app(store, frozen)
    notices = record_notices(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5", "r")
        assert not isinstance(app.screen, ConfirmScreen)
    assert notices and notices[0][1] == "warning" and "Select a lock" in notices[0][0]


# ----------------------------------------------------------------- drain (d)
WORKER = textwrap.dedent(
    """
    import sys, time
    from core.coordinator import Coordinator

    coordinator = Coordinator(root=sys.argv[1], config={"heartbeat_interval_ms": 500})
    coordinator.register(cwd="/srv/drain-me", heartbeat=True)
    print(coordinator.instance_id, flush=True)
    deadline = time.monotonic() + 30
    while not coordinator.draining:  # a real agent would be running tasks here
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.02)
    time.sleep(0.2)  # finish the task in hand (at once, it races the acknowledgement: see below)
    coordinator.finish_drain()
    """
)


@pytest.mark.slow
async def test_drain_a_real_coordinator_process(tmp_path: Path) -> None:
    """d, y on an instance run by a separate process: it acknowledges within 2 s, drains, exits 0,
    and the dashboard, watching the directory, shows it draining then offline."""
    root = tmp_path / "runtime"
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        instance_id = worker.stdout.readline().strip()
        assert instance_id.startswith("sess-"), worker.stderr.read() if worker.stderr else ""
        store = DirectoryStore(root)
        app = make_app(store, SYSTEM_CLOCK, live=True, check_pids=True)
        seen: set[Status] = set()
        async with app.run_test(size=(160, 48)) as pilot:
            table = app.query_one(InstancesTable)
            await until(pilot, lambda: instance_id in row_keys(table), 5, "the worker's row")
            await select(pilot, table, instance_id)
            assert app.snapshot is not None and app.snapshot.instance(instance_id).status is Status.ALIVE
            await pilot.press("d")
            assert isinstance(app.screen, ConfirmScreen)
            await confirm(pilot)
            request = store.read(CONTROL, instance_id)
            assert request is not None  # the request is on disk as soon as the answer is given

            def status() -> Status | None:
                view = app.snapshot.instance(instance_id) if app.snapshot else None
                if view is not None:
                    seen.add(view.status)
                return view.status if view else None

            await until(pilot, lambda: status() in (Status.DRAINING, Status.OFFLINE), 3, "draining or offline on screen")
            assert worker.wait(timeout=10) == 0
            await until(pilot, lambda: status() is Status.OFFLINE, 5, "offline on screen")
            assert cell_text(table, instance_id, "status") == "offline"
        answered = ControlRequest.from_json(store.read(CONTROL, instance_id).data)
        assert answered.acknowledged_at is not None and answered.completed_at is not None
        assert answered.acknowledged_at - answered.requested_at < 2_000
        assert store.read(INSTANCES, instance_id) is None
        drains = [message for kind, message in fleet_events(store) if kind == "drain"]
        assert drains == [
            f"drain requested for {instance_id}",
            f"{instance_id} is draining (requested by {app.control.actor})",
            f"{instance_id} drained and went offline",
        ]
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()


def test_an_instant_drain_still_ends_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving the real-process test above hits now and then, made deterministic."""
    root = tmp_path / "runtime"
    worker = Coordinator(root=root, clock=ManualClock(NOW))
    worker.register(cwd="/srv/quick", heartbeat=False)
    iid = worker.instance_id
    store = DirectoryStore(root)
    FleetControl(store, "pi-dash@test", ManualClock(NOW)).request_drain(iid)
    finish_read, acknowledged = threading.Event(), threading.Event()
    real_read, real_update = coordinator_module.read_request, coordinator_module.update_request

    def read(store_: object, instance_id: str) -> object:
        found = real_read(store_, instance_id)
        if threading.current_thread() is threading.main_thread():  # finish_drain
            finish_read.set()
            acknowledged.wait(5)
        return found

    def update(store_: object, request: ControlRequest, seen: bytes, **changes: int) -> bool:
        if "acknowledged_at" in changes:  # check_control, on the heartbeat thread
            finish_read.wait(5)
            try:
                return real_update(store_, request, seen, **changes)
            finally:
                acknowledged.set()
        return real_update(store_, request, seen, **changes)

    monkeypatch.setattr(coordinator_module, "read_request", read)
    monkeypatch.setattr(coordinator_module, "update_request", update)
    heartbeat = threading.Thread(target=worker.check_control)  # what the heartbeat thread runs
    heartbeat.start()
    deadline = time.monotonic() + 5
    while not worker.draining and time.monotonic() < deadline:
        time.sleep(0.001)
    worker.finish_drain()  # the agent had nothing in hand
    heartbeat.join()
    snapshot = SnapshotBuilder(store, clock=ManualClock(NOW), check_pids=False).build()
    assert [c.state for c in snapshot.controls] == ["offline"]


async def test_an_instance_that_never_acknowledges_is_flagged(tmp_path: Path) -> None:
    """pi's own instances ignore control requests: after two heartbeat intervals the row says so."""
    root = tmp_path / "runtime"
    clock = ManualClock(NOW)
    pi_like = Coordinator(root=root, clock=clock)
    pi_like.register(cwd="/home/dev/typescript-pi", heartbeat=False)  # heartbeats, never checks control
    iid = pi_like.instance_id
    store = DirectoryStore(root)
    app = make_app(store, clock, live=True)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        await pilot.press("d", "n")  # no: nothing is asked
        await pilot.pause()
        assert store.read(CONTROL, iid) is None
        await pilot.press("d")
        await confirm(pilot)
        assert store.read(CONTROL, iid) is not None
        await until(pilot, lambda: [c.state for c in app.snapshot.controls] == ["pending"], 5, "a pending request")
        assert cell_text(table, iid, "status") == "alive"
        clock.advance(15_000)  # one interval: still only pending
        pi_like.heartbeat()
        await until(pilot, lambda: app.snapshot.taken_at_ms == clock.now_ms(), 5, "a rebuild at +15 s")
        assert [c.state for c in app.snapshot.controls] == ["pending"]
        clock.advance(15_001)  # past two intervals
        pi_like.heartbeat()
        await until(pilot, lambda: cell_text(table, iid, "status") == "alive (no ack)", 5, "'no ack' in the row")
        assert [c.state for c in app.snapshot.controls] == ["not-acknowledged"]
        problems = str(app.query_one(ProblemsPanel).render())
        assert "not-acknowledged" in problems and "does not answer control requests" in problems
    assert ("drain", f"drain requested for {iid}") in fleet_events(store)


async def test_drain_is_refused_for_dead_and_draining_instances(fleet: Path, frozen: ManualClock) -> None:
    store = DirectoryStore(fleet)
    app = make_app(store, frozen)
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        for key in (E, D, OFFLINE, F):
            await select(pilot, table, key)
            await pilot.press("d")
            assert not isinstance(app.screen, ConfirmScreen), key
    assert [severity for _, severity in notices] == ["warning"] * 4
    assert {p.name for p in (fleet / "pi-dash" / "control").iterdir()} == {f"{C}.json", f"{D}.json", f"{OFFLINE}.json"}


# ------------------------------------------------------------ remove (x)
async def test_remove_a_dead_instance_and_a_corrupt_file(fleet: Path, frozen: ManualClock) -> None:
    store = DirectoryStore(fleet)
    app = make_app(store, frozen)
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        await select(pilot, table, E)
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await confirm(pilot)
        await pilot.pause()
        assert E not in row_keys(table)
        await select(pilot, table, F)
        await pilot.press("x")
        await confirm(pilot)
        await pilot.pause()
        assert F not in row_keys(table)
    for space in (INSTANCES, QUEUES, PARALLELISM):
        assert store.read(space, E) is None, space
    assert store.read(INSTANCES, F) is None
    cleanups = [message for kind, message in fleet_events(store) if kind == "cleanup"]
    assert cleanups == [f"files of dead instance {key} removed by {app.control.actor}" for key in (E, F)]
    assert notices == [(f"removed the files of {E}", "information"), (f"removed the files of {F}", "information")]


async def test_remove_is_refused_for_live_instances(fleet: Path, frozen: ManualClock) -> None:
    store = DirectoryStore(fleet)
    before = {p.name: p.read_bytes() for p in (fleet / "instances").iterdir()}
    app = make_app(store, frozen)
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        for key in (A, C, D):  # alive, stale, draining
            await select(pilot, table, key)
            await pilot.press("x")
            assert not isinstance(app.screen, ConfirmScreen), key
    assert notices == [("Only a dead or corrupt instance's files can be removed.", "warning")] * 3
    assert {p.name: p.read_bytes() for p in (fleet / "instances").iterdir()} == before
    assert "cleanup" not in [kind for kind, _ in fleet_events(store)]


async def test_a_dead_instance_that_came_back_is_not_removed(fleet: Path, frozen: ManualClock) -> None:
    store = DirectoryStore(fleet)
    app = make_app(store, frozen)
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        await select(pilot, table, E)
        await pilot.press("x")
        revived = InstanceInfo.from_json(store.read(INSTANCES, E).data).model_copy(update={"last_heartbeat": utc_from_ms(NOW)})
        store.write(INSTANCES, E, revived.to_json())  # its heartbeat resumed meanwhile
        await confirm(pilot)
        await pilot.pause()
        assert cell_text(table, E, "status") == "alive"
    assert store.read(INSTANCES, E) is not None and store.read(QUEUES, E) is not None
    assert notices == [(f"{E} changed since it was seen dead; nothing removed", "warning")]


# ------------------------------------------------------------ view actions
async def test_pause_holds_updates_and_resume_applies_the_latest(fleet: Path, frozen: ManualClock) -> None:
    store = DirectoryStore(fleet)
    app = make_app(store, frozen, live=True)
    newcomer = "sess-0e0e0e0e-pid31337-mlrd1111-late"
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        await until(pilot, lambda: app.source.watching == "inotify", 5, "the watcher")
        await pilot.press("p")
        assert app.paused and "PAUSED" in header_text(app)
        info = InstanceInfo.from_json(store.read(INSTANCES, A).data).model_copy(update={"instance_id": newcomer, "pid": 31337})
        store.write(INSTANCES, newcomer, info.to_json())
        # The source delivers the change; the app holds it instead of showing it.
        await until(pilot, lambda: app._held is not None and app._held.snapshot.instance(newcomer), 5, "a held update")
        assert newcomer not in row_keys(table) and app.snapshot.instance(newcomer) is None
        await pilot.press("p")
        assert not app.paused and "PAUSED" not in header_text(app)
        assert newcomer in row_keys(table)  # resuming shows the latest at once
        lines = event_lines(app)
    assert any(line.endswith("updates paused") for line in lines)
    assert any(line.endswith("updates resumed") for line in lines)


async def test_filter_narrows_the_rows_and_escape_clears(fleet: Path, frozen: ManualClock) -> None:
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        box = app.query_one("#filter")
        assert row_keys(table) == BY_ID and not box.display
        await pilot.press("slash")
        assert box.display and app.focused is box
        await pilot.press("a", "p", "i")
        assert row_keys(table) == [A]  # cwd /home/dev/api-server
        await pilot.press("enter")
        assert app.focused is table and row_keys(table) == [A]
        await pilot.press("escape")
        assert row_keys(table) == BY_ID and not box.display
        await pilot.press("slash", *"dead", "enter")  # status
        assert row_keys(table) == [E]
        await pilot.press("escape", "slash", *"[/]", "enter")  # markup, matched as text
        assert row_keys(table) == [G_KEY]
        await pilot.press("escape", "slash", *"4o", "enter")  # models
        assert row_keys(table) == [B, C]  # openai/gpt-4o, openai/gpt-4o-mini
        await pilot.press("escape")
        assert row_keys(table) == BY_ID
        notes = [line for line in event_lines(app) if " filter " in line]
    assert [n.split("filter", 1)[1].strip() for n in notes] == [
        "instances filtered by 'api'",
        "instances filtered by 'dead'",
        "instances filtered by '[/]'",
        "instances filtered by '4o'",
    ]


def header(table: KeyedTable) -> str:
    """The table's header line as shown (the sorted column carries its arrow)."""
    return table.render_line(0).text


async def click_header(pilot, table: KeyedTable, label: str) -> None:
    """Click the header of the column whose label starts ``label``."""
    x = header(table).index(label) - int(table.scroll_offset.x)
    region = table.content_region
    await pilot.click(offset=(region.x + x, region.y))
    await pilot.pause()


async def test_sort_by_key_on_the_focused_table(fleet: Path, frozen: ManualClock) -> None:
    """s: the focused table's next column, each in its own direction first; S reverses."""
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        assert row_keys(table) == BY_ID and "Instance ▲" in header(table)
        await pilot.press("s")  # status, worst first
        by_status = [F, E, C, D, A, B, G_KEY, OFFLINE]
        assert row_keys(table) == by_status and "Status ▲" in header(table)
        assert "Instance ▲" not in header(table) and "Instance" in header(table)
        await pilot.press("S")
        assert row_keys(table) == by_status[::-1] and "Status ▼" in header(table)
        await pilot.press("s")  # heartbeat age: oldest first
        assert row_keys(table)[:3] == [E, C, G_KEY] and "Beat ▼" in header(table)
        await pilot.press("s")  # pending: most first (numbers as numbers: 7 > 4 > 3 > 1)
        assert row_keys(table)[:3] == [A, E, C] and "Pend ▼" in header(table)
        locks = app.query_one(LocksTable)
        locks.focus()
        await pilot.press("s")  # the focused table, not the instances: Holder, then TTL left, soonest first
        await pilot.press("s")
        assert row_keys(locks) == [lock_key(r) for r in (LOCK_EXPIRED, LOCK_HELD, LOCK_DEPLOY)]
        assert locks.sort_label == "TTL left ▲" and row_keys(table)[:3] == [A, E, C]
        notes = [line.split(" sort ", 1)[1].strip() for line in event_lines(app) if " sort " in line]
    assert notes == [
        "Instances sorted by Status ▲",
        "Instances sorted by Status ▼",
        "Instances sorted by Beat ▼",
        "Instances sorted by Pend ▼",
        "Locks sorted by Holder ▲",
        "Locks sorted by TTL left ▲",
    ]


async def test_sort_by_header_click_reverses_on_the_second(fleet: Path, frozen: ManualClock) -> None:
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(160, 48)) as pilot:
        locks = app.query_one(LocksTable)
        assert row_keys(locks) == [lock_key(r) for r in (LOCK_DEPLOY, LOCK_HELD, LOCK_EXPIRED)]
        locks.focus()
        await pilot.press("z")  # a quarter of the width shows no Age column: zoomed, it does
        await click_header(pilot, locks, "Age")  # oldest first: 95 s, 12 s, 4 s
        assert row_keys(locks) == [lock_key(r) for r in (LOCK_EXPIRED, LOCK_DEPLOY, LOCK_HELD)]
        assert "Age ▼" in header(locks) and "Resource ▲" not in header(locks)
        await click_header(pilot, locks, "Age")
        assert row_keys(locks) == [lock_key(r) for r in (LOCK_HELD, LOCK_DEPLOY, LOCK_EXPIRED)] and "Age ▲" in header(locks)
        await pilot.press("z")
        instances = app.query_one(InstancesTable)
        await click_header(pilot, instances, "Pend")
        assert row_keys(instances)[:4] == [A, E, C, D] and "Pend ▼" in header(instances)
        await click_header(pilot, instances, "Pend")
        assert row_keys(instances)[-2:] == [E, A] and "Pend ▲" in header(instances)
        parallelism = app.query_one(ParallelismTable)
        await click_header(pilot, parallelism, "Health")  # worst first: 429s, then degraded, then ok
        health = [cell_text(parallelism, key, "health") for key in row_keys(parallelism)]
        assert health == ["2×429", "degraded", "ok", "ok", "ok"]
        notes = [line.split(" sort ", 1)[1].strip() for line in event_lines(app) if " sort " in line]
    assert notes == [
        "Locks sorted by Age ▼",
        "Locks sorted by Age ▲",
        "Instances sorted by Pend ▼",
        "Instances sorted by Pend ▲",
        "Parallelism sorted by Health ▲",
    ]


async def test_a_sorted_table_keeps_sorting_what_arrives(fleet: Path, frozen: ManualClock) -> None:
    """The sort holds through updates: a row whose sorted cell changes moves, the cursor with it."""
    store = DirectoryStore(fleet)
    app = make_app(store, frozen)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        await click_header(pilot, table, "Pend")
        await select(pilot, table, B)
        busier = InstanceInfo.from_json(store.read(INSTANCES, B).data).model_copy(update={"pending_task_count": 12})
        store.write(INSTANCES, B, busier.to_json())
        app._render_state(app.source.build_now())
        await pilot.pause()
        assert row_keys(table)[0] == B and table.selected_key == B


async def test_theme_cycles_and_panes_follow(fleet: Path, frozen: ManualClock) -> None:
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        assert app.theme == "pi-dark"
        seen = []
        for _ in range(3):
            await pilot.press("t")
            await pilot.pause()
            status_cell = table.get_row(A)[[c.key for c in table.columns].index("status")]
            assert status_cell.style.color.name.lower() == app.current_theme.success.lower()
            seen.append(app.theme)
        notes = [line.split("theme", 1)[1].strip() for line in event_lines(app) if " theme " in line]
    assert seen == ["pi-high-contrast", "pi-light", "pi-dark"]
    assert notes == ["theme pi-high-contrast", "theme pi-light", "theme pi-dark"]


async def test_theme_and_sorts_are_remembered_for_the_next_run(fleet: Path, frozen: ManualClock, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    app = make_app(DirectoryStore(fleet), frozen, remember=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("t")  # high contrast
        await click_header(pilot, app.query_one(InstancesTable), "Pend")
        app.query_one(LocksTable).focus()
        await pilot.press("z")
        await click_header(pilot, app.query_one(LocksTable), "Age")
        await click_header(pilot, app.query_one(LocksTable), "Age")
    prefs = json.loads((tmp_path / "config" / "pi-dash" / "prefs.json").read_text())
    assert prefs == {"theme": "pi-high-contrast", "sorts": {"instances": ["pending", True], "locks": ["age", False]}}
    again = make_app(DirectoryStore(fleet), frozen)
    async with again.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        assert again.theme == "pi-high-contrast"
        instances, locks = again.query_one(InstancesTable), again.query_one(LocksTable)
        assert row_keys(instances)[:3] == [A, E, C] and "Pend ▼" in header(instances)
        assert row_keys(locks) == [lock_key(r) for r in (LOCK_HELD, LOCK_DEPLOY, LOCK_EXPIRED)] and locks.sort_label == "Age ▲"
        assert "Instance ▲" in header(again.query_one(ParallelismTable))  # never sorted: its first column
    (tmp_path / "config" / "pi-dash" / "prefs.json").write_text('{"sorts": {"instances": ["no-such-column", true]}}')
    stale = make_app(DirectoryStore(fleet), frozen)  # a column that went away: the default order
    async with stale.run_test(size=(160, 48)) as pilot:
        assert row_keys(stale.query_one(InstancesTable)) == BY_ID
    asked = make_app(DirectoryStore(fleet), frozen, theme="pi-light")  # --theme wins over the memory
    async with asked.run_test(size=(160, 48)) as pilot:
        assert asked.theme == "pi-light"


# ------------------------------------------------------------------ details
async def test_enter_opens_the_details_screen(fleet: Path, frozen: ManualClock) -> None:
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(160, 48)) as pilot:
        assert app.focused is app.query_one(InstancesTable)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DetailsScreen)


async def test_details_action_and_closing(fleet: Path, frozen: ManualClock) -> None:
    """The details screen itself (reached through its action, as the palette does) and escape."""
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(160, 48)) as pilot:
        await select(pilot, app.query_one(InstancesTable), D)
        app.action_details()
        await pilot.pause()
        assert isinstance(app.screen, DetailsScreen) and app.screen.view.key == D
        text = screen_text(app.export_screenshot())
        assert "draining" in text and "drain request" in text and "acknowledged" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailsScreen)


async def test_details_follow_the_fleet_and_say_when_the_instance_is_gone(fleet: Path, frozen: ManualClock) -> None:
    store = DirectoryStore(fleet)
    app = make_app(store, frozen, live=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.source.watching == "inotify", 5, "the watcher")
        await select(pilot, app.query_one(InstancesTable), A)
        app.action_details()
        await pilot.pause()
        details = app.screen
        assert isinstance(details, DetailsScreen)
        assert re.search(r"pending +7\b", screen_text(app.export_screenshot()))
        busier = InstanceInfo.from_json(store.read(INSTANCES, A).data).model_copy(update={"pending_task_count": 11})
        store.write(INSTANCES, A, busier.to_json())
        await until(pilot, lambda: re.search(r"pending +11\b", screen_text(app.export_screenshot())), 5, "pending 11 in the details")
        assert app.screen is details and "gone" not in screen_text(app.export_screenshot())
        store.delete(INSTANCES, A)
        await until(pilot, lambda: details.gone, 5, "the details noticing A left")
        text = screen_text(app.export_screenshot())
        assert "gone: no longer in the fleet (last seen 00:15:35)" in text
        assert re.search(r"pending +11\b", text)  # what it showed last stays
        store.write(INSTANCES, A, busier.to_json())  # it came back
        await until(pilot, lambda: not details.gone, 5, "the details noticing A came back")
        assert "gone:" not in screen_text(app.export_screenshot())
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailsScreen)


# --------------------------------------------------------- cancel a drain (c)
async def test_cancel_a_drain_and_a_pending_drain_request(fleet: Path, frozen: ManualClock) -> None:
    store = DirectoryStore(fleet)
    app = make_app(store, frozen)
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        await select(pilot, table, D)
        await pilot.press("d")  # draining already: says how to undo it
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("c", "n")  # asked first; no: nothing changes
        await pilot.pause()
        assert store.read(CONTROL, D) is not None
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        await confirm(pilot)
        assert store.read(CONTROL, D) is None
        await select(pilot, table, C)  # asked to drain, never acknowledged
        await pilot.press("c")
        await confirm(pilot)
        assert store.read(CONTROL, C) is None
        for key in (A, OFFLINE):  # nothing asked; drained and gone
            await select(pilot, table, key)
            await pilot.press("c")
            assert not isinstance(app.screen, ConfirmScreen), key
        assert not app.query_one(ProblemsPanel).render().plain.count("action-failed")
    assert store.read(CONTROL, OFFLINE) is not None
    assert notices == [
        (f"{D} is draining already; c cancels the drain.", "warning"),
        (f"drain of {D} cancelled", "information"),
        (f"drain of {C} cancelled", "information"),
        ("Select an instance that is draining (or asked to) to cancel its drain.", "warning"),
        ("Select an instance that is draining (or asked to) to cancel its drain.", "warning"),
    ]
    drains = [message for kind, message in fleet_events(store) if kind == "drain"]
    assert drains[-2:] == [f"drain of {D} cancelled by {app.control.actor}", f"drain of {C} cancelled by {app.control.actor}"]


async def test_remove_an_instance_that_vanished_meanwhile(fleet: Path, frozen: ManualClock) -> None:
    """x, and before the answer another operator removed the files: a plain notice, no failure."""
    store = DirectoryStore(fleet)
    app = make_app(store, frozen)
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        await select(pilot, table, E)
        await pilot.press("x")
        FleetControl(store, "pi-dash:someone@else", frozen).remove_instance_files(E, store.read(INSTANCES, E).data)
        await confirm(pilot)
        await pilot.pause()
        assert E not in row_keys(table) and app.is_running
        assert not app.own_problems
    assert notices == [(f"{E} is gone already (removed meanwhile); nothing to remove", "warning")]
    assert [m for kind, m in fleet_events(store) if kind == "cleanup"] == [f"files of dead instance {E} removed by pi-dash:someone@else"]


# ------------------------------------------------------------ keys and zoom
async def test_zoom_gives_the_focused_pane_the_body_at_any_size(fleet: Path, frozen: ManualClock) -> None:
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(80, 24)) as pilot:
        body = app.query_one("#panes")
        instances, parallelism, locks = (app.query_one(f"#{pane}") for pane in ("instances", "parallelism", "locks"))
        assert instances.display and parallelism.display
        await pilot.press("z")
        assert instances.display and not parallelism.display
        assert instances.region.height == body.region.height and "zoomed" in str(instances.border_subtitle)
        await pilot.press("5")  # zoomed, picking a pane zooms that one
        assert locks.display and not instances.display and app.focused is locks
        await pilot.press("z")
        assert instances.display and locks.display and not parallelism.display  # the small layout, pane 5 shown
        assert instances.region.height < body.region.height and "zoomed" not in str(instances.border_subtitle)
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(160, 48)) as pilot:
        body = app.query_one("#panes")
        events = app.query_one("#events")
        events.focus()
        await pilot.press("z")
        shown = [pane.id for pane in app.query(".pane") if pane.display]
        assert shown == ["events"] and events.region.width == body.region.width and events.region.height == body.region.height
        await pilot.press("z")
        assert all(pane.display for pane in app.query(".pane"))
        assert "z Zoom" in screen_text(app.export_screenshot()).splitlines()[-1]
        await pilot.press("z", "escape")  # escape leaves the zoom too (with no filter to clear)
        assert all(pane.display for pane in app.query(".pane")) and app.zoomed is None


async def test_table_keys_j_k_g_G_ctrl_d_ctrl_u(fleet: Path, frozen: ManualClock) -> None:
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()  # laid out: the columns fitted to the width, no sideways scrollbar
        table = app.query_one(InstancesTable)
        half = round(0.5 * (table.scrollable_content_region.height - 1))
        assert 1 <= half < len(BY_ID) - 1
        await pilot.press("j", "j")
        assert table.selected_key == BY_ID[2]
        await pilot.press("k")
        assert table.selected_key == BY_ID[1]
        await pilot.press("G")
        assert table.selected_key == BY_ID[-1]
        await pilot.press("g")
        assert table.selected_key == BY_ID[0]
        await pilot.press("ctrl+d")
        assert table.cursor_row == half
        await pilot.press("ctrl+d", "ctrl+d")
        assert table.cursor_row == len(BY_ID) - 1
        await pilot.press("ctrl+u")
        assert table.cursor_row == len(BY_ID) - 1 - half


@pytest.mark.parametrize("where", ["table", "filter box"])
async def test_ctrl_c_quits_like_q(fleet: Path, frozen: ManualClock, where: str) -> None:
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(80, 24)) as pilot:
        if where == "filter box":
            await pilot.press("slash", "a")
            assert app.focused is app.query_one("#filter")
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert app.return_code == 0 and app._exit


async def test_sorting_on_a_column_out_of_sight_scrolls_it_into_view(fleet: Path, frozen: ManualClock) -> None:
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(InstancesTable)
        assert "PID" not in header(table)  # the 80 columns left it out
        await pilot.press(*"s" * 11)  # the last column: shown while it is sorted on
        assert table.sort_label == "PID ▲" and "PID ▲" in header(table)
        await pilot.press("s")  # back to the first
        assert "Instance ▲" in header(table)


async def test_details_and_help_scroll_with_the_table_keys(fleet: Path, frozen: ManualClock) -> None:
    app = make_app(DirectoryStore(fleet), frozen)
    async with app.run_test(size=(80, 24)) as pilot:
        app.action_details()  # A: a long page at 80x24
        await pilot.pause()
        scroll = app.screen.query_one("#details")
        assert app.focused is scroll and scroll.max_scroll_y > 3
        await pilot.press("j", "j")
        assert scroll.scroll_y == 2
        await pilot.press("k")
        assert scroll.scroll_y == 1
        await pilot.press("G")
        assert scroll.scroll_y == scroll.max_scroll_y
        await pilot.press("g")
        assert scroll.scroll_y == 0
        await pilot.press("ctrl+d")
        assert scroll.scroll_y > 2
        await pilot.press("escape", "question_mark")
        scroll = app.screen.query_one("#help")
        await pilot.press("G")
        assert scroll.max_scroll_y > 0 and scroll.scroll_y == scroll.max_scroll_y
