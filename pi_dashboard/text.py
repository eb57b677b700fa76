"""User text, made safe once: :class:`UserText`, and the small formatters the panes share.

Everything the fleet's files hold (ids, paths, model names, event kinds and
messages, unknown key names, problem text) was written by processes that are
not ours.  It enters the dashboard and the command line as a ``UserText``,
which can only be shown as literal text: never parsed as Rich markup, every
control, format (bidi) and separator character shown as a visible escape, and
a file name's undecodable bytes (surrogate escapes) as ``\\xNN``.  Widgets and
screens take user text only in this form, so no call site has to remember to
escape it.  (``str()`` of one is its escaped spelling, and Rich's ``Text``
never parses markup, so ``Text(f"... {user} ...")`` is literal too; a plain
``str`` handed to a Table or a Static would be parsed: hand those a ``Text``.)
"""

from __future__ import annotations

import math
from datetime import datetime

from rich.cells import cell_len, get_character_cell_size
from rich.style import Style
from rich.text import Text

# Undecodable bytes of a file name come back from os.fsdecode / surrogateescape as these.
_SURROGATE_BYTES = range(0xDC80, 0xDD00)
TIME_OUT_OF_RANGE = "⚠ bad time"


def _escape(ch: str) -> str:
    code = ord(ch)
    if code in _SURROGATE_BYTES:
        return f"\\x{code - 0xDC00:02x}"  # the byte the file name really holds
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escaped(text: str) -> str:
    """``text`` with every character a terminal could act on shown as an escape.

    ``str.isprintable`` is false for C0 and C1 controls, DEL, format characters
    (the bidi overrides and isolates, zero-width joiners), line and paragraph
    separators, non-space blanks, surrogates and unassigned code points: all of
    them become ``\\xNN`` / ``\\uNNNN``, so an embedded escape sequence cannot
    recolour, retitle, move or clear the terminal, nor reorder what is shown.
    Applying it again changes nothing (its output is printable).
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def valid_unicode(text: str) -> str:
    """``text`` encodable as UTF-8: each lone surrogate spelled as an escape.

    A file name that is not valid UTF-8 decodes to surrogate escapes, and a JSON
    string may hold a lone ``\\ud800``; neither can be written as UTF-8. Here a
    byte the name really holds reads ``\\xNN`` (as :func:`escaped` shows it), any
    other lone surrogate ``\\uNNNN``; everything else is left as it is.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_escape(ch) if 0xD800 <= ord(ch) < 0xE000 else ch for ch in text)
    return text


def printable(text: str) -> str:
    """The escaped spelling as a plain ``str``, for plain-text output (the CLI's lines)."""
    return escaped(text)


class UserText:
    """A string from the fleet, as it may be shown: escaped, literal, never markup.

    ``raw`` is the string as read (for actions: keys, ids); ``shown`` its safe
    spelling.  ``str()`` gives ``shown`` (so an f-string cannot leak ``raw``),
    Rich renders it as a plain :class:`~rich.text.Text`, and :meth:`text`
    gives that Text with a style.  Clipping works on what is shown.
    """

    __slots__ = ("raw", "shown")

    def __init__(self, raw: str) -> None:
        if not isinstance(raw, str):
            raise TypeError(f"UserText wraps a str, not {type(raw).__name__}: format the value first")
        self.raw = raw
        self.shown = escaped(raw)

    @classmethod
    def _cut(cls, raw: str, shown: str) -> UserText:
        clipped = object.__new__(cls)
        clipped.raw, clipped.shown = raw, shown
        return clipped

    def text(self, style: str | Style = "") -> Text:
        return Text(self.shown, style=style)

    def __rich__(self) -> Text:
        return Text(self.shown)

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"UserText({self.raw!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserText) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __bool__(self) -> bool:
        return bool(self.raw)

    @property
    def cell_len(self) -> int:
        return cell_len(self.shown)

    def clip_middle(self, width: int) -> UserText:
        """At most ``width`` cells shown, cut in the middle (:func:`clip_middle`)."""
        return self._cut(self.raw, clip_middle(self.shown, width))


