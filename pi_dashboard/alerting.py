"""Where alerts go besides the screen: a shell command and an append-only JSONL file,
delivered by one thread so that a slow command never holds up a snapshot; and
``pi-dash watch``, the headless loop that evaluates the rules without a TUI."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from core.alerts import FIRING, Alert, AlertRules, AlertState, evaluate
from core.store import Store

from .source import FleetSource
from .text import printable

COMMAND_TIMEOUT_S = 30.0
STOP_CHECK_S = 0.2  # how soon watch sees SIGTERM's flag while nothing arrives
_STOP = object()


class AlertSinks:
    """Runs ``command`` (the alert as JSON on stdin) and appends to ``jsonl``, in order, off the caller's thread."""

    def __init__(self, command: str | None, jsonl: str | None, on_error: Callable[[str], None]) -> None:
        self.command = command
        self.jsonl = Path(jsonl).expanduser() if jsonl else None
        self.on_error = on_error
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._deliver, name="pi-dash-alerts", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        self._queue.put(alert)

    def close(self, timeout: float = COMMAND_TIMEOUT_S + 5) -> None:
        """Deliver what is queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _deliver(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            assert isinstance(item, Alert)
            line = item.to_json()
            if self.jsonl is not None:
                self._append(line)
            if self.command:
                self._run(item, line)

    def _append(self, line: str) -> None:
        try:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            fd = os.open(self.jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, (line + "\n").encode())  # one write: lines of concurrent writers never mix
            finally:
                os.close(fd)
        except OSError as exc:
            self.on_error(f"cannot append the alert to {self.jsonl}: {exc.strerror or exc}")

    def _run(self, alert: Alert, line: str) -> None:
        env = {**os.environ, "PI_DASH_ALERT": alert.rule, "PI_DASH_ALERT_STATE": alert.state}
        try:
            done = subprocess.run(
                self.command, shell=True, input=(line + "\n").encode(), capture_output=True, timeout=COMMAND_TIMEOUT_S, env=env
            )
        except subprocess.TimeoutExpired:
            self.on_error(f"alert command did not finish within {COMMAND_TIMEOUT_S:g} s: {self.command}")
        except OSError as exc:
            self.on_error(f"cannot run the alert command {self.command}: {exc.strerror or exc}")
        else:
            if done.returncode != 0:
                said = printable(done.stderr.decode(errors="replace").strip()[-200:])
                self.on_error(f"alert command exited {done.returncode}" + (f": {said}" if said else ""))


def describe(alert: Alert) -> str:
    """One line for a terminal or a notification."""
    mark = "FIRING " if alert.state == FIRING else "CLEARED"
    return printable(f"{alert.to_dict()['atIso']} {mark} {alert.rule}: {alert.message}")


def watch(store: Store, rules: AlertRules, sinks: AlertSinks, stop: threading.Event) -> None:
    """Evaluate the rules on every snapshot of ``store`` until ``stop`` is set.

    The snapshots come from the dashboard's own source: it rebuilds when the store says something
    changed (inotify, or the Redis feed), re-reading only what changed, and once a
    second for the ages.  So an alert fires within the same ~50 ms a change takes
    to reach the screen, and a quiet fleet of 10,000 costs no full rescan a second.
    """
    arrived = threading.Event()
    source = FleetSource(store, arrived.set)
    state = AlertState()
    last_error = None
    source.start()
    try:
        while not stop.is_set():
            if not arrived.wait(STOP_CHECK_S):
                continue
            arrived.clear()
            taken = source.take()
            if taken is None:
                continue
            if taken.snapshot is None:
                if taken.error != last_error:
                    print(f"pi-dash: cannot read the fleet: {printable(taken.error or '')}", file=sys.stderr, flush=True)
                    last_error = taken.error
                continue
            last_error = None
            state, sent = evaluate(rules, taken.snapshot, state)
            for alert in sent:
                print(describe(alert), flush=True)
                sinks.send(alert)
    finally:
        source.stop()
