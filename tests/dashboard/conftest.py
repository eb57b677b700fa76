"""The dashboard's test fleet, a frozen clock and small helpers to read what the app shows.

``tests/fixtures/dashboard_fleet/`` is pi's coordination directory at one instant
(``NOW``): every file was written by :func:`write_fleet` with core's own models and
store, so it is byte for byte what pi (and pi-dash's additions) write.  A test
copies it (:func:`fleet`), because the dashboard's actions change it.

What is in it (see the constants below):

* ``A`` alive and busy (7 pending, 3 stealable entries, a 429 backoff in force);
  ``B`` alive and idle (the thief: stealing statistics, holds the steal lock on A);
  ``C`` stale (heartbeat 41 s old, a pending drain request, an expired lock);
  ``D`` draining (``drainingSince``, acknowledged request); ``E`` dead (5 min);
  ``F`` a corrupt (truncated) instance file; ``G`` an instance whose id, cwd, model,
  queue entry and extra key carry Rich markup and terminal escapes;
  ``OFFLINE`` drained and gone (its completed drain request remains).
* locks: ``deploy:staging`` (D), ``steal:A`` (B, 26 s left), ``steal:E`` (C, expired).
* parallelism for A, B, C, D (and E's, which the dashboard must hide: E is dead);
  the shared anthropic backoff runs until ``NOW + 42 s``, openai:gpt-4o-mini's is over;
  rate-limit state for anthropic and openai; one steal claim; nine events.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.text import Text

from core.clock import ManualClock, utc_from_ms
from core.events import EventLog
from core.locks import lock_key, to_base36
from core.models import (
    ActiveModelInfo,
    Backoff429,
    BroadcastQueueState,
    ControlRequest,
    DistributedLock,
    GcraBucket,
    InstanceInfo,
    InstanceParallelism,
    ModelParallelism,
    ProviderRateState,
    RecentError,
    SharedBackoff,
    StealableQueueEntry,
    StealClaim,
    StealingStats,
)
from core.store import (
    BACKOFF,
    CLAIMS,
    CONTROL,
    INSTANCES,
    LOCKS,
    PARALLELISM,
    QUEUES,
    RATE_LIMITS,
    STEALING_STATS,
    DirectoryStore,
)
from pi_dashboard.app import PiDashApp
from pi_dashboard.theme_files import BUILT_IN
from pi_dashboard.widgets.event_log import EventLogView
from pi_dashboard.widgets.keyed_table import KeyedTable

NOW = 1_771_373_735_675  # 2026-02-18T00:15:35.675Z, the frozen instant of the fixture
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dashboard_fleet"
OPERATOR = "pi-dash:ops@devbox"
DEMO_FIXTURE = FIXTURE.parent / "demo_fleet"  # pi-dash demo's directory at one instant
DEMO_NOW = int((FIXTURE.parent / "demo_fleet.now").read_text())

A = "sess-1a2b3c4d-pid48213-mlr81kae-k3j9"  # alive, busy
B = "sess-7f3e9a01-pid48377-mlr8kumx-q0zz"  # alive, idle thief
C = "sess-c0ffee42-pid51002-mlr9nbf6-x7m2"  # stale, pending drain request
D = "sess-d4d4d4d4-pid52840-mlra44s2-0abc"  # draining
E = "sess-e5e5e5e5-pid39999-mlr5weez-dd01"  # dead
F = "sess-f00dbabe-pid60606-mlrb1234-crpt"  # corrupt file
G_KEY = "sess-[bold red]x-pid7777-mlrc0000-m4rk"  # file name (a "/" cannot be in one)
G = "sess-[bold red]x[/]\x1b[31m-pid7777-mlrc0000-m4rk"  # the id inside the file
G_CWD = "/home/dev/[bold red]x[/]/\x1b[31mred\x1b[2J\x07"
G_MODEL = "[bold red]x[/]\x1b[31m"
OFFLINE = "sess-9a9a9a9a-pid45000-mlr70000-gone"  # drained, file removed
STATUS_BY_ID = {
    A: "alive",
    B: "alive",
    C: "stale",
    D: "draining",
    E: "dead",
    F: "corrupt",
    G: "alive",
    OFFLINE: "offline",
}
LOCK_DEPLOY, LOCK_HELD, LOCK_EXPIRED = "deploy:staging", f"steal:{A}", f"steal:{E}"


# ----------------------------------------------------------------- the fleet
def _ago(ms: int) -> object:
    return utc_from_ms(NOW - ms)


def _instance(instance_id: str, pid: int, beat_ago: int, cwd: str, models: list[tuple[str, str]], **extra: object) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        pid=pid,
        session_id=instance_id.split("-")[1] + "-5e55-4e1d-9000-000000000000",
        started_at=_ago(3_600_000),
        last_heartbeat=_ago(beat_ago),
        cwd=cwd,
        active_models=tuple(ActiveModelInfo(provider=p, model=m, since=_ago(1_800_000)) for p, m in models),
        **extra,
    )


def _entry(owner: str, entry_id: str, tool: str, priority: str, ago: int) -> StealableQueueEntry:
    return StealableQueueEntry(
        id=entry_id, tool_name=tool, priority=priority, instance_id=owner, enqueued_at=_ago(ago), estimated_duration_ms=45_000
    )


def _queue(owner: str, ago: int, pending: int, entries: list[StealableQueueEntry], orchestrations: int = 1) -> BroadcastQueueState:
    return BroadcastQueueState(
        instance_id=owner, timestamp=_ago(ago), pending_task_count=pending, active_orchestrations=orchestrations, stealable_entries=tuple(entries)
    )


def _model(provider: str, model: str, current: int, **extra: object) -> ModelParallelism:
    fields: dict[str, object] = dict(
        provider=provider,
        model=model,
        base_parallelism=4,
        current_parallelism=current,
        min_parallelism=1,
        max_parallelism=16,
        effective_parallelism=max(1, current // 2),
        cross_instance_multiplier=0.5,
        last_adjusted_at=NOW - 600_000,
    )
    fields.update(extra)
    return ModelParallelism(**fields)


def _lock(holder: str, resource: str, acquired_ago: int, ttl: int) -> DistributedLock:
    acquired = NOW - acquired_ago
    return DistributedLock(lock_id=f"{holder}-{to_base36(acquired)}", acquired_at=acquired, expires_at=acquired + ttl, resource=resource)


def write_fleet(root: Path) -> None:
    """Write the test fleet into ``root`` (what ``tests/fixtures/dashboard_fleet`` holds)."""
    store = DirectoryStore(root)
    store.ensure_layout()
    (root / "coordinator.json").write_text('{\n  "totalMaxLlm": 8\n}')
    anthropic, openai = ("anthropic", "claude-sonnet-4"), ("openai", "gpt-4o")

    instances = [
        _instance(A, 48213, 3_000, "/home/dev/api-server", [anthropic], pending_task_count=7, avg_latency_ms=1840, hostname="devbox"),
        _instance(B, 48377, 1_000, "/home/dev/web-ui", [openai], pending_task_count=0, avg_latency_ms=920.5, hostname="devbox"),
        _instance(C, 51002, 41_000, "/home/dev/data-pipeline", [anthropic, ("openai", "gpt-4o-mini")], pending_task_count=3),
        _instance(D, 52840, 2_000, "/home/dev/infra", [("deepseek", "deepseek-chat")], pending_task_count=1, draining_since=NOW - 8_000),
        _instance(E, 39999, 300_000, "/home/dev/old-branch", [("gemini", "gemini-2.0-flash")], pending_task_count=4),
        _instance(G, 7777, 5_000, G_CWD, [("openai", G_MODEL)], pending_task_count=1, note="[red]extra[/] \x1b[5m"),
    ]
    for info in instances:
        store.write(INSTANCES, G_KEY if info.instance_id == G else info.instance_id, info.to_json())
    # Cut off mid-write, the way pi's in-place rewrite can leave a file.
    store.write(INSTANCES, F, b'{\n  "instanceId": "' + F.encode() + b'",\n  "pid": 60606,\n  "sessionId": "f00dbabe-')

    queues = [
        _queue(A, 2_000, 7, [_entry(A, "task-review-17", "code_review", "critical", 60_000), _entry(A, "task-test-42", "bash", "high", 50_000), _entry(A, "task-docs-9", "write_file", "normal", 40_000)], 2),
        _queue(C, 41_000, 3, [_entry(C, "task-etl-3", "python", "low", 90_000)]),
        _queue(E, 300_000, 4, [_entry(E, "task-old-1", "bash", "background", 400_000), _entry(E, "task-old-2", "bash", "background", 400_000)]),
        _queue(G, 5_000, 1, [_entry(G, "[bold red]x[/]\x1b[31m", "bash", "normal", 10_000)]),
    ]
    for state in queues:
        store.write(QUEUES, G_KEY if state.instance_id == G else state.instance_id, state.to_json())

    for lock in (_lock(D, LOCK_DEPLOY, 12_000, 60_000), _lock(B, LOCK_HELD, 4_000, 30_000), _lock(C, LOCK_EXPIRED, 95_000, 30_000)):
        store.write(LOCKS, lock_key(lock.resource), lock.to_json())

    parallelism = {
        A: {
            "anthropic:claude-sonnet-4": _model(
                *anthropic,
                2,
                adjustment_reason="429 rate limit",
                last_adjusted_at=NOW - 20_000,
                active_requests=1,
                recent_errors=(RecentError(type="429", timestamp=NOW - 50_000, instance_id=C), RecentError(type="429", timestamp=NOW - 20_000)),
                recent429_count=2,
                avg_response_ms=1840,
                healthy=False,
                recommended_backoff_ms=2_000,
                backoff_until=NOW + 42_000,
            )
        },
        B: {"openai:gpt-4o": _model(*openai, 4, effective_parallelism=4, cross_instance_multiplier=1, avg_response_ms=920.5)},
        C: {
            "anthropic:claude-sonnet-4": _model(*anthropic, 3, adjustment_reason="timeout", recent_errors=(RecentError(type="timeout", timestamp=NOW - 70_000),), healthy=False),
            "openai:gpt-4o-mini": _model("openai", "gpt-4o-mini", 4, active_requests=2),
        },
        D: {"deepseek:deepseek-chat": _model("deepseek", "deepseek-chat", 4, active_requests=1)},
        E: {"gemini:gemini-2.0-flash": _model("gemini", "gemini-2.0-flash", 4, active_requests=3)},  # dead: hidden
    }
    for owner, models in parallelism.items():
        store.write(PARALLELISM, owner, InstanceParallelism(instance_id=owner, updated_at=NOW - 3_000, models=models).to_json())

    backoffs = [
        SharedBackoff(
            provider="anthropic",
            model="claude-sonnet-4",
            until=NOW + 42_000,
            recent429s=(Backoff429(at=NOW - 50_000, instance_id=C), Backoff429(at=NOW - 20_000, instance_id=A, retry_after_ms=62_000)),
        ),
        SharedBackoff(provider="openai", model="gpt-4o-mini", until=NOW - 100_000, recent429s=(Backoff429(at=NOW - 130_000, instance_id=C),)),
    ]
    for backoff in backoffs:
        store.write(BACKOFF, f"{backoff.provider}:{backoff.model}", backoff.to_json())

    second = NOW // 1000
    rates = [
        ProviderRateState(
            provider="anthropic",
            requests_per_minute=50,
            burst=25,
            effective_requests_per_minute=40.5,
            last429_at=NOW - 20_000,
            last_change_at=NOW - 20_000,
            buckets={"pool": GcraBucket(tat=NOW + 30_000)},
            grants_per_second={str(second - k): 1 + k % 2 for k in range(0, 40, 2)},
            total_grants=1_234,
        ),
        ProviderRateState(
            provider="openai",
            requests_per_minute=500,
            burst=100,
            effective_requests_per_minute=500,
            buckets={"pool": GcraBucket(tat=NOW - 5_000)},
            grants_per_second={str(second - k): 4 for k in range(30)},
            total_grants=98_765,
        ),
    ]
    for rate in rates:
        store.write(RATE_LIMITS, rate.provider, rate.to_json())

    stats = [
        StealingStats(instance_id=B, total_attempts=12, successful_steals=9, failed_attempts=3, last_attempt_at=NOW - 30_000, last_success_at=NOW - 30_000, avg_latency_ms=14.2, latency_samples=(12.5, 15.9, 14.2)),
        StealingStats(instance_id=D, total_attempts=2, successful_steals=1, failed_attempts=1, last_attempt_at=NOW - 90_000, last_success_at=NOW - 95_000, avg_latency_ms=21.0, latency_samples=(21.0,)),
    ]
    for stat in stats:
        store.write(STEALING_STATS, stat.instance_id, stat.to_json())
    stolen = _entry(A, "task-build-3", "bash", "high", 70_000)
    store.write(CLAIMS, f"{A}/task-build-3", StealClaim(owner_instance_id=A, entry_id="task-build-3", claimed_by=B, claimed_at=NOW - 30_000, entry=stolen).to_json())

    controls = [
        ControlRequest(instance_id=C, action="drain", requested_at=NOW - 5_000, requested_by=OPERATOR),
        ControlRequest(instance_id=D, action="drain", requested_at=NOW - 9_000, requested_by=OPERATOR, acknowledged_at=NOW - 8_000),
        ControlRequest(instance_id=OFFLINE, action="drain", requested_at=NOW - 60_000, requested_by=OPERATOR, acknowledged_at=NOW - 59_000, completed_at=NOW - 20_000),
    ]
    for request in controls:
        store.write(CONTROL, request.instance_id, request.to_json())

    clock = ManualClock(NOW)

    def emit(ago: int, who: str | None, kind: str, message: str, **where: str) -> None:
        clock.set(NOW - ago)
        EventLog(store, who, clock).emit(kind, message, **where)

    emit(120_000, A, "rate-limit", "anthropic effective limit 45 -> 40.5 rpm after a 429", provider="anthropic")
    emit(60_000, OPERATOR, "drain", f"drain requested for {OFFLINE}")
    emit(50_000, C, "429", "429 from anthropic/claude-sonnet-4; the fleet waits 2 s", provider="anthropic", model="claude-sonnet-4")
    emit(30_000, B, "steal", f"{B} stole task-build-3 (high) from {A}")
    emit(20_000, A, "429", "429 from anthropic/claude-sonnet-4; Retry-After 62 s", provider="anthropic", model="claude-sonnet-4")
    emit(20_000, A, "parallelism", "anthropic/claude-sonnet-4 4 -> 2 (429 rate limit)", provider="anthropic", model="claude-sonnet-4")
    emit(20_000, OFFLINE, "drain", f"{OFFLINE} drained and went offline")
    emit(8_000, D, "drain", f"{D} is draining (requested by {OPERATOR})")
    emit(5_000, G, "steal", f"{G} stole [bold red]x[/]\x1b[31m from {A}")


def freeze_mtimes(root: Path, now_ms: int = NOW) -> None:
    """Give every file a modification time that fits the frozen clock.

    Checked-out files are "written" now (real time); against the frozen clock that
    would make the dead instance a clock-skew case, with a message that changes
    every second.  Instance files get their heartbeat's time, lock files the time their
    holder wrote them (a lock stamped at another time than its file is a clock-skew
    problem too), the rest ``now - 30 s``.
    """
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        at_ms = now_ms - 30_000
        if path.parent.name == "instances":
            try:
                at_ms = InstanceInfo.from_json(path.read_bytes()).heartbeat_ms
            except ValueError:
                at_ms = now_ms - 600_000
        elif path.parent.name == "locks":
            try:
                at_ms = DistributedLock.from_json(path.read_bytes()).stamped_at
            except ValueError:  # a hostile lock file (test_hostile_ui writes some): any time will do
                pass
        os.utime(path, ns=(at_ms * 1_000_000, at_ms * 1_000_000))


# ------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """The header and the event log print local times: make local time UTC."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """A private copy of the test fleet, mtimes frozen with the clock."""
    root = tmp_path / "runtime"
    shutil.copytree(FIXTURE, root)
    freeze_mtimes(root)
    return root


@pytest.fixture
def demo_fleet(tmp_path: Path) -> Path:
    """A private copy of the demo fleet (captured by ``tests/fixtures/capture_demo_fleet.py``),
    mtimes frozen with the clock at the instant of the capture (:data:`DEMO_NOW`)."""
    root = tmp_path / "runtime"
    shutil.copytree(DEMO_FIXTURE, root)
    freeze_mtimes(root, DEMO_NOW)
    return root


@pytest.fixture
def frozen() -> ManualClock:
    return ManualClock(NOW)


def make_app(store: DirectoryStore, clock: object = None, **options: object) -> PiDashApp:
    """The app as the tests run it: frozen clock, no pid checks, built-in themes only."""
    settings: dict[str, object] = {"clock": clock or ManualClock(NOW), "live": False, "check_pids": False, "theme_dirs": [BUILT_IN]}
    settings.update(options)
    return PiDashApp(store, **settings)  # type: ignore[arg-type]


# ------------------------------------------------------------------- reading
def row_keys(table: KeyedTable) -> list[str]:
    """Row keys top to bottom, as shown."""
    return table.row_keys


def row_text(table: KeyedTable, key: str) -> list[str]:
    return [cell.plain if isinstance(cell, Text) else str(cell) for cell in table.get_row(key)]


def cell_text(table: KeyedTable, key: str, column: str) -> str:
    """The text of row ``key``'s cell in the column whose key is ``column`` (shown or dropped)."""
    index = [c.key for c in table.columns].index(column)
    cell = table.get_row(key)[index]
    return cell.plain if isinstance(cell, Text) else str(cell)


