"""Every dashboard action, once: the key bindings (the app's and every table's), the footer,
the command palette and the help screen are all made from :data:`ACTIONS`, so read-only
mode (which leaves out the actions that change the fleet) cannot forget one of them."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

# (id, title) of the panes below the instances, in the order keys 1..7 pick them.
SECONDARY_PANES = (
    ("parallelism", "Parallelism"),
    ("backoff", "429 backoff"),
    ("queues", "Queues"),
    ("stealing", "Stealing"),
    ("locks", "Locks"),
    ("events", "Events"),
    ("problems", "Problems"),
)


@dataclass(frozen=True, slots=True)
class DashAction:
    action: str | None  # the Textual action ("drain", "show_pane(2)"); None: a help line only
    keys: str  # Textual key names, comma-separated
    shown_key: str  # how help shows the key
    description: str  # the help line
    footer: str | None = None  # the footer label; None: not in the footer
    palette: str | None = None  # the command palette's name; None: not in the palette
    changes_fleet: bool = False  # writes to the fleet: never offered read-only
    in_help: bool = True
    scope: str = "app"  # "app"; "table": a key of the focused table (moving its cursor); "reading": details and help
    priority: bool = False  # taken before the focused widget sees the key (ctrl+c even in the filter box)


ACTIONS: tuple[DashAction, ...] = (
    DashAction("quit", "q", "q", "quit", footer="Quit", in_help=False),
    DashAction("quit", "ctrl+c", "q / ctrl+c", "quit (ctrl+c even while filtering)", priority=True),
    DashAction("help", "question_mark", "?", "this help", footer="Help"),
    DashAction(None, "", "ctrl+p", "command palette: every action by name"),
    DashAction(None, "", "tab / shift+tab", "move between panes"),
    DashAction(None, "", "1 .. 7", "on a small terminal, show that pane below the instances"),
    DashAction("zoom", "z", "z", "zoom the focused pane to the whole screen; z again (or escape) restores", footer="Zoom", palette="Zoom the focused pane, or restore"),
    # In a table: the moves of less, vim and htop.  One help line per pair.
    DashAction(None, "", "j k / down up", "next / previous row (in details and help: scroll)"),
    DashAction(None, "", "g G / home end", "first / last row (top / bottom)"),
    DashAction(None, "", "ctrl+d ctrl+u", "half a page down / up (pagedown pageup: a page)"),
    DashAction("move(1)", "j,down", "j", "next row", scope="table", in_help=False),
    DashAction("move(-1)", "k,up", "k", "previous row", scope="table", in_help=False),
    DashAction("move(-1000000000)", "g,home", "g", "first row", scope="table", in_help=False),
    DashAction("move(1000000000)", "G,end", "G", "last row", scope="table", in_help=False),
    DashAction("page(0.5)", "ctrl+d", "ctrl+d", "half a page down", scope="table", in_help=False),
    DashAction("page(-0.5)", "ctrl+u", "ctrl+u", "half a page up", scope="table", in_help=False),
    DashAction("page(1)", "pagedown", "pagedown", "a page down", scope="table", in_help=False),
    DashAction("page(-1)", "pageup", "pageup", "a page up", scope="table", in_help=False),
    DashAction("choose", "enter", "enter", "choose the row", scope="table", in_help=False),
    # The same keys scroll the details and the help.
    DashAction("scroll_down", "j", "j", "scroll down", scope="reading", in_help=False),
    DashAction("scroll_up", "k", "k", "scroll up", scope="reading", in_help=False),
    DashAction("scroll_home", "g", "g", "top", scope="reading", in_help=False),
    DashAction("scroll_end", "G", "G", "bottom", scope="reading", in_help=False),
    DashAction("page_down", "ctrl+d", "ctrl+d", "a page down", scope="reading", in_help=False),
    DashAction("page_up", "ctrl+u", "ctrl+u", "a page up", scope="reading", in_help=False),
    DashAction(
        "sort_next",
        "s",
        "s",
        "sort the focused table by its next column (or click a header)",
        footer="Sort",
        palette="Sort the focused table by the next column",
    ),
    DashAction("sort_reverse", "S", "S", "reverse the sort (so does a second click on the same header)", palette="Reverse the focused table's sort"),
    DashAction("filter", "slash", "/", "filter instances (id, cwd, model, status); escape clears", footer="Filter", palette="Filter instances"),
    DashAction("back", "escape", "escape", "clear the filter, else leave the zoom"),
    DashAction("toggle_pause", "p", "p", "pause / resume live updates", footer="Pause", palette="Pause or resume updates"),
    DashAction(
        "next_theme", "t", "t", "next theme (remembered; built-in ones and ~/.config/pi-dash/themes/*.toml)", palette="Next theme"
    ),
    DashAction("details", "enter", "enter", "details of the selected instance", palette="Show instance details"),
    DashAction(
        "drain",
        "d",
        "d",
        "drain the selected instance: it finishes its work, then goes offline",
        footer="Drain",
        palette="Drain the selected instance",
        changes_fleet=True,
    ),
    DashAction(
        "cancel_drain",
        "c",
        "c",
        "cancel the drain of the selected instance: it resumes taking work",
        palette="Cancel the selected instance's drain",
        changes_fleet=True,
    ),
    DashAction(
        "remove",
        "x",
        "x",
        "remove the files of the selected instance (dead ones only)",
        palette="Remove the selected dead instance's files",
        changes_fleet=True,
    ),
    DashAction(
        "release_lock",
        "r",
        "r",
        "release the selected lock (locks pane)",
        footer="Release",
        palette="Release the selected lock",
        changes_fleet=True,
    ),
    DashAction("start_demo", "D", "D", "start the built-in demo fleet (when there is no fleet)", in_help=False),
    *(
        DashAction(f"show_pane({n})", str(n), str(n), f"show the {title} pane", palette=f"Show pane: {title}", in_help=False)
        for n, (_, title) in enumerate(SECONDARY_PANES, start=1)
    ),
)

FLEET_CHANGING = frozenset(a.action for a in ACTIONS if a.changes_fleet and a.action)
ZOOM_KEY = next(a.keys for a in ACTIONS if a.action == "zoom")


def offered(read_only: bool) -> tuple[DashAction, ...]:
    """The actions a person is offered: without those that change the fleet when read-only."""
    return tuple(a for a in ACTIONS if not (read_only and a.changes_fleet))


def bindings(scope: str = "app") -> list[Binding]:
    """The bindings of ``scope`` ("app", "table" or "reading"); the app hides (and refuses)
    the fleet-changing ones when read-only."""
    return [
        Binding(a.keys, a.action, a.footer or "", show=a.footer is not None, priority=a.priority)
        for a in ACTIONS
        if a.action is not None and a.keys and a.scope == scope
    ]


def action_name(action: str) -> str:
    """``show_pane(2)`` -> ``show_pane``: the method name Textual checks."""
    return action.partition("(")[0]
