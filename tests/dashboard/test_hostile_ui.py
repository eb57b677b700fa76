"""Hostile records against the dashboard's keys and rendering, and a store that fails mid-action.

The rule: one bad record costs only itself.  Whatever a record holds (markup,
escape sequences, key names, times no clock can show), every key on every row
leaves the app running, user text reaches the screen only escaped, and a record
the dashboard cannot show, or an action the store refuses, is listed as a
problem and said in a notification.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console

from core.clock import ManualClock
from core.models import InstanceInfo, StealingStats
from core.snapshot import SnapshotBuilder
from core.store import DirectoryStore, StoreError
from pi_dashboard.app import PiDashApp
from pi_dashboard.screens.confirm import ConfirmScreen
from pi_dashboard.screens.details import DetailsScreen, describe
from pi_dashboard.status_report import render
from pi_dashboard.text import TIME_OUT_OF_RANGE, UserText, clock_datetime, clock_time, clock_zone, escaped, valid_unicode
from pi_dashboard.widgets.instances_table import InstancesTable
from pi_dashboard.widgets.locks_table import LocksTable
from pi_dashboard.widgets.problems_panel import ProblemsPanel

from .conftest import A, E, FIXTURE, G_KEY, NOW, freeze_mtimes, make_app, record_notices, screen_text, select
from .hostile_records import PAYLOAD, write_hostile_records

pytestmark = pytest.mark.anyio

# What must never reach a terminal from user text: C0 (but newline), DEL, C1, bidi and other format characters.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")
DANGEROUS = st.sampled_from(
    ["\x1b", "\x1b]0;T\x07", "\x1b[2J", "\x07", "\x00", "\x9b", "\x85", "\u202e", "\u2066", "\u200f", "\u2028", "\udcff",
     "[/]", "[bold red]", "[link=x]", "[@click=app.quit]", "\\", "é", "語", "\n", "\r", "\t"]
)
HOSTILE_TEXT = st.lists(st.one_of(DANGEROUS, st.text(max_size=4)), max_size=8).map("".join)


def problems_text(app: PiDashApp) -> str:
    return str(app.query_one(ProblemsPanel).render())


def unsafe(text: str) -> list[str]:
    return sorted(set(UNSAFE.findall(text)))


# ------------------------------------------------------------ the type itself
@settings(max_examples=500, deadline=None)
@given(HOSTILE_TEXT)
def test_user_text_shows_nothing_a_terminal_acts_on(raw: str) -> None:
    shown = UserText(raw)
    assert not unsafe(shown.shown.replace("\n", "\\n")) and shown.shown.isprintable()
    assert escaped(shown.shown) == shown.shown  # wrapped once: wrapping what is shown changes nothing
    assert str(shown) == shown.shown and f"{shown}" == shown.shown and shown.raw == raw
    assert shown.__rich__().plain == shown.shown and not shown.__rich__().spans  # literal: no markup parsed
    assert all(ch in shown.shown for ch in raw if ch.isprintable())
    valid_unicode(raw).encode("utf-8")  # whatever a file name held
    assert cell_len(shown.clip_middle(7).shown) <= 7 and shown.clip_middle(7).raw == raw


def test_user_text_spells_undecodable_bytes_as_the_bytes() -> None:
    name = b"sess-\xff\xfe.lock".decode("utf-8", "surrogateescape")
    assert UserText(name).shown == "sess-\\xff\\xfe.lock" == valid_unicode(name)
    assert UserText("a\u202eb\x9bc").shown == "a\\u202eb\\x9bc"
    with pytest.raises(TypeError):
        UserText(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("ms", [1e17, -1e17, float("nan"), float("inf"), 2**70])
def test_times_no_clock_can_show_are_a_marker(ms: float) -> None:
    assert clock_time(ms) == clock_datetime(ms) == TIME_OUT_OF_RANGE and clock_zone(ms) == ""
    assert clock_datetime(NOW) == "2026-02-18 00:15:35" and clock_zone(NOW) == "UTC"  # (the tests' zone)


# ------------------------------------------------------- rendering, without an app
@pytest.fixture(scope="module")
def snapshot():
    return SnapshotBuilder(DirectoryStore(FIXTURE), clock=ManualClock(NOW), check_pids=False).build()


def rendered(*renderables: object) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None, force_terminal=False, markup=True)
    for renderable in renderables:
        console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=HOSTILE_TEXT, key=HOSTILE_TEXT, far=st.sampled_from([1e17, -1e17, NOW]))
def test_details_and_status_show_any_record_literally(snapshot, text: str, key: str, far: float) -> None:
    """Every string of an instance (and an unknown key's name) through the details screen and ``status``."""
    view = snapshot.instance(A)
    fields = {name: text for name in ("instance_id", "session_id", "cwd", "hostname", "instance_name")}
    info = InstanceInfo.model_construct(**{**view.info.__dict__, **fields})
    object.__setattr__(info, "__pydantic_extra__", {key: text, "[/]": text})
    stats = StealingStats.model_construct(**{**snapshot.instance("sess-7f3e9a01-pid48377-mlr8kumx-q0zz").stats.__dict__, "last_success_at": far})
    hostile = view._replace(info=info, stats=stats, problem=text)
    shown = rendered(*describe(hostile, snapshot))
    assert not unsafe(shown.replace("\n", "")), shown
    assert UserText(text).shown.split("\n")[0][:20] in shown.replace("\n", "")
    report = render(dataclasses.replace(snapshot, instances=(hostile, *snapshot.instances[1:])), width=400)
    assert not unsafe(report.replace("\n", ""))


# ------------------------------------------------------------ the pilot
@pytest.fixture
def hostile_fleet(fleet: Path) -> tuple[Path, dict[str, str]]:
    markers = write_hostile_records(fleet)
    freeze_mtimes(fleet)
    return fleet, markers


async def press_everything(pilot, app: PiDashApp, only: str = "") -> int:
    """Enter, x, d on every instance row, r on every lock row (those whose key holds ``only``);
    yes to every question. Returns the keys pressed."""
    pressed = 0
    table = app.query_one(InstancesTable)
    for key in [k for k in table.row_keys if only in k]:
        for keys in (("enter",), ("escape",), ("x",), ("d",)):
            if key not in table.row_keys:
                break  # removed by x
            await select(pilot, table, key)
            await pilot.press(*keys)
            pressed += 1
            if isinstance(app.screen, ConfirmScreen):
                await pilot.press("y")
                await app.workers.wait_for_complete()
                await pilot.pause()
            if isinstance(app.screen, DetailsScreen):
                await pilot.press("escape")
    await pilot.press("6")  # the locks pane (compact) or just a key (wide)
    locks = app.query_one(LocksTable)
    for key in [k for k in locks.row_keys if only in k]:
        if key not in locks.row_keys:
            continue
        await select(pilot, locks, key)
        await pilot.press("r")
        pressed += 1
        if isinstance(app.screen, ConfirmScreen):
            await pilot.press("y")
            await app.workers.wait_for_complete()
            await pilot.pause()
    return pressed


def assert_shown_literally(svg: str, markers: dict[str, str]) -> None:
    text = screen_text(svg)
    assert not unsafe(svg.replace("\n", "")), unsafe(svg)
    shown = 0
    for found in re.finditer(r"MK(\d\d)Q", text):
        assert found.group() in markers
        after = text[found.end() :]
        assert after[:1] in ("\\", "…", "", " ", "│"), after[:20]  # the payload's ESC as "\x1b", or cut
        shown += after.startswith("\\x1b]0;PWNED")
    assert shown, "no marker on screen"


@pytest.mark.slow
async def test_every_key_on_every_row_of_a_hostile_fleet(hostile_fleet: tuple[Path, dict[str, str]]) -> None:
    root, markers = hostile_fleet
    app = make_app(DirectoryStore(root))
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        table = app.query_one(InstancesTable)
        hostile_rows = [k for k in table.row_keys if "hostile" in k or "\udcff" in k]
        assert len(hostile_rows) == 3, table.row_keys
        assert_shown_literally(app.export_screenshot(), markers)
        # Enter on the instance whose record has a key named "[/]" and steals at 1e17: its details open.
        await select(pilot, table, "sess-hostile01-pid7001-h-alive")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailsScreen)
        screen = app.screen
        details = rendered(*describe(screen.view, screen.snapshot))  # what it composed its widgets of
        assert "MK02Q\\x1b]0;PWNED" in screen_text(app.export_screenshot())
        assert "[/] (extra)" in details and "MK02Q\\x1b]0;PWNED" in details
        # Its stealing statistics say lastSuccessAt 1e17: a marker there, or (validated in core) a problem.
        assert ("last success" in details and TIME_OUT_OF_RANGE in details) or "stealing-stats" in problems_text(app), details
        await pilot.press("escape")
        pressed = await press_everything(pilot, app)
        assert app.is_running
        assert_shown_literally(app.export_screenshot(), markers)
        # The dead ones are gone. Removing the one whose file name is not UTF-8 may fail in core
        # (its event cannot be encoded): then that is said and listed, and nothing else is lost.
        leftover = [k for k in table.row_keys if "h-dead" in k]
        assert all("\udcff" in k for k in leftover), leftover
        if leftover:
            assert any(s == "error" and "undecodable" in m for m, s in notices) and "action-failed" in problems_text(app)
        assert {A, G_KEY} <= set(table.row_keys)
    assert pressed > 40
    assert all(UNSAFE.search(message) is None for message, _ in notices), notices


