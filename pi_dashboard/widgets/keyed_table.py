"""A keyed, sortable table that repaints only the screen lines whose cells changed.

Textual's DataTable forgets every rendered line when one cell changes and
repaints the whole table, so a fleet whose heartbeat ages tick every second
cost a full repaint of every table every second.  Here each row's rendered line
is cached by its key: a snapshot that changes three cells in three rows
refreshes exactly those three screen lines, and an unchanged snapshot
refreshes nothing.  The cursor follows its row (by key, not by index) through
sorting, filtering and updates; the header stays on the first line while the
body scrolls.

Every table sorts by any of its columns, the same way: ``s`` / ``S`` (the app's
keys, on the focused table) or a click on a header; the sorted column's header
carries an arrow.  The order comes from each :class:`Cell`'s sort value.

Columns fit the pane: each :class:`Column` says how far it may shrink (its text
cut in the middle, the one rule for long text) and when it gives way (``drop``:
higher first, shrinking then dropping; 0 never drops).  When even the columns that never drop, at their
narrowest, are wider than the pane, the table scrolls sideways with its first
column (the label) kept in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..actions import bindings
from ..messages import RecordUnshown
from ..text import UserText, clip_middle_text, escaped

PADDING = 1  # blank cells either side of every cell


class Column(NamedTuple):
    key: str
    label: str
    justify: str = "left"  # "left" or "right" (counts and durations line up on the right)
    descending: bool = False  # sorting on it starts largest first (most pending, oldest, longest)
    drop: int = 0  # when the pane is too narrow, columns shrink then drop, highest first; 0: never drops
    shrink: int | None = None  # the narrowest it may be cut to (in the middle); None: never cut
    help: str = ""  # what its figures mean (the help's glossary)


class Fit(NamedTuple):
    """The columns shown at one width: (column index, cells wide) each, left to right."""

    shown: tuple[tuple[int, int], ...]
    width: int  # cells of one full row, padding included

    @property
    def indexes(self) -> tuple[int, ...]:
        return tuple(index for index, _ in self.shown)


def fit_columns(columns: Sequence[Column], natural: Sequence[int], available: int, keep: int = 0) -> Fit:
    """Which columns show, how wide, in ``available`` cells.

    Every column starts at its natural width.  While the row is too wide, the
    column of highest ``drop`` still shown shrinks (as far as its ``shrink``
    lets it, no further than needed) and, if that is not enough, drops; of
    equal ``drop``, the rightmost goes first.  So a column loses cells only
    once every column of lower priority is gone.  Columns that never drop
    (``drop`` 0, the first column and ``keep``, the one sorted on) then
    shrink, rightmost first.  What still does not fit scrolls.
    """
    widths = dict(enumerate(natural))
    narrowest = [min(n, c.shrink) if c.shrink is not None else n for c, n in zip(columns, natural)]
    excess = sum(w + 2 * PADDING for w in natural) - available
    droppable = sorted((i for i, c in enumerate(columns) if c.drop > 0 and i not in (0, keep)), key=lambda i: (-columns[i].drop, -i))
    kept = sorted((i for i in widths if i not in droppable), reverse=True)
    for i in [*droppable, *kept]:
        if excess <= 0:
            break
        give = min(excess, widths[i] - narrowest[i])
        widths[i] -= give
        excess -= give
        if excess > 0 and i in droppable:
            excess -= widths.pop(i) + 2 * PADDING
    fitted = tuple(sorted(widths.items()))
    return Fit(fitted, sum(w + 2 * PADDING for _, w in fitted))


class Cell:
    """A cell's shown text, the value it sorts by (ages, counts: not their spelling) and its style.

    Plain values, not rich ``Text``: a table of 10,000 rows sorts and measures
    every cell but renders only the rows on screen, so building a ``Text`` per
    cell was most of a big fleet's first frame.  Text from the fleet comes as
    :class:`UserText` (shown escaped, sorted by what is shown); a ``str`` is the
    dashboard's own (figures, labels) and is escaped all the same, so a cell can
    never carry a control character.
    """

    __slots__ = ("plain", "sort_value", "style", "_cell_len")

    def __init__(self, text: str | UserText = "", sort_value: Any = None, style: Style | None = None) -> None:
        self.plain = text.shown if isinstance(text, UserText) else text if text.isprintable() else escaped(text)
        self.sort_value = self.plain if sort_value is None else sort_value
        self.style = style
        self._cell_len = -1

    @property
    def cell_len(self) -> int:
        """Terminal cells wide (escaped ASCII: one a character, the common case, measured at once)."""
        if self._cell_len < 0:
            self._cell_len = len(self.plain) if self.plain.isascii() else cell_len(self.plain)
        return self._cell_len

    def __str__(self) -> str:
        return self.plain

    def __repr__(self) -> str:
        return f"Cell({self.plain!r}, {self.sort_value!r}, {self.style!r})"

    def __eq__(self, other: object) -> bool:
        # A new colour or sort value is a change too.
        if not isinstance(other, Cell):
            return NotImplemented
        return self.plain == other.plain and self.sort_value == other.sort_value and self.style == other.style

    __hash__ = None  # type: ignore[assignment]


Row = tuple[Cell, ...]


def by_value(cell: Any) -> tuple[int, Any]:
    """The sort key of a cell: its sort value, numbers before tuples before text, so a
    column whose rows mix kinds (a record shown as unreadable, say) still sorts."""
    value = cell.sort_value if isinstance(cell, Cell) else str(cell)
    if isinstance(value, (int, float)):
        return (0, value)
    if isinstance(value, tuple):
        return (1, value)
    return (2, str(value))


ASCENDING, DESCENDING = "▲", "▼"


class KeyedTable(ScrollView, can_focus=True):
    """Subclasses declare ``COLUMNS`` (:class:`Column` or (key, label) pairs) and feed :meth:`sync`."""

    COLUMNS: ClassVar[Sequence[tuple[str, ...]]] = ()
    SORT: ClassVar[tuple[str, bool]] = ("", False)  # the first run's (column key, reversed); "": the first column
    COMPONENT_CLASSES: ClassVar[set[str]] = {"keyed-table--header", "keyed-table--cursor", "keyed-table--even-row"}
    BINDINGS: ClassVar[list[Binding]] = bindings("table")  # j/k, g/G, ctrl+d/u...: see actions.py

    class RowSelected(Message):
        """Enter (or a click on the row under the cursor) chose ``key``."""

        ALLOW_SELECTOR_MATCH = {"control"}

        def __init__(self, table: KeyedTable, key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> KeyedTable:
            return self.table

    class Sorted(Message):
        """A person changed the sort (a key or a header click): the app notes and remembers it."""

        def __init__(self, table: KeyedTable) -> None:
            super().__init__()
            self.table = table

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.columns = [Column(*spec) for spec in self.COLUMNS]
        self._rows: dict[str, Row] = {}
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        self._lines: dict[str, tuple[tuple[Style, bool, int, int], Strip]] = {}  # key -> (how, its screen line)
        self._header: Strip | None = None
        self._styles: dict[str, Style] = {}  # component class ("" for the body) -> its style, until styles change
        self._built: dict[str, tuple[object, Row]] = {}  # key -> (what its row was built from, the row)
        self._cursor = 0
        column, self._sort_reverse = self.SORT
        index = self._column_index(column)
        self._sort_column = 0 if index is None else index
        self._widths = self._measure()  # natural: the widest cell (or header) of each column
        self._fit = fit_columns(self.columns, self._widths, 1_000_000, keep=self._sort_column)
        self._fitted_for: tuple[int, tuple[int, ...], int] | None = None  # (available, natural widths, sorted on) of _fit

    # ------------------------------------------------------------- reading
    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def cursor_row(self) -> int:
        return self._cursor

    @property
    def row_keys(self) -> list[str]:
        """Row keys top to bottom, as shown."""
        return list(self._order)

    @property
    def selected_key(self) -> str | None:
        return self._order[self._cursor] if self._order else None

    def get_row(self, key: str) -> Row:
        return self._rows[key]

    def get_row_index(self, key: str) -> int:
        return self._index[key]

    # ------------------------------------------------------------- updating
    def sync(self, rows: Mapping[str, Row]) -> None:
        """Make the table show exactly ``rows`` (key -> cells), repainting only what differs."""
        selected = self.selected_key
        reshaped = rows.keys() != self._rows.keys()
        changed: list[str] = []
        reorder = reshaped
        widths = list(self._widths)
        for key, cells in rows.items():
            old = self._rows.get(key)
            if old is cells or old == cells:
                continue
            changed.append(key)
            self._lines.pop(key, None)
            if reshaped:
                continue  # reordered and measured anew below
            if not old or old[self._sort_column] != cells[self._sort_column]:
                reorder = True
            for column, cell in enumerate(cells):
                widths[column] = max(widths[column], cell.cell_len)
        self._rows = dict(rows)
        if reshaped:
            # Rows came or went: columns may shrink too, and lines of the departed go.
            widths = self._measure()
            self._lines = {key: line for key, line in self._lines.items() if key in self._rows}
            self._built = {key: built for key, built in self._built.items() if key in self._rows}
        if not changed and not reshaped:
            return
        if widths != self._widths:
            self._widths = widths
            self._refit()
            reorder = True  # everything repaints anyway
        if reorder:
            self._reorder(selected)
        else:
            self._refresh_rows(changed)

    def row_for(self, key: str, source: object, build: Callable[[], Row]) -> Row:
        """The row for ``key``, rebuilt only when ``source`` (what it shows) differs from last time.

        Building cells is most of a table's cost; at twenty snapshots a second
        nearly every row is what it was.
        """
        built = self._built.get(key)
        if built is not None and built[0] == source:
            return built[1]
        try:
            row = build()
        except Exception as exc:  # the last guard: a record that cannot be shown costs only its row
            row = self._unshown_row(key, exc)
        self._built[key] = (source, row)
        return row

    def _unshown_row(self, key: str, exc: Exception) -> Row:
        """The row of a record whose cells raised: its key and why, and a problem for the app."""
        reason = UserText(f"cannot show this record: {type(exc).__name__}: {exc}")
        self.post_message(RecordUnshown(UserText(f"{self.id or type(self).__name__}/{key}"), reason))
        cells = [Cell(UserText(key)), Cell(reason, style=Style(bold=True))]
        cells += [Cell("") for _ in self.columns[2:]]
        return tuple(cells[: len(self.columns)])

    # ------------------------------------------------------------- sorting
    @property
    def sort_state(self) -> tuple[str, bool]:
        """(column key, reversed): what the app remembers between runs."""
        return self.columns[self._sort_column].key, self._sort_reverse

    @property
    def sort_label(self) -> str:
        """The sorted column's header, arrow included (``Pend ▼``)."""
        column = self.columns[self._sort_column]
        return f"{column.label} {DESCENDING if self._sort_reverse else ASCENDING}"

    def sort_by(self, column: str, reverse: bool = False) -> bool:
        """Sort by the column keyed ``column``; False (and nothing changes) if there is none."""
        index = self._column_index(column)
        if index is None:
            return False
        self._sort_column, self._sort_reverse = index, reverse
        self._header = None
        self._widths = self._measure()  # the arrow moved: two header cells changed width
        self._refit()  # and the column sorted on stays, whatever the width
        self._reorder(self.selected_key)
        return True

    def sort_on(self, column: str) -> None:
        """A person picked ``column``: sorted by it already reverses, else its own direction first."""
        index = self._column_index(column)
        if index is None:
            return
        if index == self._sort_column:
            self.sort_by(column, not self._sort_reverse)
        else:
            self.sort_by(column, self.columns[index].descending)
        self._show_column(index)
        self.post_message(self.Sorted(self))

    def sort_next(self) -> None:
        """Sort by the next column (after the last, the first), each in its own direction first."""
        self.sort_on(self.columns[(self._sort_column + 1) % len(self.columns)].key)

    def sort_reversed(self) -> None:
        self.sort_on(self.columns[self._sort_column].key)

    def _column_index(self, key: str) -> int | None:
        if not key:
            return 0 if self.columns else None
        return next((n for n, c in enumerate(self.columns) if c.key == key), None)

    def _show_column(self, index: int) -> None:
        """Scroll sideways, if need be, so the column just sorted on (and its arrow) is in view
        (the first column always is; a column the pane's width left out cannot be)."""
        shown = self._fit.shown
        if not shown or index == shown[0][0]:
            return
        start = 0
        for column, width in shown:
            if column == index:
                break
            start += width + 2 * PADDING
        else:
            return
        end = start + width + 2 * PADDING
        frozen = shown[0][1] + 2 * PADDING
        scrolled, room = int(self.scroll_offset.x), self.scrollable_content_region.width
        if start < frozen + scrolled:
            self.scroll_to(x=start - frozen, animate=False)
        elif end > scrolled + room:
            self.scroll_to(x=end - room, animate=False)

    def _column_at(self, x: int) -> Column | None:
        """The column shown under ``x`` cells from the table's left edge (the first column stays put)."""
        shown = self._fit.shown
        if not shown:
            return None
        if x >= shown[0][1] + 2 * PADDING:
            x += int(self.scroll_offset.x)
        right = 0
        for index, width in shown:
            right += width + 2 * PADDING
            if x < right:
                return self.columns[index]
        return None

    def restyle(self) -> None:
        """Forget every rendered line and cell so the next :meth:`sync` rebuilds them (theme change)."""
        self._rows = {key: () for key in self._rows}
        self._built.clear()
        self._lines.clear()
        self._header = None

    @property
    def _line_width(self) -> int:
        """Cells of one full row: every shown column padded on both sides."""
        return self._fit.width

    @property
    def shown_columns(self) -> list[str]:
        """The keys of the columns shown at the table's width, left to right."""
        return [self.columns[index].key for index in self._fit.indexes]

    def on_resize(self, event: events.Resize) -> None:
        if self._refit():
            self.virtual_size = Size(self._line_width, len(self._order) + 1)

    def _refit(self) -> bool:
        """Fit the columns to the width there is (and the widths they need); True if that changed them."""
        available = self.scrollable_content_region.width
        if available <= 0:
            available = 1_000_000  # not laid out yet: everything, until a resize says otherwise
        fitted_for = (available, tuple(self._widths), self._sort_column)
        if fitted_for == self._fitted_for:
            return False
        self._fitted_for = fitted_for
        fit = fit_columns(self.columns, self._widths, available, keep=self._sort_column)
        if fit == self._fit:
            return False
        self._fit = fit
        self._lines.clear()
        self._header = None
        self.refresh()
        return True

    def _header_labels(self) -> list[str]:
        """Each column's header; the sorted one with its arrow."""
        labels = [column.label for column in self.columns]
        if labels:
            labels[self._sort_column] = self.sort_label
        return labels

    def _measure(self) -> list[int]:
        widths = [len(label) for label in self._header_labels()]
        for cells in self._rows.values():
            for column, cell in enumerate(cells):
                if cell.cell_len > widths[column]:
                    widths[column] = cell.cell_len
        return widths

    def _reorder(self, selected: str | None) -> None:
        keys = list(self._rows)
        column = self._sort_column
        keys.sort(key=lambda k: (by_value(self._rows[k][column]), k), reverse=self._sort_reverse)
        self._order = keys
        self._index = {key: n for n, key in enumerate(keys)}
        self.virtual_size = Size(self._line_width, len(keys) + 1)
        if selected in self._index:
            self._cursor = self._index[selected]
        self._cursor = max(0, min(self._cursor, len(keys) - 1))
        self._keep_cursor_visible()
        self.refresh()

    def _refresh_rows(self, keys: list[str]) -> None:
        top, height = int(self.scroll_offset.y), self.size.height
        for key in keys:
            y = self._index[key] - top + 1
            if 1 <= y < height:
                self.refresh(Region(0, y, self.size.width, 1))

    # ------------------------------------------------------------- cursor
    def _move_to(self, index: int) -> None:
        if not self._order:
            return
        index = max(0, min(index, len(self._order) - 1))
        if index == self._cursor:
            return
        before, self._cursor = self._cursor, index
        if not self._keep_cursor_visible():
            self._refresh_rows([self._order[before], self._order[index]])

    def _keep_cursor_visible(self) -> bool:
        """Scroll so the cursor's row is on screen; True when that scrolled (a full repaint)."""
        body = max(1, self.scrollable_content_region.height - 1)
        top = int(self.scroll_offset.y)
        if self._cursor < top:
            target = self._cursor
        elif self._cursor >= top + body:
            target = self._cursor - body + 1
        else:
            return False
        self.scroll_to(y=target, animate=False)
        return True

    def action_move(self, rows: int) -> None:
        self._move_to(self._cursor + rows)

    def action_page(self, pages: float) -> None:
        """Move by ``pages`` screens of rows (0.5: half a page, like ctrl+d in less and vim)."""
        self._move_to(self._cursor + round(pages * max(1, self.scrollable_content_region.height - 1)))

    def action_choose(self) -> None:
        if self.selected_key is not None:
            self.post_message(self.RowSelected(self, self.selected_key))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:  # the header: sort by the column clicked (again: reverse)
            column = self._column_at(offset.x)
            if column is not None:
                self.sort_on(column.key)
            return
        index = int(self.scroll_offset.y) + offset.y - 1
        if index >= len(self._order):
            return
        if index == self._cursor:
            self.action_choose()
        else:
            self._move_to(index)

    # ------------------------------------------------------------- rendering
    def render_line(self, y: int) -> Strip:
        left, top = self.scroll_offset
        width = self.size.width
        if y == 0:
            style = self._style("keyed-table--header")
            return self._crop(self._header_line(), left, width, style).apply_style(style)
        index = top + y - 1
        if index >= len(self._order):
            return Strip.blank(width, self._style(""))
        key = self._order[index]
        if index == self._cursor:
            # Focused: over the cells' own colours, so the row being worked on reads plainly.
            style, over = self._style("keyed-table--cursor"), self.has_focus
        else:
            style, over = self._style("keyed-table--even-row" if index % 2 else ""), False
        painted_for = (style, over, left, width)
        cached = self._lines.get(key)
        if cached is not None and cached[0] == painted_for:
            return cached[1]
        cells = self._rows[key]
        if left <= 0 and self._line_width <= width:
            line = self._render_cells(cells, style, over, width)  # the usual case: in one pass
        else:
            line = self._crop(self._render_cells(cells), left, width, style)
            line = Strip(Segment.apply_style(line, post_style=style), width) if over else line.apply_style(style)
        self._lines[key] = (painted_for, line)
        return line

    def _crop(self, line: Strip, left: int, width: int, style: Style) -> Strip:
        """The part of ``line`` on screen, scrolled ``left`` cells: the first column stays put."""
        if left <= 0 or not self._fit.shown:
            return line.crop_extend(0, width, style)
        frozen = self._fit.shown[0][1] + 2 * PADDING
        if frozen >= width:
            return line.crop_extend(left, left + width, style)
        return Strip.join([line.crop_extend(0, frozen, style), line.crop_extend(frozen + left, left + width, style)])

    def _style(self, component: str) -> Style:
        style = self._styles.get(component)
        if style is None:
            style = self._styles[component] = self.rich_style if component == "" else self.get_component_rich_style(component)
        return style

    def notify_style_update(self) -> None:
        # Focus, theme or CSS changed: the row, cursor and header styles follow.
        super().notify_style_update()
        self._styles.clear()

    def _header_line(self) -> Strip:
        if self._header is None:
            self._header = self._render_cells([Cell(label) for label in self._header_labels()])
        return self._header

    def _render_cells(self, cells: Sequence[Cell], style: Style | None = None, over: bool = False, width: int = 0) -> Strip:
        """One line of ``cells``, each padded and cut to its column.

        With a row ``style``: painted under the cells' own styles (``over``: over them) and
        extended to ``width``, the way a strip is cropped and restyled, in one pass: a row
        repainted each second (its heartbeat age) costs one strip, not three.
        """
        if style is None:
            def paint(text: str, own: Style | None) -> Segment:
                return Segment(text, own)
        elif over:
            def paint(text: str, own: Style | None) -> Segment:
                return Segment(text, own + style if own else style)
        else:
            def paint(text: str, own: Style | None) -> Segment:
                return Segment(text, style + own)
        console = self.app.console
        segments: list[Segment] = []
        add = segments.append
        columns = self.columns
        for index, column_width in self._fit.shown:
            cell = cells[index]
            right = columns[index].justify == "right"
            if cell.cell_len > column_width:  # cut in the middle: rich Text only for these
                clipped = clip_middle_text(Text(cell.plain, style=cell.style or ""), column_width)
                gap, shown = column_width - clipped.cell_len, [paint(s.text, s.style) for s in clipped.render(console)]
            else:
                gap, shown = column_width - cell.cell_len, [paint(cell.plain, cell.style)]
            add(paint(" " * (PADDING + gap) if right else " " * PADDING, None))
            segments.extend(shown)
            add(paint(" " * PADDING if right else " " * (gap + PADDING), None))
        if style is not None and width > self._line_width:
            add(paint(" " * (width - self._line_width), style))
        return Strip(segments, max(width, self._line_width))
