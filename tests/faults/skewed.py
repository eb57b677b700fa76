"""One action of a process whose clock is off, run under ``faketime`` by the skew tests.

``python -m tests.faults.skewed report-429 ROOT PROVIDER MODEL RETRY_AFTER_S``
prints the shared record it stored, as JSON.
"""

from __future__ import annotations

import sys

from core.backoff import BackoffBoard
from core.store import DirectoryStore


def main(argv: list[str]) -> None:
    action, root, *args = argv
    store = DirectoryStore(root)
    store.ensure_layout()
    if action == "report-429":
        provider, model, retry_after_s = args
        shared = BackoffBoard(store, "skewed").report_429(provider, model, int(float(retry_after_s) * 1000))
        print(shared.to_json().decode())
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
