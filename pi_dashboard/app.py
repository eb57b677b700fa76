"""The live dashboard: one FleetSnapshot at a time, rendered into small panes.

Data flows one way: the :class:`~pi_dashboard.source.FleetSource` thread builds
snapshots, the app hands each to every pane's ``show``; actions go back only
through :class:`core.control.FleetControl`.
"""

from __future__ import annotations

import gc
import getpass
import socket
from collections.abc import Callable, Iterable

from rich.text import Text
from textual import events, on
from textual.app import App, ComposeResult
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Container
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Footer, Input, Static

from core.alerts import FIRING, AlertRules, AlertState, evaluate
from core.clock import SYSTEM_CLOCK, Clock
from core.control import ActionResult, FleetControl
from core.snapshot import FleetSnapshot, InstanceView, Problem, Status
from core.store import Store

from .alerting import AlertSinks
from .actions import FLEET_CHANGING, SECONDARY_PANES, ZOOM_KEY, bindings, offered
from .messages import ActionDone, ActionFailed, DemoStarted, RecordUnshown
from .prefs import load_prefs, save_prefs
from .screens.confirm import ConfirmScreen
from .screens.details import DetailsScreen
from .screens.help import HelpScreen
from .source import DEBOUNCE_MS, FleetSource, SourceState
from .text import UserText
from .theme_files import load_themes
from .widgets.backoff_table import BackoffTable
from .widgets.event_log import EventLogView
from .widgets.fleet_header import FleetHeader
from .widgets.instances_table import InstancesTable
from .widgets.keyed_table import KeyedTable
from .widgets.locks_table import LocksTable
from .widgets.parallelism_table import ParallelismTable
from .widgets.problems_panel import ProblemsPanel
from .widgets.queue_chart import QueueChart
from .widgets.steal_stats import StealStats

OWN_PROBLEMS_KEPT = 100
DRAIN_OVER = ("completed", "offline")  # states of a drain request that nothing can cancel
COMPACT_WIDTH = 120
COMPACT_HEIGHT = 34
DEFAULT_THEME = "pi-dark"


class SnapshotReady(Message):
    """The source has a new state to take (posted from its thread)."""


class DashCommands(Provider):
    """The dashboard's actions in the command palette."""

    def _commands(self) -> Iterable[tuple[str, Callable[[], object], str]]:
        app = self.app
        assert isinstance(app, PiDashApp)
        for entry in offered(app.read_only):
            if entry.palette is not None and entry.action is not None:
                yield entry.palette, (lambda action=entry.action: app.run_action(action)), entry.description

    async def discover(self) -> Hits:
        for name, action, help_text in self._commands():
            yield DiscoveryHit(name, action, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, action, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), action, help=help_text)


