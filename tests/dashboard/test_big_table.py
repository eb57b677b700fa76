"""A table of 10,000 rows renders only the rows on screen: it sorts and measures every row by
its cells' plain values, and builds a screen line only when that line is shown."""

from __future__ import annotations

from typing import Any

import pytest
from rich.text import Text
from textual.app import App, ComposeResult
from textual.strip import Strip

from pi_dashboard.widgets.keyed_table import Cell, Column, KeyedTable, Row

pytestmark = pytest.mark.anyio
ROWS = 10_000
SIZE = (80, 24)


class BigTable(KeyedTable):
    COLUMNS = (Column("name", "Name"), Column("square", "Square", "right", descending=True), Column("parity", "Parity"))
    rendered = 0  # screen lines built (the header's included)

    def _render_cells(self, cells: Row, *how: Any) -> Strip:
        type(self).rendered += 1
        return super()._render_cells(cells, *how)


class TableApp(App[None]):
    texts = 0  # rich Texts made while the rows were built and the table took them

    def compose(self) -> ComposeResult:
        yield BigTable()

    def on_mount(self) -> None:
        made = Text.__init__

        def counted(text: Text, *args: object, **kwargs: object) -> None:
            self.texts += 1
            made(text, *args, **kwargs)

        Text.__init__ = counted  # type: ignore[method-assign]
        try:
            rows = {f"row-{n:05d}": (Cell(f"row {n:05d}"), Cell(f"{n * n:,}", n * n), Cell("odd" if n % 2 else "even")) for n in range(ROWS)}
            self.query_one(BigTable).sync(rows)
        finally:
            Text.__init__ = made  # type: ignore[method-assign]


async def test_only_about_a_screenful_of_10000_rows_is_rendered() -> None:
    BigTable.rendered = 0
    app = TableApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.query_one(BigTable)
        screenful = table.size.height  # the header and the body's lines
        assert table.row_count == ROWS and table.row_keys[:2] == ["row-00000", "row-00001"]
        assert app.texts == 0  # sorted and measured by plain values
        assert 0 < BigTable.rendered <= screenful
        table.focus()
        await pilot.press("G")  # the last row: one more screenful
        await pilot.pause()
        assert table.selected_key == "row-09999"
        assert BigTable.rendered <= 2 * screenful
        table.sort_on("square")  # largest first: the cursor's row (the largest) stays under the cursor
        await pilot.pause()
        assert table.row_keys[0] == table.selected_key == "row-09999"
        assert BigTable.rendered <= 3 * screenful
        assert table.virtual_size.width == sum(width + 2 for _, width in table._fit.shown)
        assert dict(table._fit.shown)[1] == len(f"{(ROWS - 1) ** 2:,}")  # measured over every row