async def test_a_record_that_raises_while_rendered_is_a_problem_not_a_crash(fleet: Path, monkeypatch) -> None:
    real = InstancesTable._row

    def row(self, view, *rest):
        if view.key == E:
            raise ValueError("year 3170843 is out of range")
        return real(self, view, *rest)

    monkeypatch.setattr(InstancesTable, "_row", row)
    app = make_app(DirectoryStore(fleet))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        table = app.query_one(InstancesTable)
        cells = [cell.plain for cell in table.get_row(E)]
        assert cells[0] == E and "cannot show this record: ValueError: year 3170843" in cells[1]
        assert f"instances/{E}: cannot show this record" in problems_text(app).replace("\n", "")
        assert table.get_row(A)[0].plain == app.snapshot.label(A) == "1a2b"  # the others are as ever


# ------------------------------------------------------- a failing store
class FailingStore(DirectoryStore):
    """A directory store whose writes fail while ``failure`` is set (disk full, Redis gone)."""

    failure: Exception | None = None

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def create(self, *args, **kwargs):
        self._check()
        return super().create(*args, **kwargs)

    def delete_if(self, *args, **kwargs):
        self._check()
        return super().delete_if(*args, **kwargs)

    def replace_if(self, *args, **kwargs):
        self._check()
        return super().replace_if(*args, **kwargs)

    def delete(self, *args, **kwargs):
        self._check()
        return super().delete(*args, **kwargs)


