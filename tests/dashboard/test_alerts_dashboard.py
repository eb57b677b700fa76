"""Alerts in the dashboard: each condition of the test fleet is one notification and one line
in the event pane when it starts, and the sinks get the same alerts."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.alerts import AlertRules
from core.clock import ManualClock
from core.store import DirectoryStore
from pi_dashboard.alerting import AlertSinks

from .conftest import C, E, F, event_lines, make_app, record_notices

pytestmark = pytest.mark.anyio


async def test_the_fleets_conditions_are_notified_once(fleet: Path, frozen: ManualClock, tmp_path: Path) -> None:
    jsonl = tmp_path / "alerts.jsonl"
    errors: list[str] = []
    sinks = AlertSinks(None, str(jsonl), errors.append)
    app = make_app(DirectoryStore(fleet), frozen, alerts=(AlertRules(), sinks))
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        app._check_alerts(app.source.build_now().snapshot)  # the same fleet again: nothing new
        await pilot.pause()
        lines = [line for line in event_lines(app) if "alert" in line]
    sinks.close()
    warned = [message for message, severity in notices if severity == "warning"]
    assert any(m.startswith(f"{C} is stale") for m in warned) and any(m.startswith(f"{E} is dead") for m in warned)
    assert any("anthropic:claude-sonnet-4 backs off" in m for m in warned)
    assert any(F in m and "corrupt" in m for m in warned)
    assert len(warned) == len(set(warned)) == len(lines)
    assert len(jsonl.read_text().splitlines()) == len(warned) and errors == []