class PiDashApp(App[None]):
    CSS_PATH = "pi_dash.tcss"
    TITLE = "pi-dash"
    COMMANDS = App.COMMANDS | {DashCommands}
    BINDINGS = bindings()

    paused: reactive[bool] = reactive(False)

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = SYSTEM_CLOCK,
        live: bool = True,
        check_pids: bool = True,
        start_demo: Callable[[], Store] | None = None,
        theme_dirs: list | None = None,
        debounce_ms: int = DEBOUNCE_MS,
        theme: str | None = None,
        remember: bool = False,
        alerts: tuple[AlertRules, AlertSinks | None] | None = None,
    ) -> None:
        """``theme`` overrides the remembered one; ``remember`` saves theme and sort
        changes for the next run (the interactive dashboard, not snapshots or tests)."""
        super().__init__()
        self.alert_rules, self.alert_sinks = alerts or (None, None)
        self._alert_state = AlertState()
        self.clock = clock
        self.live = live
        self.check_pids = check_pids
        self.debounce_ms = debounce_ms
        self._start_demo = start_demo
        self._demo_starting = False
        self._theme_dirs = theme_dirs
        self._connect(store)
        self.snapshot: FleetSnapshot | None = None
        self.state: SourceState | None = None
        self._held: SourceState | None = None
        self.shown_pane = 1
        self.zoomed: str | None = None  # the id of the pane that takes the whole body
        self.theme_names: list[str] = []
        self.prefs = load_prefs()
        self._asked_theme = theme
        self._remember = remember
        # The dashboard's own problems (records it could not show, actions that failed), newest last.
        self.own_problems: dict[str, Problem] = {}
        self._collector_paused = False  # the first frame's: _resume_collector

    @property
    def read_only(self) -> bool:
        """The store refuses writes (``--read-only``): actions that change the fleet are not offered."""
        return self.store.read_only

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hidden from the footer and never run in read-only mode; the store would refuse them anyway."""
        return not (self.read_only and action in FLEET_CHANGING)

    def _connect(self, store: Store) -> None:
        self.store = store
        self.source = FleetSource(
            store, self._announce, clock=self.clock, check_pids=self.check_pids, debounce_ms=self.debounce_ms
        )
        actor = f"pi-dash:{getpass.getuser()}@{socket.gethostname()}"
        self.control = FleetControl(store, actor, self.clock)

    # --------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        yield FleetHeader(id="header")
        yield Static(id="empty")
        with Container(id="panes"):
            # Grid order (wide terminals): instances | queues / parallelism | backoff | stealing
            # / events | locks | problems.
            yield InstancesTable(id="instances", classes="pane")
            yield QueueChart(id="queues", classes="pane secondary")
            yield ParallelismTable(id="parallelism", classes="pane secondary")
            yield BackoffTable(id="backoff", classes="pane secondary")
            yield StealStats(id="stealing", classes="pane secondary")
            yield EventLogView(id="events", classes="pane secondary")
            yield LocksTable(id="locks", classes="pane secondary")
            yield ProblemsPanel(id="problems", classes="pane secondary")
        yield Input(placeholder="filter instances (escape clears)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        themes, problems = load_themes(self._theme_dirs)
        for theme in themes:
            self.register_theme(theme)
        self.theme_names = [t.name for t in themes]
        for wanted in (self._asked_theme, self.prefs.theme, DEFAULT_THEME):
            if wanted in self.theme_names:
                self.theme = wanted
                break
        if self._asked_theme is not None:
            self._save_prefs(theme=self.theme)
        for table in self.query(KeyedTable).results():
            remembered = self.prefs.sorts.get(table.id or "")
            if remembered is not None:
                table.sort_by(*remembered)  # a column that no longer exists is ignored
        for pane in self.query(".pane").results():
            pane.can_focus = True  # tab reaches every pane, so any of them can be zoomed
        self.query_one("#instances").border_title = "Instances"
        for pane, title in SECONDARY_PANES:
            self.query_one(f"#{pane}").border_title = title
        self._layout_for(self.size.width, self.size.height)
        if gc.isenabled():
            gc.disable()  # until the first frame is on screen (or the app ends): see _resume_collector
            self._collector_paused = True
            self.call_after_refresh(self._resume_collector)
        self._render_state(self.source.build_now())
        if self.snapshot is not None:
            self._check_alerts(self.snapshot)
        for problem in problems:
            self.query_one(EventLogView).note("theme", problem, self.clock.now_ms())
        if self.live:
            self.source.start()
        self.query_one(InstancesTable).focus()

    def _resume_collector(self) -> None:
        """The cycle collector resumes, the first frame's objects counted as old ones.

        The first frame allocates objects for every record, row and cell, and nearly
        all of them stay.  Collecting meanwhile walked them over and over: with 10,000
        instances, four full collections, a third of the first frame's CPU.  Frozen
        and unfrozen, they join the oldest generation unwalked (``gc.unfreeze``), and
        are looked at again only in a full collection, like anything long-lived.
        """
        if self._collector_paused:
            self._collector_paused = False
            gc.freeze()
            gc.unfreeze()
            gc.enable()

    def on_unmount(self) -> None:
        self._resume_collector()
        self.source.stop()

    def on_resize(self, event: events.Resize) -> None:
        self._layout_for(event.size.width, event.size.height)

    def _layout_for(self, width: int, height: int) -> None:
        """Small terminals show the instances and one other pane (keys 1..7 pick which);
        a zoomed pane takes the whole body at any size."""
        compact = width < COMPACT_WIDTH or height < COMPACT_HEIGHT
        self.set_class(compact, "-compact")
        self.query_one(Footer).compact = compact  # less space between keys: the ones that matter fit in 80
        self.set_class(self.zoomed is not None, "-zoomed")
        for number, (pane, _) in enumerate(SECONDARY_PANES, start=1):
            widget = self.query_one(f"#{pane}")
            widget.set_class(number == self.shown_pane, "-shown")
            widget.border_subtitle = f"{number} of 7 · keys 1-7 switch" if compact else ""
        for widget in self.query(".pane").results():
            zoomed = widget.id == self.zoomed
            widget.set_class(zoomed, "-zoom")
            if zoomed:
                widget.border_subtitle = f"zoomed · {ZOOM_KEY} restores"
            elif widget.id == "instances":
                widget.border_subtitle = ""

    # ------------------------------------------------------------- updates
    def _announce(self) -> None:
        self.post_message(SnapshotReady())

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        """Apply the newest state (the source builds at most twenty a second and keeps only the newest)."""
        if not self.is_running or self._closing:
            return  # closing: the panes may already be gone
        state = self.source.take()
        if state is None:
            return
        if state.snapshot is not None:
            self._check_alerts(state.snapshot)
        if self.paused:
            self._held = state
        else:
            self._render_state(state)

    def _render_state(self, state: SourceState) -> None:
        self.state = state
        if state.snapshot is not None:
            self.snapshot = state.snapshot
        snapshot = self.snapshot
        self.query_one(FleetHeader).show(snapshot, paused=self.paused, watching=state.watching, error=state.error)
        self._show_empty(state, snapshot)
        if snapshot is None:
            return
        for pane in (InstancesTable, ParallelismTable, BackoffTable, QueueChart, StealStats, LocksTable, EventLogView):
            try:
                self.query_one(pane).show(snapshot)
            except Exception as exc:  # the last guard: the pane keeps what it showed, the app goes on
                self._own_problem("unshown", UserText(f"pane {pane.__name__}"), UserText(f"{type(exc).__name__}: {exc}"))
        self._show_problems()
        for screen in self.screen_stack:
            if isinstance(screen, DetailsScreen):
                screen.show(snapshot)

    def _show_problems(self) -> None:
        if self.snapshot is not None:
            self.query_one(ProblemsPanel).show(self.snapshot, list(reversed(self.own_problems.values())))

    def _own_problem(self, kind: str, where: UserText, message: UserText) -> None:
        """A problem of the dashboard's own, listed first in the problems pane until it quits."""
        self.own_problems.pop(where.raw, None)
        self.own_problems[where.raw] = Problem(kind, where.raw, message.raw)
        while len(self.own_problems) > OWN_PROBLEMS_KEPT:
            del self.own_problems[next(iter(self.own_problems))]
        if self.is_mounted:  # widgets post while the first frame is being built
            self._show_problems()

    def on_record_unshown(self, message: RecordUnshown) -> None:
        self._own_problem("unshown", message.where, message.reason)

    def _show_empty(self, state: SourceState, snapshot: FleetSnapshot | None) -> None:
        empty = self.query_one("#empty", Static)
        nobody = snapshot is None or not snapshot.instances
        empty.display = nobody
        if nobody:
            text = Text(f"No pi fleet in {UserText(self.store.describe())}. ", style="bold")
            text.append("Start pi here, point --root / PI_RUNTIME_DIR elsewhere")
            if self._start_demo is not None:
                text.append(", or press ")
                text.append("D", style="bold reverse")
                text.append(" to start the built-in demo fleet")
            text.append(".")
            empty.update(text)

    def watch_paused(self, paused: bool) -> None:
        if not paused and self._held is not None:
            held, self._held = self._held, None
            self._render_state(held)
        elif self.state is not None:
            self.query_one(FleetHeader).show(self.snapshot, paused=paused, watching=self.state.watching, error=self.state.error)

    def _check_alerts(self, snapshot: FleetSnapshot) -> None:
        """Each alert that starts or clears: a notification, the event pane, and the sinks."""
        if self.alert_rules is None:
            return
        self._alert_state, sent = evaluate(self.alert_rules, snapshot, self._alert_state)
        for alert in sent:
            firing = alert.state == FIRING
            self.notify(UserText(alert.message).shown, title=str(UserText(f"alert: {alert.rule}")), severity="warning" if firing else "information", markup=False)
            self._note("alert", f"{'firing' if firing else 'cleared'} {alert.rule}: {alert.message}")
            if self.alert_sinks is not None:
                self.alert_sinks.send(alert)

    # ------------------------------------------------------------- helpers
    def _selected_instance(self) -> InstanceView | None:
        key = self.query_one(InstancesTable).selected_key
        if key is None or self.snapshot is None:
            return None
        return next((v for v in self.snapshot.instances if v.key == key), None)

    def _note(self, kind: str, message: str) -> None:
        self.query_one(EventLogView).note(kind, message, self.clock.now_ms())

    def _run_action(self, action: str, call: Callable[[], ActionResult]) -> None:
        """Run ``call`` (store work: it may block or fail) in a worker; its result comes back as a message."""

        def work() -> None:
            try:
                result = call()
            except Exception as exc:  # the store failed (Redis gone, disk full...): reported, never an exit
                self.post_message(ActionFailed(action, UserText(f"{type(exc).__name__}: {exc}")))
            else:
                self.post_message(ActionDone(action, result))

        self.run_worker(work, name=action, group="actions", thread=True, exit_on_error=False)

    def on_action_done(self, message: ActionDone) -> None:
        result = message.result
        self.notify(UserText(result.message).shown, severity="information" if result.done else "warning", markup=False)
        self._refresh_after_action()

    def on_action_failed(self, message: ActionFailed) -> None:
        if message.action == "start_demo":
            self._demo_starting = False
        self.notify(f"{message.action} failed: {message.reason}", severity="error", markup=False, timeout=10)
        self._own_problem("action-failed", UserText(message.action), message.reason)
        self._refresh_after_action()

    def _refresh_after_action(self) -> None:
        self.source.refresh()
        if not self.live:
            self._render_state(self.source.build_now())

    @on(InstancesTable.RowSelected, "#instances")
    def _instance_chosen(self, event: InstancesTable.RowSelected) -> None:
        """Enter on the instances table (the table takes the key itself) opens the details."""
        self.action_details()

    # ------------------------------------------------------------- actions
    def action_help(self) -> None:
        self.push_screen(HelpScreen(offered(self.read_only), read_only=self.read_only))

    def action_details(self) -> None:
        view = self._selected_instance()
        if view is not None and self.snapshot is not None:
            self.push_screen(DetailsScreen(view, self.snapshot))

    def action_drain(self) -> None:
        view = self._selected_instance()
        if view is not None and view.status is Status.DRAINING:
            self.notify(f"{UserText(view.instance_id)} is draining already; c cancels the drain.", severity="warning", markup=False)
            return
        if view is None or view.info is None or view.status in (Status.DEAD, Status.OFFLINE):
            self.notify("Select a live instance to drain.", severity="warning")
            return
        instance = UserText(view.instance_id)
        question = ("Drain ", instance, "?\nIt finishes its current work, takes and steals nothing new, then goes offline.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._run_action(f"drain {instance}", lambda: self.control.request_drain(view.instance_id))

        self.push_screen(ConfirmScreen(*question), answered)

    def action_cancel_drain(self) -> None:
        view = self._selected_instance()
        asked = None
        if view is not None and self.snapshot is not None:
            asked = next((c for c in self.snapshot.controls if c.instance_id == view.instance_id and c.state not in DRAIN_OVER), None)
        if view is None or asked is None:
            self.notify("Select an instance that is draining (or asked to) to cancel its drain.", severity="warning")
            return
        instance = UserText(view.instance_id)
        question = ("Cancel the drain of ", instance, "?\nIt resumes taking and stealing work (a core instance within a second).")

        def answered(yes: bool | None) -> None:
            if yes:
                self._run_action(f"cancel drain {instance}", lambda: self.control.cancel_drain(view.instance_id))

        self.push_screen(ConfirmScreen(*question), answered)

    def action_remove(self) -> None:
        view = self._selected_instance()
        if view is None or view.status not in (Status.DEAD, Status.CORRUPT) or view.raw is None:
            self.notify("Only a dead or corrupt instance's files can be removed.", severity="warning")
            return
        instance = UserText(view.instance_id)
        question = ("Remove the files of ", instance, f" ({view.status.value})?\nNothing is removed if its file changed since it was seen.")
        seen = view.raw

        def answered(yes: bool | None) -> None:
            if yes:
                self._run_action(f"remove {instance}", lambda: self.control.remove_instance_files(view.key, seen))

        self.push_screen(ConfirmScreen(*question), answered)

    def action_release_lock(self) -> None:
        table = self.query_one(LocksTable)
        view = table.selected_lock
        if view is None or view.lock is None:
            self.notify("Select a lock in the locks pane first (key 6 on small terminals).", severity="warning")
            return
        lock = view.lock
        resource = UserText(lock.resource)
        question = ("Release lock ", resource, " held by ", UserText(lock.holder), "?\nOnly this very lock is removed: if it changed hands meanwhile, nothing is.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._run_action(f"release {resource}", lambda: self.control.release_lock(lock))

        self.push_screen(ConfirmScreen(*question), answered)

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._note("pause", "updates paused" if self.paused else "updates resumed")

    def _sorted_table(self) -> KeyedTable:
        """The table ``s`` / ``S`` sort: the focused one, else the instances."""
        focused = self.focused
        return focused if isinstance(focused, KeyedTable) else self.query_one(InstancesTable)

    def action_sort_next(self) -> None:
        self._sorted_table().sort_next()

    def action_sort_reverse(self) -> None:
        self._sorted_table().sort_reversed()

    @on(KeyedTable.Sorted)
    def _table_sorted(self, event: KeyedTable.Sorted) -> None:
        """A person sorted a table (a key or a header click): noted, and remembered for the next run."""
        table = event.table
        self._note("sort", f"{table.border_title or table.id} sorted by {table.sort_label}")
        if table.id:
            self._save_prefs(sorts={**self.prefs.sorts, table.id: table.sort_state})

    def action_zoom(self) -> None:
        """The focused pane takes the whole body, or the zoomed one gives it back."""
        if self.zoomed is not None:
            self.zoomed = None
        else:
            node = self.focused
            while node is not None and not node.has_class("pane"):
                node = node.parent
            self.zoomed = node.id if node is not None and node.id else "instances"
        self._layout_for(self.size.width, self.size.height)

    def _save_prefs(self, **changes: object) -> None:
        """Remember a theme or sort for the next run (interactive dashboards only)."""
        if not self._remember:
            return
        for name, value in changes.items():
            setattr(self.prefs, name, value)
        problem = save_prefs(self.prefs)
        if problem is not None:
            self._note("prefs", problem)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_back(self) -> None:
        """Escape: clear the filter; else leave the zoom (k9s users reach for it)."""
        box = self.query_one("#filter", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.query_one(InstancesTable).focus()
        elif self.zoomed is not None:
            self.action_zoom()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        table = self.query_one(InstancesTable)
        table.filter_text = event.value
        if self.snapshot is not None:
            table.show(self.snapshot)

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self.query_one(InstancesTable).focus()
        if event.value:
            self._note("filter", f"instances filtered by {event.value!r}")

    def action_next_theme(self) -> None:
        names = self.theme_names or list(self.available_themes)
        following = names[(names.index(self.theme) + 1) % len(names)] if self.theme in names else names[0]
        self.theme = following
        self._note("theme", f"theme {following}")
        self._save_prefs(theme=following)

    def watch_theme(self, theme: str) -> None:
        for table in self.query(".pane").results():
            if hasattr(table, "restyle"):
                table.restyle()
        if self.state is not None:
            self._render_state(self.state)

    def action_show_pane(self, number: int) -> None:
        self.shown_pane = number
        if self.zoomed is not None:
            self.zoomed = SECONDARY_PANES[number - 1][0]  # zoomed: the picked pane takes the body
        self._layout_for(self.size.width, self.size.height)
        self.query_one(f"#{SECONDARY_PANES[number - 1][0]}").focus()

    def action_start_demo(self) -> None:
        """Spawning six processes takes a while: a worker does it, the screen stays live."""
        start = self._start_demo
        if start is None or self._demo_starting:
            return
        self._demo_starting = True
        self._note("demo", "starting the demo fleet...")

        def work() -> None:
            try:
                store = start()
            except Exception as exc:  # a failed start becomes a notice, never a traceback
                self.post_message(ActionFailed("start_demo", UserText(str(exc))))
                return
            self.post_message(DemoStarted(store))

        self.run_worker(work, name="start_demo", group="demo", thread=True, exit_on_error=False)

    def on_demo_started(self, message: DemoStarted) -> None:
        self._demo_starting = False
        self.source.stop()
        self._connect(message.store)
        self._note("demo", f"demo fleet started in {self.store.describe()}")
        self._render_state(self.source.build_now())
        if self.live:
            self.source.start()
