"""Screenshots of every view of the dashboard over the test fleet, at 80x24 and 160x48.

The app runs with ``live=False`` (one synchronous build, no watcher thread) and a
frozen clock, from a relative root inside ``tmp_path`` (so the header names the
same directory on every run).  Regenerate with ``--snapshot-update`` and look
at the SVGs before committing them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.clock import ManualClock
from core.store import DirectoryStore
from pi_dashboard.app import PiDashApp

from .conftest import DEMO_NOW, FIXTURE, G, G_CWD, G_MODEL, make_app, screen_text, write_fleet

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]
MISSING_ROOT = Path("/nonexistent/pi-dash-tests/runtime")


@pytest.fixture
def app(fleet: Path, monkeypatch: pytest.MonkeyPatch) -> PiDashApp:
    monkeypatch.chdir(fleet.parent)
    return make_app(DirectoryStore(Path(fleet.name)))


@pytest.mark.parametrize("size", SIZES)
def test_main_view(snap_compare, app: PiDashApp, size: tuple[int, int]) -> None:
    """Wide: every pane in a grid.  Small: the instances and the parallelism pane."""
    assert snap_compare(app, terminal_size=size)


@pytest.mark.parametrize("pane", range(1, 8))
def test_compact_pane(snap_compare, app: PiDashApp, pane: int) -> None:
    """80x24 shows the instances and the pane picked with keys 1..7 (focused)."""
    assert snap_compare(app, terminal_size=(80, 24), press=[str(pane)])


def open_details(downs: int = 0):
    """Move the cursor ``downs`` rows, then open the details screen.

    Through the action, not the enter key: enter is taken by the focused table
    (see test_pilot.py::test_enter_opens_the_details_screen, a known bug).
    """

    async def run_before(pilot) -> None:
        await pilot.press(*["down"] * downs)
        pilot.app.action_details()

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_details(snap_compare, app: PiDashApp, size: tuple[int, int]) -> None:
    """Everything about the first instance (A: queue, parallelism, models)."""
    assert snap_compare(app, terminal_size=size, run_before=open_details())


def test_details_of_hostile_instance(snap_compare, app: PiDashApp) -> None:
    """The details of G: markup and escapes in id, cwd, model, queue entry, extra key, all literal."""
    assert snap_compare(app, terminal_size=(160, 48), run_before=open_details(3))


@pytest.mark.parametrize("size", SIZES)
def test_help(snap_compare, app: PiDashApp, size: tuple[int, int]) -> None:
    assert snap_compare(app, terminal_size=size, press=["question_mark"])


@pytest.mark.parametrize("size", SIZES)
def test_drain_confirmation(snap_compare, app: PiDashApp, size: tuple[int, int]) -> None:
    assert snap_compare(app, terminal_size=size, press=["d"])


@pytest.mark.parametrize("size", SIZES)
def test_no_fleet(snap_compare, size: tuple[int, int]) -> None:
    """A root that does not exist: the header says why, the body says what to do."""
    assert not MISSING_ROOT.exists()
    assert snap_compare(make_app(DirectoryStore(MISSING_ROOT)), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_high_contrast_theme(snap_compare, app: PiDashApp, size: tuple[int, int]) -> None:
    assert snap_compare(app, terminal_size=size, press=["t"])


@pytest.mark.parametrize("size", SIZES)
def test_light_theme(snap_compare, app: PiDashApp, size: tuple[int, int]) -> None:
    assert snap_compare(app, terminal_size=size, press=["t", "t"])


# ------------------------------------------------------------ the demo fleet
DEMO_SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48"), pytest.param((200, 60), id="200x60")]
DEMO_LOOKS = [
    pytest.param(("pi-dark", False), id="dark"),
    pytest.param(("pi-light", False), id="light"),
    pytest.param(("pi-high-contrast", False), id="high-contrast"),
    pytest.param(("pi-dark", True), id="no-color"),
]


@pytest.mark.parametrize("look", DEMO_LOOKS)
@pytest.mark.parametrize("size", DEMO_SIZES)
def test_demo_fleet(snap_compare, demo_fleet: Path, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], look: tuple[str, bool]) -> None:
    """The demo's fleet (tests/fixtures/demo_fleet, captured from ``pi-dash demo``) in each
    theme and under NO_COLOR, where every state still reads as a word or a symbol."""
    theme, no_color = look
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")  # read (and taken out of the environment) by the app
    monkeypatch.chdir(demo_fleet.parent)
    app = make_app(DirectoryStore(Path(demo_fleet.name)), ManualClock(DEMO_NOW), theme=theme)
    assert snap_compare(app, terminal_size=size)


# ------------------------------------------------------------ beyond pixels
def _shown(text: str) -> str:
    """How the dashboard must show user text: control characters as escapes, markup as typed."""
    return text.replace("\x1b", "\\x1b").replace("\x07", "\\x07")


@pytest.mark.anyio
async def test_user_text_is_shown_as_typed(app: PiDashApp) -> None:
    """Markup in ids, cwd, models and events reaches the screen literally; no escape byte does."""
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        main = app.export_screenshot()
        await pilot.press("down", "down", "down")
        app.action_details()
        await pilot.pause()
        details = app.export_screenshot()
    for svg in (main, details):
        assert "\x1b" not in svg and "\x07" not in svg
    shown = screen_text(main)
    assert _shown(G) in shown  # instances table and event log
    assert "[bold red]x[/]" in shown
    detail_text = screen_text(details)
    for value in (G, G_CWD, G_MODEL):
        assert _shown(value) in detail_text, value
    assert "[red]extra[/]" in detail_text  # an unknown key, kept and shown


@pytest.mark.anyio
async def test_small_terminal_header_keeps_the_problem_count(app: PiDashApp) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        shown = screen_text(app.export_screenshot())
    assert "1 problem" in shown and "anthropic 20/41" in shown  # 40.5 requests/min: whole requests


@pytest.mark.anyio
async def test_wide_locks_pane_shows_which_locks_expired(app: PiDashApp) -> None:
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        shown = screen_text(app.export_screenshot())
    row = next(line for line in shown.splitlines() if "steal:e5e5" in line)  # E's queue, by its label
    assert "expired" in row and "c0ff" in row  # held by C


def test_fixture_is_what_the_generator_writes(tmp_path: Path) -> None:
    """The committed fixture is reproducible: write_fleet() makes exactly these bytes."""
    fresh = tmp_path / "fresh"
    write_fleet(fresh)

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert tree(fresh) == tree(FIXTURE)
