"""Turning user-supplied text (ids, paths, model names) into safe terminal text."""

from __future__ import annotations

from datetime import datetime


def printable(text: str) -> str:
    """``text`` with control characters shown as escapes, never sent to the terminal.

    Instance ids, cwd and model names come from files anyone can write; an
    embedded escape sequence must not recolour, move or clear the terminal.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clip(text: str, width: int) -> str:
    """At most ``width`` characters, with an ellipsis when cut."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def clip_middle(text: str, width: int) -> str:
    """At most ``width`` characters, cut in the middle: ids differ at both ends."""
    if len(text) <= width or width < 5:
        return clip(text, width)
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def clip_left(text: str, width: int) -> str:
    """At most ``width`` characters, keeping the end (the informative part of a path)."""
    if width <= 0:
        return ""
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]


def duration(ms: int | None, *, whole_seconds: bool = False) -> str:
    """A short human duration: ``850ms``, ``12s``, ``4m05s``, ``3h12m``, ``2d4h``.

    ``whole_seconds`` shows anything under a second as ``0s``: a value that then
    changes once a second, not on every screen update.
    """
    if ms is None:
        return "-"
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
def clock_time(at: int | datetime) -> str:
    """``HH:MM:SS`` in local time, of epoch milliseconds or an aware datetime."""
    return _local(at).strftime("%H:%M:%S")


def clock_datetime(at: int | datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in local time."""
    return _local(at).strftime("%Y-%m-%d %H:%M:%S")


def clock_zone(at: int | datetime) -> str:
    """The local zone's name at that instant (``UTC``, ``CET``, ``+0530``)."""
    return _local(at).strftime("%Z") or _local(at).strftime("%z")


def _local(at: int | datetime) -> datetime:
    return at.astimezone() if isinstance(at, datetime) else datetime.fromtimestamp(at / 1000).astimezone()