@pytest.mark.parametrize(
    "failure",
    [StoreError("redis://127.0.0.1:6379/0 is unreachable"), OSError(errno.ENOSPC, "No space left on device"), RuntimeError("bug")],
    ids=["store-error", "disk-full", "anything"],
)
async def test_a_store_that_fails_mid_action_leaves_the_app_running(fleet: Path, failure: Exception) -> None:
    store = FailingStore(fleet)
    app = make_app(store)
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(InstancesTable)
        store.failure = failure
        for key, action in ((A, "d"), (E, "x")):
            await select(pilot, table, key)
            await pilot.press(action)
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert app.is_running
        await pilot.press("6")
        await select(pilot, app.query_one(LocksTable), app.query_one(LocksTable).row_keys[1])
        await pilot.press("r", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        reason = str(failure)
        failed = [(m, s) for m, s in notices if "failed" in m]
        assert [s for _, s in failed] == ["error"] * 3 and all(reason in m for m, _ in failed), notices
        problems = problems_text(app)
        assert problems.count("action-failed") == 3 and reason in problems, problems
        # The store is back: the same action now works.
        store.failure = None
        await select(pilot, table, A)
        await pilot.press("d", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert notices[-1][1] == "information" and "drain requested" in notices[-1][0]
    assert (fleet / "instances" / f"{E}.lock").exists()  # nothing was removed while the store failed


# ------------------------------------------------- varied hostile text, the whole app
@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=HOSTILE_TEXT.filter(lambda t: "/" not in t))
async def test_any_payload_on_every_row(tmp_path_factory: pytest.TempPathFactory, payload: str) -> None:
    root = tmp_path_factory.mktemp("payload") / "runtime"
    shutil.copytree(FIXTURE, root)
    write_hostile_records(root, payload)
    freeze_mtimes(root)
    app = make_app(DirectoryStore(root))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await press_everything(pilot, app, only="MK")
        await press_everything(pilot, app, only="h-")
        assert app.is_running
        assert not unsafe(app.export_screenshot().replace("\n", ""))
