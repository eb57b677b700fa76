"""Where the dashboard's snapshots come from: a background thread that watches the store
and rebuilds the FleetSnapshot, so no file I/O ever runs on the event loop.

Changes arrive from watchfiles (inotify on Linux) with a short debounce and are
turned into per-space hints, so a rebuild re-reads only the files named.  Every
second without changes there is a rebuild anyway (heartbeat ages move on), and
every ``full_scan_s`` a full rescan catches anything a watcher missed.  If the
watcher cannot start (no inotify, or its watches exhausted) the thread falls back
to polling; if the directory is missing it reports that and keeps trying.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import watchfiles

from core.clock import SYSTEM_CLOCK, Clock
from core.snapshot import FleetSnapshot, SnapshotBuilder
from core.store import DirectoryStore, Space, Store, StoreError

log = logging.getLogger("pi_dash.source")

DEBOUNCE_MS = 20
STEP_MS = 10
TICK_MS = 1000
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
        self._wake.set()
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
            self._publish(self._build(None))
            if not isinstance(self.store, DirectoryStore):
                self._follow_feed()
                continue
            try:
                self._watch(self.store, polling)
            except FileNotFoundError:
                self.watching = "stopped"  # the directory is gone: report and retry
                self._stop.wait(RETRY_S)
            except (OSError, RuntimeError) as exc:
                if polling:
                    log.warning("watching failed even when polling: %s", exc)
                    self._stop.wait(RETRY_S)
                else:
                    log.warning("file watching unavailable (%s); polling instead", exc)
                    polling = True

    def _follow_feed(self) -> None:
        """Stores that announce changes (Redis pub/sub): rebuild what they name, and every tick."""
        subscribe = getattr(self.store, "subscribe", None)
        if subscribe is None:
            self.watching = "polling"
            self._wake.wait(TICK_MS / 1000)
            self._wake.clear()
            return
        try:
            feed = subscribe()
        except StoreError as exc:
            self._publish(SourceState(None, str(exc), "stopped"))
            self._stop.wait(RETRY_S)
            return
        self.watching = "pub/sub"
        last_full = time.monotonic()
        try:
            while not self._stop.is_set() and not self._wake.is_set():
                changes = feed.get(TICK_MS / 1000)
                hints: dict[Space, set[str]] | None = {}
                for space, key in changes:
                    hints.setdefault(space, set()).add(key)
                if time.monotonic() - last_full > FULL_SCAN_S:
                    hints, last_full = None, time.monotonic()
                self._publish(self._build(hints))
        except StoreError as exc:  # the server went away: say so, then start over
            self.watching = "stopped"
            self._publish(SourceState(None, str(exc), "stopped"))
            self._stop.wait(RETRY_S)
        finally:
            feed.close()
            self._wake.clear()

    def _watch(self, store: DirectoryStore, polling: bool) -> None:
        self.watching = "polling" if polling else "inotify"
        last_full = time.monotonic()
        for changes in watchfiles.watch(
            store.root,
            watch_filter=None,
            debounce=self._debounce_ms,
            step=STEP_MS,
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            stop_event=_AnyEvent(self._stop, self._wake),
            force_polling=polling,
            poll_delay_ms=POLL_DELAY_MS,
            ignore_permission_denied=True,
            raise_interrupt=False,
        ):
            if self._stop.is_set() or self._wake.is_set():
                break
            if not store.root.exists():
                raise FileNotFoundError(store.root)
            full = time.monotonic() - last_full > FULL_SCAN_S
            hints = None if full else hints_for(store, (path for _, path in changes))
            if hints is None:
                last_full = time.monotonic()
            self._publish(self._build(hints))
        self._wake.clear()  # a refresh was asked for: the caller rebuilds in full


def hints_for(store: DirectoryStore, paths: Iterable[str]) -> dict[Space, set[str]] | None:
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


class _AnyEvent:
    """Stops watchfiles' wait on either of two events (it polls ``is_set``)."""

    def __init__(self, *events: threading.Event) -> None:
        self._events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)
