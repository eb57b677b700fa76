"""Key D starts the demo fleet in a worker: the screen stays live while six processes spawn."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.clock import ManualClock
from core.store import DirectoryStore
from pi_dashboard.screens.help import HelpScreen
from pi_dashboard.widgets.instances_table import InstancesTable

from .conftest import A, make_app, record_notices, until

pytestmark = pytest.mark.anyio


class SlowLauncher:
    """Stands in for the demo launcher: it blocks until the test has seen the screen answer a key."""

    def __init__(self, fleet: Path, fail: bool = False) -> None:
        self.fleet = fleet
        self.fail = fail
        self.release = threading.Event()
        self.calls = 0
        self.released_in_time: bool | None = None

    def __call__(self) -> DirectoryStore:
        self.calls += 1
        self.released_in_time = self.release.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        return DirectoryStore(self.fleet)


async def test_the_screen_answers_keys_while_the_demo_starts(tmp_path: Path, fleet: Path, frozen: ManualClock) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    launcher = SlowLauncher(fleet)
    app = make_app(DirectoryStore(empty), frozen, start_demo=launcher)
    async with app.run_test(size=(160, 48)) as pilot:
        assert app.query_one(InstancesTable).row_count == 0
        await pilot.press("D")
        await pilot.press("D")  # a second press while it starts does not start a second fleet
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), 5, "help opens while the demo starts")
        launcher.release.set()
        await pilot.press("escape")
        await until(pilot, lambda: A in app.query_one(InstancesTable).row_keys, 10, "the demo fleet is shown")
    assert launcher.released_in_time is True
    assert launcher.calls == 1


async def test_a_demo_that_cannot_start_is_a_notice(tmp_path: Path, fleet: Path, frozen: ManualClock) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    launcher = SlowLauncher(fleet, fail=True)
    launcher.release.set()
    app = make_app(DirectoryStore(empty), frozen, start_demo=launcher)
    async with app.run_test(size=(160, 48)) as pilot:
        notices = record_notices(app)
        await pilot.press("D")
        await until(pilot, lambda: any("No space left" in message and severity == "error" for message, severity in notices), 5, "the failure is a notice")
        await pilot.press("D")  # and it may be tried again
        await until(pilot, lambda: launcher.calls == 2, 5, "a second try")
        assert app.query_one(InstancesTable).row_count == 0
