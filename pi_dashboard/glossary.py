"""What every figure on the screen means: the help's glossary.

The tables' entries are their columns' own ``help`` (one definition, beside the
column it explains); the header's and the stealing pane's figures, which are
text, are described here.  Each table also says which of its columns give way
first when its pane is narrow.
"""

from __future__ import annotations

from collections.abc import Sequence

from .widgets.backoff_table import BackoffTable
from .widgets.instances_table import InstancesTable
from .widgets.keyed_table import Column, KeyedTable
from .widgets.locks_table import LocksTable
from .widgets.parallelism_table import ParallelismTable

HEADER = (
    ("N instances", "instance files by status: alive, stale (heartbeat late), stalled (heartbeat past the timeout, process still running), dead, draining, offline (drained and gone), corrupt"),
    ("pending N tasks", "queued tasks of every instance whose queue state is fresh (pi's work-stealing summary)"),
    (
        "requests/min used/limit",
        "per provider: requests granted in the last minute / the limit in force now, in whole requests; "
        "the limit drops after 429s, so used may exceed it for a minute; 'backing off': a shared 429 backoff runs",
    ),
    (
        "LLM slots N, even share K",
        "totalMaxLlm, the fleet's concurrent LLM calls, and those slots split evenly among the active instances "
        "(pi's plain limit); an instance's Lim is its share weighted by its pending work instead",
    ),
    ("N problems", "files that cannot be read, clock skew, dead pids, unanswered drains: the Problems pane"),
)

STEALING = (
    ("attempts, stolen, failed", "steal attempts recorded by core instances, and how they ended"),
    ("success, avg ms", "stolen / attempts; the average time an attempt took"),
    ("claims", "claims on record: entries taken by a thief, each run exactly once"),
    ("pi steals: not recorded (N)", "N instances are pi's own: they keep their statistics in memory"),
    ("pi: stealable, busy, idle", "entries offered to pi's thieves in fresh queues; instances with and without queued work"),
    ("claimable", "entries offered to claiming (core) thieves"),
    ("latest steals", "thief, entry (priority) and victim, newest first"),
)

QUEUES = (
    ("• total, + x o * LABEL", "queue depth over the last five minutes: the fleet's total and the busiest instances, each with its marker"),
)

TABLES: tuple[tuple[str, type[KeyedTable]], ...] = (
    ("Instances", InstancesTable),
    ("Parallelism", ParallelismTable),
    ("429 backoff", BackoffTable),
    ("Locks", LocksTable),
)


def drop_order(columns: Sequence[Column]) -> list[str]:
    """Column labels in the order they give way when the pane narrows (never-dropping ones left out)."""
    return [c.label for c in sorted((c for c in columns[1:] if c.drop > 0), key=lambda c: -c.drop)]


def glossary() -> list[tuple[str, list[tuple[str, str]]]]:
    """(section, [(term, meaning)]) for the help screen, in the screen's order."""
    sections: list[tuple[str, list[tuple[str, str]]]] = [("Header", list(HEADER))]
    for title, table in TABLES:
        columns = [Column(*spec) for spec in table.COLUMNS]
        entries = [(c.label, c.help) for c in columns if c.help]
        order = drop_order(columns)
        if order:
            entries.append(("narrow pane", "these give way first, in this order (shrunk, then hidden): " + ", ".join(order)))
        sections.append((title, entries))
        if title == "Instances":
            sections.append(("Queues", list(QUEUES)))
    sections.append(("Stealing", list(STEALING)))
    return sections
