"""The scroll of the details and the help, moved with the tables' keys (j/k, g/G, ctrl+d/u)."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding
from textual.containers import VerticalScroll

from ..actions import bindings


class KeyScroll(VerticalScroll):
    """A vertical scroll that answers the keys the tables move with, so a person who reads a
    table with j and k reads the details the same way."""

    BINDINGS: ClassVar[list[Binding]] = bindings("reading")