def event_lines(app: PiDashApp) -> list[str]:
    """The event pane's lines as plain text."""
    return [strip.text for strip in app.query_one(EventLogView).lines]


def screen_text(svg: str) -> str:
    """The characters of a Textual SVG screenshot, one line per terminal row."""
    rows: dict[float, list[tuple[float, str]]] = {}
    for x, y, text in re.findall(r'<text[^>]*\bx="([\d.]+)" y="([\d.]+)"[^>]*>([^<]*)</text>', svg):
        rows.setdefault(float(y), []).append((float(x), html.unescape(text).replace("\xa0", " ")))
    return "\n".join("".join(t for _, t in sorted(parts)) for _, parts in sorted(rows.items()))


def fleet_events(store: DirectoryStore) -> list[tuple[str, str]]:
    """(kind, message) of every event in the fleet's log on disk."""
    return [(e.kind, e.message) for e in EventLog(store).read(0, 10_000)[0]]


# ------------------------------------------------------------------- driving
def record_notices(app: PiDashApp) -> list[tuple[str, str]]:
    """Every (message, severity) the app notifies from now on."""
    notices: list[tuple[str, str]] = []
    real = app.notify

    def notify(message: str, *args: object, **kwargs: object) -> None:
        notices.append((str(message), str(kwargs.get("severity", "information"))))
        real(message, *args, **kwargs)  # type: ignore[arg-type]

    app.notify = notify  # type: ignore[method-assign]
    return notices


async def select(pilot, table: KeyedTable, key: str) -> None:
    """Focus ``table`` and move its cursor to ``key`` with the arrow keys."""
    table.focus()
    await pilot.pause()
    target = table.get_row_index(key)
    step = "down" if target > table.cursor_row else "up"
    await pilot.press(*[step] * abs(target - table.cursor_row))
    assert table.selected_key == key


async def confirm(pilot) -> None:
    """Answer yes to the question on screen and wait for the action's worker to report."""
    await pilot.press("y")
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def until(pilot, condition: Callable[[], object], timeout: float, what: str) -> float:
    """Let the app run until ``condition()`` holds; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout:g} s: {what}")
        await pilot.pause(0.05)
    return time.monotonic() - start


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, Textual's loop."""
    return "asyncio"
