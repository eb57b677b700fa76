"""A DataTable kept in step with keyed rows by changing only what differs.

Rebuilding a table on every snapshot would flicker and lose the cursor and the
scroll position; here rows are added, removed and individual cells updated in
place, the cursor stays on the same row (by key, not by index) and the sort
order is reapplied only when something changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

Row = tuple[Text, ...]
SHORT_ID = 28  # instance ids in panes other than the instances table are cut to this


class Cell(Text):
    """A cell's text plus the value it sorts by (ages, counts: not their spelling)."""

    def __init__(self, text: str = "", sort_value: Any = None, **kwargs: Any) -> None:
        super().__init__(text, **kwargs)
        self.sort_value = text if sort_value is None else sort_value


def by_value(cell: Any) -> Any:
    """Sort key for :class:`Cell` columns."""
    return cell.sort_value if isinstance(cell, Cell) else str(cell)


class KeyedTable(DataTable):
    """Subclasses declare ``COLUMNS`` ((key, label) pairs) and feed :meth:`sync`."""

    COLUMNS: Sequence[tuple[str, str]] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._rows: dict[str, Row] = {}
        self._sort_column: str | None = None
        self._sort_key: Callable[[Any], Any] | None = None
        self._sort_reverse = False
        self._widths = {key: len(label) for key, label in self.COLUMNS}
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)

    @property
    def selected_key(self) -> str | None:
        if not self._rows or self.cursor_row < 0 or self.cursor_row >= self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def sync(self, rows: Mapping[str, Row]) -> None:
        """Make the table show exactly ``rows`` (key -> cells), touching only differences."""
        selected = self.selected_key
        changed = False
        gone = [k for k in self._rows if k not in rows]
        if len(gone) > 50:
            # Removing rows one by one costs more each time: start afresh instead.
            self.clear()
            self._rows = {}
            gone = []
            changed = True
        for key in gone:
            self.remove_row(key)
            del self._rows[key]
            changed = True
        columns = [key for key, _ in self.COLUMNS]
        for key, cells in rows.items():
            old = self._rows.get(key)
            if old is None:
                self.add_row(*cells, key=key)
                for column, cell in zip(columns, cells):
                    self._widths[column] = max(self._widths[column], cell.cell_len)
                changed = True
            elif old != cells:
                for column, before, after in zip(columns, old, cells):
                    if before != after:
                        # Re-measuring a column costs a pass over every row: only when it must grow.
                        wider = after.cell_len > self._widths[column]
                        if wider:
                            self._widths[column] = after.cell_len
                        self.update_cell(key, column, after, update_width=wider)
                        changed = changed or column == self._sort_column
            self._rows[key] = cells
        if changed and self._sort_column is not None:
            self.sort(self._sort_column, key=self._sort_key, reverse=self._sort_reverse)
        if changed and selected in self._rows:
            self.move_cursor(row=self.get_row_index(selected), animate=False)

    def sort_by(self, column: str, key: Callable[[Any], Any] | None = None, reverse: bool = False) -> None:
        self._sort_column, self._sort_key, self._sort_reverse = column, key, reverse
        if self._rows:
            selected = self.selected_key
            self.sort(column, key=key, reverse=reverse)
            if selected in self._rows:
                self.move_cursor(row=self.get_row_index(selected), animate=False)

    def restyle(self) -> None:
        """Forget what is shown so the next :meth:`sync` rewrites every cell (theme change)."""
        blank = tuple(Text() for _ in self.COLUMNS)
        self._rows = {key: blank for key in self._rows}