def clip(text: str, width: int) -> str:
    """At most ``width`` characters, with an ellipsis when cut: for prose lines, whose start says
    what they are about (names, paths, ids and models are cut in the middle: :func:`clip_middle`)."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


ELLIPSIS = "…"


def middle_cut(text: str, width: int) -> tuple[int, int] | None:
    """Where the one cut of long text goes: ``text[:head] + "…" + text[tail:]`` fills
    at most ``width`` terminal cells, keeping as much of both ends as fits (ids,
    paths and model names differ at both ends).  None when ``text`` fits already.

    Below five cells there is no middle worth keeping: the end goes instead.
    """
    if cell_len(text) <= width:
        return None
    if width <= 1:
        return 0, len(text)
    if width < 5:
        return _chars_within(text, width - 1), len(text)
    head_cells = (width - 1) // 2
    head = _chars_within(text, head_cells)
    tail = len(text) - _chars_within(text[::-1], width - 1 - head_cells)
    return head, tail


def _chars_within(text: str, cells: int) -> int:
    """How many leading characters of ``text`` fit in ``cells`` terminal cells."""
    used = 0
    for count, ch in enumerate(text):
        used += get_character_cell_size(ch)
        if used > cells:
            return count
    return len(text)


def clip_middle(text: str, width: int) -> str:
    """At most ``width`` cells, cut in the middle (:func:`middle_cut`): the rule for all long text."""
    cut = middle_cut(text, width)
    if cut is None:
        return text
    if width <= 0:
        return ""
    head, tail = cut
    return text[:head] + ELLIPSIS + text[tail:]


def clip_middle_text(text: Text, width: int) -> Text:
    """:func:`clip_middle` of a Rich ``Text``, keeping its styles on both ends."""
    cut = middle_cut(text.plain, width)
    if cut is None:
        return text
    if width <= 0:
        return Text("", style=text.style)
    head, tail = cut
    clipped = text[:head]
    clipped.append(ELLIPSIS)
    clipped.append_text(text[tail:])
    return clipped


def duration(ms: int | None, *, whole_seconds: bool = False) -> str:
    """A short human duration: ``850ms``, ``12s``, ``4m05s``, ``3h12m``, ``2d4h``.

    ``whole_seconds`` shows anything under a second as ``0s``: a value that then
    changes once a second, not on every screen update.
    """
    if ms is None:
        return "-"
    if not math.isfinite(ms):
        return "?"
    ms = int(ms)
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        return f"{sign}0s" if whole_seconds else f"{sign}{ms}ms"
    seconds = ms // 1000
    if seconds < 60:
        return f"{sign}{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{sign}{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{sign}{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{sign}{days}d{hours}h"


# One clock everywhere: local time; the zone is named once per screen (the header,
# the details' title, the first line of ``pi-dash status``), never beside each time.
# A time no clock can show (``1e17``, NaN, before year 1) comes from a bad record:
# it reads TIME_OUT_OF_RANGE, never raises.
def clock_time(at: float | datetime) -> str:
    """``HH:MM:SS`` in local time, of epoch milliseconds or an aware datetime."""
    local = _local(at)
    return TIME_OUT_OF_RANGE if local is None else local.strftime("%H:%M:%S")


def clock_datetime(at: float | datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in local time."""
    local = _local(at)
    return TIME_OUT_OF_RANGE if local is None else local.strftime("%Y-%m-%d %H:%M:%S")


def clock_zone(at: float | datetime) -> str:
    """The local zone's name at that instant (``UTC``, ``CET``, ``+0530``)."""
    local = _local(at)
    return "" if local is None else local.strftime("%Z") or local.strftime("%z")


def _local(at: float | datetime) -> datetime | None:
    try:
        return at.astimezone() if isinstance(at, datetime) else datetime.fromtimestamp(at / 1000).astimezone()
    except (OverflowError, ValueError, OSError, TypeError):
        return None
