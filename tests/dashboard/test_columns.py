"""Columns fit their pane: they shrink (cut in the middle), then drop, lowest priority first;
a table too narrow for what never drops scrolls with its label column in place."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.clock import ManualClock
from core.store import DirectoryStore
from pi_dashboard.widgets.instances_table import InstancesTable
from pi_dashboard.widgets.keyed_table import PADDING, Column, KeyedTable, fit_columns

from .conftest import DEMO_NOW, NOW, make_app

pytestmark = pytest.mark.anyio

columns_and_widths = st.integers(1, 8).flatmap(
    lambda n: st.tuples(
        st.lists(
            st.builds(
                lambda drop, shrink: Column("k", "L", drop=drop, shrink=shrink),
                st.integers(0, 5),
                st.one_of(st.none(), st.integers(1, 20)),
            ),
            min_size=n,
            max_size=n,
        ),
        st.lists(st.integers(1, 40), min_size=n, max_size=n),
        st.integers(0, 200),
    )
)


@settings(max_examples=500, deadline=None)
@given(columns_and_widths)
def test_lower_priority_columns_give_way_first(case) -> None:
    columns, natural, available = case
    fit = fit_columns(columns, natural, available)
    shown = dict(fit.shown)

    def narrowest(i: int) -> int:
        return min(natural[i], columns[i].shrink) if columns[i].shrink is not None else natural[i]

    assert 0 in shown  # the label column stays
    assert fit.width == sum(w + 2 * PADDING for w in shown.values())
    assert all(narrowest(i) <= width <= natural[i] for i, width in shown.items())
    if sum(n + 2 * PADDING for n in natural) <= available:
        assert fit.shown == tuple(enumerate(natural))  # room for all: nothing is touched
        return
    order = sorted((i for i in range(1, len(columns)) if columns[i].drop > 0), key=lambda i: (-columns[i].drop, -i))
    dropped = [i for i in range(len(columns)) if i not in shown]
    assert dropped == sorted(order[: len(dropped)])  # the lowest priorities went, in order
    touched = [i for i, width in shown.items() if width < natural[i]]
    if any(columns[i].drop > 0 and i > 0 for i in touched):
        assert len(touched) == 1  # a column shrinks only once all of lower priority are gone
    if fit.width > available:  # scrolls only with every droppable column gone, the rest at their narrowest
        assert not [i for i in order if i in shown]
        assert all(width == narrowest(i) for i, width in shown.items())
    else:
        assert fit.width == available or dropped  # shrunk exactly to the pane, or a drop left room


def test_lower_priority_columns_shrink_then_drop() -> None:
    columns = [Column("a", "A"), Column("b", "B", drop=2, shrink=3), Column("c", "C", drop=1), Column("d", "D", shrink=2)]
    natural = [5, 8, 4, 6]  # 31 cells with padding
    assert fit_columns(columns, natural, 31).shown == ((0, 5), (1, 8), (2, 4), (3, 6))
    assert fit_columns(columns, natural, 27).shown == ((0, 5), (1, 4), (2, 4), (3, 6))  # b shrinks first
    assert fit_columns(columns, natural, 25).shown == ((0, 5), (2, 4), (3, 6))  # not enough: b drops
    assert fit_columns(columns, natural, 21).shown == ((0, 5), (2, 4), (3, 6))
    assert fit_columns(columns, natural, 20).shown == ((0, 5), (3, 6))  # then c (it cannot shrink)
    assert fit_columns(columns, natural, 12).shown == ((0, 5), (3, 3))  # then what never drops shrinks
    assert fit_columns(columns, natural, 5).shown == ((0, 5), (3, 2))  # too narrow for the rest: it scrolls


async def _tables_at(root: Path, monkeypatch, size: tuple[int, int], pane: str | None = None):
    monkeypatch.chdir(root.parent)
    clock = ManualClock(DEMO_NOW if root.name == "demo" else NOW)
    app = make_app(DirectoryStore(Path(root.name)), clock)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        if pane:
            await pilot.press(pane)
            await pilot.pause()
        return {t.id: (t.shown_columns, t.virtual_size.width, t.scrollable_content_region.width) for t in app.query(KeyedTable) if t.display}


@pytest.fixture(params=["test", "demo"])
def any_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The test fleet, then the demo's (in a folder named ``demo``)."""
    if request.param == "test":
        return request.getfixturevalue("fleet")
    demo = tmp_path / "demo"
    request.getfixturevalue("demo_fleet").rename(demo)
    return demo


async def test_no_table_scrolls_sideways_at_160x48(any_fleet: Path, monkeypatch) -> None:
    tables = await _tables_at(any_fleet, monkeypatch, (160, 48))
    assert set(tables) == {"instances", "parallelism", "backoff", "locks"}
    for name, (_, wide, room) in tables.items():
        assert wide <= room, name
    assert tables["instances"][0][:7] == ["label", "status", "beat", "pending", "limit", "wait", "cwd"]


async def test_80x24_keeps_label_status_beat_pending_and_limit(any_fleet: Path, monkeypatch) -> None:
    for pane in "1256":  # each table below the instances
        tables = await _tables_at(any_fleet, monkeypatch, (80, 24), pane)
        for name, (_, wide, room) in tables.items():
            assert wide <= room, (pane, name)
        assert tables["instances"][0][:5] == ["label", "status", "beat", "pending", "limit"]
        assert "pid" not in tables["instances"][0]  # the lowest priority went first


async def test_a_table_too_narrow_scrolls_with_its_label_in_place(fleet: Path, monkeypatch) -> None:
    monkeypatch.chdir(fleet.parent)
    app = make_app(DirectoryStore(Path(fleet.name)))
    async with app.run_test(size=(40, 24)) as pilot:
        await pilot.pause()
        table = app.query_one(InstancesTable)
        assert table.virtual_size.width > table.scrollable_content_region.width  # what never drops is wider
        before = [table.render_line(y).text for y in range(3)]
        table.scroll_to(x=6, animate=False)
        await pilot.pause()
        after = [table.render_line(y).text for y in range(3)]
    label_width = dict(table._fit.shown)[0] + 2 * PADDING
    for old, new in zip(before, after):
        assert new[:label_width] == old[:label_width]  # the label column did not move
        assert new[label_width:] != old[label_width:]  # the rest did
