"""Every dashboard action, once: the key bindings, the footer, the command palette and the
help screen are all made from :data:`ACTIONS`, so read-only mode (which leaves out the
actions that change the fleet) cannot forget one of them."""

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


ACTIONS: tuple[DashAction, ...] = (
    DashAction("quit", "q", "q", "quit", footer="Quit"),
    DashAction("help", "question_mark", "?", "this help", footer="Help"),
    DashAction(None, "", "ctrl+p", "command palette: every action by name"),
    DashAction(None, "", "tab / shift+tab", "move between panes"),
    DashAction(None, "", "1 .. 7", "on a small terminal, show that pane below the instances"),
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
        footer="Release lock",
        palette="Release the selected lock",
        changes_fleet=True,
    ),
    DashAction("toggle_pause", "p", "p", "pause / resume live updates", footer="Pause", palette="Pause or resume updates"),
    DashAction("cycle_sort", "s", "s", "cycle the instances' sort order", footer="Sort", palette="Cycle the instances' sort order"),
    DashAction("filter", "slash", "/", "filter instances (id, cwd, model, status); escape clears", footer="Filter", palette="Filter instances"),
    DashAction("clear_filter", "escape", "escape", "clear the filter", in_help=False),
    DashAction(
        "next_theme", "t", "t", "next theme (remembered; built-in ones and ~/.config/pi-dash/themes/*.toml)", footer="Theme", palette="Next theme"
    ),
    DashAction("start_demo", "D", "D", "start the built-in demo fleet (when there is no fleet)", in_help=False),
    *(
        DashAction(f"show_pane({n})", str(n), str(n), f"show the {title} pane", palette=f"Show pane: {title}", in_help=False)
        for n, (_, title) in enumerate(SECONDARY_PANES, start=1)
    ),
)

FLEET_CHANGING = frozenset(a.action for a in ACTIONS if a.changes_fleet and a.action)


def offered(read_only: bool) -> tuple[DashAction, ...]:
    """The actions a person is offered: without those that change the fleet when read-only."""
    return tuple(a for a in ACTIONS if not (read_only and a.changes_fleet))


def bindings() -> list[Binding]:
    """Every action's binding; the app hides (and refuses) the fleet-changing ones when read-only."""
    return [
        Binding(a.keys, a.action, a.footer or "", show=a.footer is not None)
        for a in ACTIONS
        if a.action is not None and a.keys
    ]


def action_name(action: str) -> str:
    """``show_pane(2)`` -> ``show_pane``: the method name Textual checks."""
    return action.partition("(")[0]
