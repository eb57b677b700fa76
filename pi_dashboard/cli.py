"""The ``pi-dash`` command line."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence

from core.limits_view import provider_limits
from core.provider_config import config_path, load_settings
from core.snapshot import FleetSnapshot, SnapshotBuilder
from core.store import DirectoryStore, StoreError, default_root

from . import __version__
from .status_report import render, render_limits

EXIT_UNAVAILABLE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pi-dash",
        description="Live monitor and coordination engine for fleets of pi coding-agent instances.",
    )
    parser.add_argument("--version", action="version", version=f"pi-dash {__version__}")
    root_help = "coordination directory (default: $PI_RUNTIME_DIR, else ~/.pi/runtime)"
    parser.add_argument("--root", metavar="DIR", help=root_help)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = commands.add_parser("status", help="print the fleet's state once (a table, or JSON)")
    status.add_argument("--root", metavar="DIR", help=root_help, default=argparse.SUPPRESS)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    limits = commands.add_parser("limits", help="each provider's rate limit, usage and 429 backoff")
    limits.add_argument("--root", metavar="DIR", help=root_help, default=argparse.SUPPRESS)
    limits.add_argument("--provider", metavar="P", help="only this provider")
    limits.add_argument("--config", metavar="FILE", help="config.json (default: $PI_CONFIG, ./.pi/config.json, ~/.pi/config.json)")
    limits.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _snapshot(args: argparse.Namespace) -> FleetSnapshot | None:
    store = DirectoryStore(default_root(args.root))
    try:
        return SnapshotBuilder(store).build()
    except StoreError as exc:
        print(f"pi-dash: cannot read the fleet: {exc}", file=sys.stderr)
        return None


def cmd_limits(args: argparse.Namespace) -> int:
    snapshot = _snapshot(args)
    if snapshot is None:
        return EXIT_UNAVAILABLE
    settings = load_settings(args.config or config_path())
    rows = provider_limits(settings, snapshot, args.provider)
    if args.json:
        document = {"providers": [row.to_dict() for row in rows], "problems": list(settings.problems)}
        json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(render_limits(rows, settings.problems))
    return 0 if rows else 1


def cmd_status(args: argparse.Namespace) -> int:
    snapshot = _snapshot(args)
    if snapshot is None:
        return EXIT_UNAVAILABLE
    if getattr(args, "json", False):
        json.dump(snapshot.to_dict(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(render(snapshot, width=shutil.get_terminal_size((100, 24)).columns))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "limits":
        return cmd_limits(args)
    # Until the live dashboard lands, the bare command prints the status.
    return cmd_status(args)
