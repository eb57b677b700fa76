"""``pi-dash --read-only``: no action that changes the fleet is offered, and none can write.

The pilot presses every key of every action (``pi_dashboard.actions.ACTIONS``)
with an instance and a lock selected, answers yes to anything asked, then calls
the fleet-changing actions directly as well; the coordination directory must be
byte for byte, name for name and mode for mode what it was.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from core.clock import ManualClock
from core.store import DirectoryStore
from pi_dashboard.actions import ACTIONS, FLEET_CHANGING
from pi_dashboard.app import DashCommands, PiDashApp
from pi_dashboard.screens.confirm import ConfirmScreen
from pi_dashboard.screens.help import HelpScreen
from pi_dashboard.widgets.instances_table import InstancesTable

from .conftest import A, E, make_app, record_notices, screen_text, select

pytestmark = pytest.mark.anyio


def tree_hash(root: Path) -> str:
    """Every path under ``root`` with its type, mode, size, mtime and content."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest.update(f"{path.relative_to(root)}|{st.st_mode}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


async def _palette_names(app: PiDashApp) -> list[str]:
    provider = DashCommands(app.screen)
    return [name for name, _, _ in provider._commands()]


async def test_every_action_key_changes_no_file(fleet: Path, frozen: ManualClock) -> None:
    before = tree_hash(fleet)
    app = make_app(DirectoryStore(fleet, read_only=True), frozen)
    notices = record_notices(app)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        shown = screen_text(app.export_screenshot())
        footer = shown.splitlines()[-1]
        assert "(read-only)" in shown.splitlines()[0]
        assert "Quit" in footer and "Filter" in footer
        assert "Drain" not in footer and "Release lock" not in footer
        palette = await _palette_names(app)
        assert "Filter instances" in palette and not any(n.startswith(("Drain", "Release", "Remove")) for n in palette)

        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        help_text = screen_text(app.export_screenshot())
        assert "Read-only" in help_text and "drain the selected" not in help_text
        await pilot.press("escape")

        table = app.query_one(InstancesTable)
        keys = [key for entry in ACTIONS if entry.action and entry.action != "quit" for key in entry.keys.split(",")]
        pressed = 0
        for selected in (A, E):  # an alive instance (drain) and a dead one (remove)
            await select(pilot, table, selected)
            for key in [*keys, "5", "down", "r"]:  # and a lock selected in the locks pane
                await pilot.press(key)
                pressed += 1
                if isinstance(app.screen, ConfirmScreen):
                    await pilot.press("y")
                while app.screen is not app.screen_stack[0]:
                    await pilot.press("escape")
                await pilot.pause()
        assert pressed >= 2 * len(keys)

        # Not merely hidden: run directly, each is asked, answered yes, and refused by the store.
        await select(pilot, table, E)
        for action in sorted(FLEET_CHANGING):
            getattr(app, f"action_{action}")()
            await pilot.pause()
            if isinstance(app.screen, ConfirmScreen):
                await pilot.press("y")
                await pilot.pause()
        await pilot.press("q")
    refused = [message for message, severity in notices if "read-only" in message]
    assert refused and all(severity == "warning" for message, severity in notices if "read-only" in message)
    assert tree_hash(fleet) == before


def test_the_directory_is_never_opened_for_writing(fleet: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Building snapshots and attempting every write opens no file with a write flag."""
    from core.snapshot import SnapshotBuilder
    from core.store import INSTANCES, ReadOnlyStore

    opened: list[tuple[str, int]] = []
    real_open = os.open

    def watching_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append((str(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", watching_open)
    store = DirectoryStore(fleet, read_only=True)
    builder = SnapshotBuilder(store, clock=ManualClock(), check_pids=False)
    builder.build()
    builder.build()
    for attempt in (lambda: store.write(INSTANCES, A, b"{}"), lambda: store.delete(INSTANCES, A), store.ensure_layout):
        with pytest.raises(ReadOnlyStore):
            attempt()
    assert opened, "the snapshot opened nothing at all: this test would prove nothing"
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    assert [(path, flags) for path, flags in opened if flags & writing] == []
