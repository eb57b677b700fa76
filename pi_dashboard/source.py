"""Where the dashboard's snapshots come from: a background thread that watches the store
and rebuilds the FleetSnapshot, so no file I/O ever runs on the event loop.

Changes arrive from watchfiles (inotify on Linux) with a short debounce and are
turned into per-space hints, so a rebuild re-reads only the files named.  Every
second without changes there is a rebuild anyway (heartbeat ages move on), and
every ``FULL_SCAN_S`` a full rescan catches anything a watcher missed.  If the
watcher cannot start (no inotify, or its watches exhausted) the thread falls back
to polling; if the directory is missing it reports that and keeps trying.

watchfiles' Rust side wakes every ``step`` milliseconds to look for changes, and
each wake takes the GIL: a 10 ms step costs ~0.4 % of a core on a fleet where
nothing happens.  So the step is short only while changes are arriving (within
``BUSY_FOR_S`` of the last one) and 50 ms (watchfiles' own default) otherwise:
the first change after a quiet spell shows within 50-100 ms, the ones that
follow within ~25 ms.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchfiles._rust_notify import RustNotify  # the documented backend: its step can vary per wait

from core.clock import SYSTEM_CLOCK, Clock
from core.snapshot import FleetSnapshot, SnapshotBuilder
from core.store import Space, Store, StoreError

log = logging.getLogger("pi_dash.source")

DEBOUNCE_MS = 20
STEP_MS = 10  # while changes are arriving
IDLE_STEP_MS = 50  # after BUSY_FOR_S without any
BUSY_FOR_S = 3.0
TICK_MS = 1000
MIN_BUILD_INTERVAL_S = 0.05
FULL_SCAN_S = 10.0
POLL_DELAY_MS = 250
RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class SourceState:
    """What the source delivers: the newest snapshot, or why there is none."""

    snapshot: FleetSnapshot | None
    error: str | None
    watching: str  # "inotify", "polling" or "stopped"


class FleetSource:
    """Builds snapshots of ``store`` off the event loop and hands the newest to ``deliver``.

    ``deliver`` is called from the source's thread; it is called again only
    after :meth:`take` consumed the previous state, so a slow consumer gets the
    newest snapshot instead of a backlog.
    """

    def __init__(
        self,
        store: Store,
        deliver: Callable[[], None],
        *,
        clock: Clock = SYSTEM_CLOCK,
        check_pids: bool = True,
        force_polling: bool | None = None,
        debounce_ms: int = DEBOUNCE_MS,
    ) -> None:
        self.store = store
        self.builder = SnapshotBuilder(store, clock=clock, check_pids=check_pids)
        self._deliver = deliver
        self._force_polling = force_polling
        self._debounce_ms = debounce_ms
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._latest: SourceState | None = None
        self._announced = False
        self._thread: threading.Thread | None = None
        self.watching = "stopped"

    # ------------------------------------------------------------- consumer
    def take(self) -> SourceState | None:
        """The newest state (or ``None`` if nothing new); re-arms delivery."""
        with self._lock:
            state, self._latest, self._announced = self._latest, None, False
            return state

    def build_now(self) -> SourceState:
        """Build synchronously (first frame, headless snapshots, tests)."""
        return self._build(None)

    def refresh(self) -> None:
        """Ask for a full rebuild soon (after an action changed the store)."""
        self._wake.set()

    # --------------------------------------------------------------- thread
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pi-dash-source", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()  # what the watcher's wait polls
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.watching = "stopped"

    def _publish(self, state: SourceState) -> None:
        with self._lock:
            self._latest = state
            if self._announced:
                return
            self._announced = True
        self._deliver()

    def _build(self, hints: dict[Space, set[str]] | None) -> SourceState:
        try:
            snapshot = self.builder.build(hints)
        except StoreError as exc:
            return SourceState(None, str(exc), self.watching)
        except Exception as exc:  # the dashboard must show the error, never die of it
            log.exception("snapshot build failed")
            return SourceState(None, f"internal error: {exc}", self.watching)
        return SourceState(snapshot, None, self.watching)

    def _run(self) -> None:
        polling = bool(self._force_polling)
        while not self._stop.is_set():
            directory = self.store.watched_directory()
            if directory is None:
                self._follow_feed()
                continue
            try:
                self._watch(directory, polling)
            except FileNotFoundError:
                self.watching = "stopped"  # the directory is gone: report and retry
                self._publish(self._build(None))
                self._stop.wait(RETRY_S)
            except (OSError, RuntimeError) as exc:
                if polling:
                    log.warning("watching failed even when polling: %s", exc)
                    self._publish(self._build(None))
                    self._stop.wait(RETRY_S)
                else:
                    log.warning("file watching unavailable (%s); polling instead", exc)
                    polling = True

    def _follow_feed(self) -> None:
        """Stores that announce changes (Redis pub/sub): rebuild what they name, and every tick.
        A store that announces nothing is rebuilt in full every tick."""
        try:
            feed = self.store.subscribe()
        except StoreError as exc:
            self._publish(SourceState(None, str(exc), "stopped"))
            self._stop.wait(RETRY_S)
            return
        if feed is None:
            self.watching = "polling"
            self._publish(self._build(None))
            self._wake.wait(TICK_MS / 1000)
            self._wake.clear()
            return
        self.watching = "pub/sub"
        batch = _Batch()
        try:
            # Built once subscribed: a change made in between is in this build or on the feed
            # (built before, it would wait for the next full rescan).
            self._publish(self._build(None))
            while not self._stop.is_set() and not self._wake.is_set():
                changes = feed.get(batch.wait_ms() / 1000)
                hints: dict[Space, set[str]] = {}
                for space, key in changes:
                    hints.setdefault(space, set()).add(key)
                batch.add(hints)
                if batch.ready():
                    self._publish(self._build(batch.take()))
        except StoreError as exc:  # the server went away: say so, then start over
            self.watching = "stopped"
            self._publish(SourceState(None, str(exc), "stopped"))
            self._stop.wait(RETRY_S)
        finally:
            feed.close()
            self._wake.clear()

    def _watch(self, directory: Path, polling: bool) -> None:
        self.watching = "polling" if polling else "inotify"
        last_change = time.monotonic()
        batch = _Batch()
        with RustNotify([str(directory)], False, polling, POLL_DELAY_MS, True, True) as notify:
            self._publish(self._build(None))  # once watched: no change falls between the two
            while not self._wake.is_set():
                step = STEP_MS if time.monotonic() - last_change < BUSY_FOR_S else IDLE_STEP_MS
                changes = notify.watch(self._debounce_ms, step, batch.wait_ms(), self._wake)
                if self._wake.is_set():
                    break
                if not directory.exists():
                    raise FileNotFoundError(directory)
                if isinstance(changes, set) and changes:
                    last_change = time.monotonic()
                    batch.add(hints_for(self.store, (path for _, path in changes)))
                else:
                    batch.add({})  # the tick (or the end of a build's wait): ages move on
                if batch.ready():
                    self._publish(self._build(batch.take()))
        self._wake.clear()  # a refresh was asked for: the caller rebuilds in full


class _Batch:
    """Changes gathered between builds: one build per ``MIN_BUILD_INTERVAL_S`` at most.

    A fleet that changes fifty times a second needs no fifty snapshots (the
    screen shows twenty a second at most); changes arriving meanwhile wait at
    most one interval and are read together.  With nothing pending the wait is
    the tick, and a tick is a build too (heartbeat ages move on); every
    ``FULL_SCAN_S`` the build rescans everything, catching what a watcher missed.
    """

    def __init__(self) -> None:
        self._hints: dict[Space, set[str]] | None = {}
        self._due = False
        self._last_build = 0.0
        self._last_full = time.monotonic()

    def add(self, hints: dict[Space, set[str]] | None) -> None:
        if hints is None or self._hints is None:
            self._hints = None  # something unknown changed: rescan all
        else:
            for space, keys in hints.items():
                self._hints.setdefault(space, set()).update(keys)
        self._due = True

    def wait_ms(self) -> int:
        """How long to wait for changes: until the next build may run, or a tick."""
        if not self._due:
            return TICK_MS
        return max(1, math.ceil((self._last_build + MIN_BUILD_INTERVAL_S - time.monotonic()) * 1000))

    def ready(self) -> bool:
        return self._due and time.monotonic() - self._last_build >= MIN_BUILD_INTERVAL_S

    def take(self) -> dict[Space, set[str]] | None:
        now = time.monotonic()
        hints, self._hints, self._due, self._last_build = self._hints, {}, False, now
        if now - self._last_full > FULL_SCAN_S:
            hints = None
        if hints is None:
            self._last_full = now
        return hints


def hints_for(store: Store, paths: Iterable[str]) -> dict[Space, set[str]] | None:
    """Per-space keys for changed paths; ``None`` (rescan everything) if one is not a known entry."""
    hints: dict[Space, set[str]] = {}
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name.startswith("."):
            continue  # a writer's temporary file: its rename will be reported
        located = store.locate(path)
        if located is None:
            if path.endswith((".jsonl", "coordinator.json")) or "/pi-dash/guards/" in path:
                continue  # read on every build anyway, or never read
            return None
        space, key = located
        hints.setdefault(space, set()).add(key)
    return hints
