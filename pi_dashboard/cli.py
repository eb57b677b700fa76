"""The ``pi-dash`` command line."""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from core.clock import ManualClock
from core.snapshot import FleetSnapshot, SnapshotBuilder
from core.store import DirectoryStore, Store, StoreError, default_root
from core.store.choice import redis_url

from . import __version__

# Imported where used: ``status --json`` of a large fleet pays for every module it
# loads, and needs neither the text reports (rich), nor the alert rules' models.
if TYPE_CHECKING:
    from textual.pilot import Pilot

    from core.alerts import AlertRules

    from .alerting import AlertSinks

    from .demo import DemoFleet

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE  # what a shell reports for a writer killed by SIGPIPE
WRITE_CHUNK = 65536
JSON = dict | list | str | int | float | bool | None


class UsageError(Exception):
    """An ordinary mistake on the command line: said in one line, exit status 2."""


class Failed(Exception):
    """The command could not do its job (not the user's mistake): one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (no usage block): what is wrong and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
ENV_READ_ONLY = "PI_DASH_READ_ONLY"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pi-dash",
        description="Live monitor and coordination engine for fleets of pi coding-agent instances. "
        "Without a command: the live dashboard.",
    )
    parser.add_argument("--version", action="version", version=f"pi-dash {__version__}")
    root_help = "coordination directory (default: $PI_RUNTIME_DIR, else ~/.pi/runtime)"
    redis_help = "watch a Redis-backed fleet instead (default: $PI_DASH_REDIS)"
    foreign_help = "use a coordination directory that another user owns (refused by default)"
    parser.add_argument("--root", metavar="DIR", help=root_help)
    parser.add_argument("--allow-foreign-root", action="store_true", help=foreign_help)
    parser.add_argument("--redis", metavar="URL", help=redis_help)
    theme_help = "colour theme by name: pi-dark, pi-light, pi-high-contrast or one of yours (remembered)"
    parser.add_argument("--theme", metavar="NAME", help=theme_help)
    parser.add_argument(
        "--read-only",
        action="store_true",
        help=f"look, never touch: no drain, release or removal is offered, and the fleet is opened so that "
        f"nothing can be written (also ${ENV_READ_ONLY}=1; status, limits, why, metrics and watch always are)",
    )
    _alert_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    status = commands.add_parser("status", help="print the fleet's state once (a table, or JSON)")
    status.add_argument("--root", metavar="DIR", help=root_help, default=argparse.SUPPRESS)
    status.add_argument("--allow-foreign-root", action="store_true", help=foreign_help, default=argparse.SUPPRESS)
    status.add_argument("--redis", metavar="URL", help=redis_help, default=argparse.SUPPRESS)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--at",
        type=int,
        metavar="EPOCH_MS",
        help="judge the directory as of this instant (epoch milliseconds), e.g. to replay a capture; "
        "pids are then not checked (they can only be checked now)",
    )
    demo = commands.add_parser("demo", help="start the built-in demo fleet (real processes) and watch it")
    demo.add_argument("--workers", type=_positive_int, default=6, metavar="N", help="worker processes (default 6)")
    demo.add_argument("--theme", metavar="NAME", help=theme_help, default=argparse.SUPPRESS)
    shot = commands.add_parser("snapshot", help="render one frame of the dashboard to an SVG file, no terminal needed")
    shot.add_argument("--root", metavar="DIR", help=root_help, default=argparse.SUPPRESS)
    shot.add_argument("--allow-foreign-root", action="store_true", help=foreign_help, default=argparse.SUPPRESS)
    shot.add_argument("--redis", metavar="URL", help=redis_help, default=argparse.SUPPRESS)
    shot.add_argument("-o", "--output", metavar="FILE.svg", required=True)
    shot.add_argument("--width", type=int, default=160)
    shot.add_argument("--height", type=int, default=48)
    shot.add_argument("--after", type=float, default=0.0, metavar="SECONDS", help="watch live this long first")
    shot.add_argument("--demo", action="store_true", help="of the built-in demo fleet")
    shot.add_argument("--theme", metavar="NAME", help="colour theme by name (not remembered)", default=argparse.SUPPRESS)
    limits = commands.add_parser("limits", help="each provider's rate limit, usage and 429 backoff")
    limits.add_argument("--root", metavar="DIR", help=root_help, default=argparse.SUPPRESS)
    limits.add_argument("--allow-foreign-root", action="store_true", help=foreign_help, default=argparse.SUPPRESS)
    limits.add_argument("--redis", metavar="URL", help=redis_help, default=argparse.SUPPRESS)
    limits.add_argument("--provider", metavar="P", help="only this provider")
    limits.add_argument("--config", metavar="FILE", help="config.json (default: $PI_CONFIG, ./.pi/config.json, ~/.pi/config.json)")
    limits.add_argument("--json", action="store_true", help="machine-readable output")
    why = commands.add_parser("why", help="what holds an instance's work back right now, in one paragraph")
    why.add_argument("instance", metavar="INSTANCE", help="instance id, name (PI_INSTANCE_ID) or a prefix of the id")
    why.add_argument("--root", metavar="DIR", help=root_help, default=argparse.SUPPRESS)
    why.add_argument("--redis", metavar="URL", help=redis_help, default=argparse.SUPPRESS)
    watch = commands.add_parser("watch", help="evaluate the alert rules without a screen until SIGTERM")
    watch.add_argument("--root", metavar="DIR", help=root_help, default=argparse.SUPPRESS)
    watch.add_argument("--redis", metavar="URL", help=redis_help, default=argparse.SUPPRESS)
    _alert_options(watch, argparse.SUPPRESS)
    metrics = commands.add_parser("metrics", help="serve the fleet's metrics for Prometheus at /metrics")
    metrics.add_argument("--listen", metavar="HOST:PORT", required=True, help="address to serve on (port 0: any free one)")
    metrics.add_argument("--root", metavar="DIR", help=root_help, default=argparse.SUPPRESS)
    metrics.add_argument("--redis", metavar="URL", help=redis_help, default=argparse.SUPPRESS)
    return parser


def _alert_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument("--on-alert", metavar="CMD", default=default, help="shell command run for each alert, the alert as JSON on stdin")
    parser.add_argument("--alert-log", metavar="FILE", default=default, help="append each alert to this JSONL file")
    parser.add_argument(
        "--config", metavar="FILE", default=default, help="config.json with dashboard.alerts (default: $PI_CONFIG, ./.pi/config.json, ~/.pi/config.json)"
    )


def _alerting(args: argparse.Namespace) -> tuple[AlertRules, AlertSinks]:
    """The rules of config.json and their sinks (``--on-alert`` / ``--alert-log`` over the config's)."""
    from core.alerts import load_rules
    from core.provider_config import config_path

    from .alerting import AlertSinks
    from .text import printable

    rules, problems = load_rules(getattr(args, "config", None) or config_path())
    for problem in problems:
        print(f"pi-dash: {printable(problem)}", file=sys.stderr)
    command = getattr(args, "on_alert", None) or rules.command
    jsonl = getattr(args, "alert_log", None) or rules.jsonl
    return rules, AlertSinks(command, jsonl, lambda message: print(f"pi-dash: {message}", file=sys.stderr, flush=True))


def cmd_watch(args: argparse.Namespace) -> int:
    from .alerting import watch
    from .text import printable

    try:
        store = _store(args)
        SnapshotBuilder(store).build()  # a fleet that cannot be read is a usage error, said once
    except StoreError as exc:
        print(f"pi-dash: cannot read the fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rules, sinks = _alerting(args)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"watching {printable(store.describe())}; alerts go to stdout"
          + (f", {printable(sinks.command)}" if sinks.command else "")
          + (f", {printable(str(sinks.jsonl))}" if sinks.jsonl else ""), flush=True)
    try:
        watch(store, rules, sinks, stop)
    finally:
        sinks.close()
    return 0


def _read_only(args: argparse.Namespace) -> bool:
    """``--read-only``, or ``$PI_DASH_READ_ONLY`` set to 1 / true / yes."""
    return bool(getattr(args, "read_only", False)) or os.environ.get(ENV_READ_ONLY, "").strip().lower() in ("1", "true", "yes")


def _store(args: argparse.Namespace, read_only: bool = True) -> Store:
    """The fleet to look at: ``--redis`` / ``$PI_DASH_REDIS``, else the directory.

    Read-only unless the caller may act on the fleet (the dashboard, without ``--read-only``).
    """
    url = redis_url(args.redis)
    if url:
        from core.store.redis_store import RedisStore

        return RedisStore(url, read_only=read_only)
    return DirectoryStore(default_root(args.root), allow_foreign_root=args.allow_foreign_root, read_only=read_only)


def _theme(args: argparse.Namespace) -> str | None:
    """The ``--theme`` asked for, checked against the themes there are."""
    from .theme_files import load_themes

    name = getattr(args, "theme", None)
    if name is None:
        return None
    names = [theme.name for theme in load_themes()[0]]
    if name not in names:
        raise UsageError(f"no theme named {name!r}; there are: {', '.join(names)}")
    return name


def _snapshot(args: argparse.Namespace) -> FleetSnapshot:
    at = getattr(args, "at", None)
    store = _store(args)
    if at is not None:
        return SnapshotBuilder(store, clock=ManualClock(now_ms=at), check_pids=False).build()
    return SnapshotBuilder(store).build()


def _valid(value: JSON) -> JSON:
    """``value`` with every string (keys too) encodable as UTF-8 (file names may not be)."""
    from .text import valid_unicode

    if isinstance(value, str):
        return valid_unicode(value)
    if isinstance(value, dict):
        return {valid_unicode(str(k)): _valid(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_valid(v) for v in value]
    return value


def _write(text: str, encoding: str) -> None:
    """``text`` to stdout as ``encoding`` (what it cannot encode as an escape), in pieces:
    one huge write into a pipe its reader closed can end short without raising."""
    out = getattr(sys.stdout, "buffer", None)
    if out is None:  # a text stream with no bytes below it (a caller's StringIO) takes the text
        sys.stdout.write(text)
        return
    data = text.encode(encoding, "backslashreplace")
    sys.stdout.flush()
    for start in range(0, len(data), WRITE_CHUNK):
        out.write(data[start : start + WRITE_CHUNK])
    out.flush()


def _print(text: str) -> None:
    """A report in the locale's encoding."""
    _write(text + "\n", getattr(sys.stdout, "encoding", None) or "utf-8")


def _print_json(document: JSON) -> None:
    """JSON as UTF-8 whatever the locale (RFC 8259), non-ASCII text as itself."""
    _write(json.dumps(_valid(document), indent=2, ensure_ascii=False) + "\n", "utf-8")


def cmd_limits(args: argparse.Namespace) -> int:
    # Imported here: the provider config's models cost every other command their start-up.
    from core.limits_view import provider_limits
    from core.provider_config import config_path, load_settings

    from .status_report import render_limits

    snapshot = _snapshot(args)
    settings = load_settings(args.config or config_path())
    rows = provider_limits(settings, snapshot, args.provider)
    if args.json:
        _print_json({"providers": [row.to_dict() for row in rows], "problems": list(settings.problems)})
    else:
        _print(render_limits(rows, settings.problems))
    return 0 if rows else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    snapshot = _snapshot(args)
    if getattr(args, "json", False):
        # The snapshot lives until the process ends: frozen, the collector no longer
        # walks its objects (two million for 10,000 instances, 0.2 s a walk) when the
        # writer's short-lived dicts set off a full collection.
        gc.freeze()
        binary = getattr(sys.stdout, "buffer", None)
        if binary is None:  # a text stream (stdout redirected inside a program): give it text
            document = io.BytesIO()
            snapshot.write_json(document)
            sys.stdout.write(document.getvalue().decode() + "\n")
        else:
            sys.stdout.flush()
            snapshot.write_json(binary)
            binary.write(b"\n")
            binary.flush()
    else:
        from .status_report import render

        _print(render(snapshot, width=shutil.get_terminal_size((100, 24)).columns))
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    from .why import why

    snapshot = _snapshot(args)
    if snapshot is None:
        return EXIT_USAGE
    code, text = why(snapshot, args.instance)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _until_terminated() -> None:
    """Block until SIGTERM or SIGINT (a service's clean stop)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def cmd_metrics(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from .metrics import FleetCollector, SnapshotOnDemand, parse_listen

    try:
        host, port = parse_listen(args.listen)
        store = _store(args)
        builder = SnapshotBuilder(store)
        builder.build()  # a fleet that cannot be read at all is an error now, not at the first scrape
    except ValueError as exc:
        print(f"pi-dash: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"pi-dash: cannot read the fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(SnapshotOnDemand(builder)))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        print(f"pi-dash: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"serving http://{shown}:{bound_port}/metrics for {store.describe()}", flush=True)
    _until_terminated()
    server.shutdown()
    server.server_close()
    thread.join(5)
    return 0


class _DemoLauncher:
    """Starts the demo fleet on request (key D, or ``pi-dash demo``) and cleans up after it."""

    def __init__(self, workers: int = 6, read_only: bool = False) -> None:
        self.workers = workers
        self.read_only = read_only
        self.fleet: DemoFleet | None = None
        self.directory: tempfile.TemporaryDirectory[str] | None = None

    def __call__(self) -> DirectoryStore:
        from .demo import DemoFleet

        self.stop()
        self.directory = tempfile.TemporaryDirectory(prefix="pi-dash-demo-")
        root = Path(self.directory.name) / "runtime"
        self.fleet = DemoFleet(root, workers=self.workers)
        self.fleet.start()
        return DirectoryStore(root, read_only=self.read_only)

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
            self.fleet = None
        if self.directory is not None:
            self.directory.cleanup()
            self.directory = None


def cmd_dashboard(args: argparse.Namespace, demo_now: bool = False) -> int:
    from .app import PiDashApp

    theme = _theme(args)
    read_only = _read_only(args)
    launcher = _DemoLauncher(getattr(args, "workers", 6), read_only)
    try:
        store = launcher() if demo_now else _store(args, read_only)
        rules, sinks = _alerting(args)
        app = PiDashApp(store, start_demo=launcher, theme=theme, remember=True, alerts=(rules, sinks))

        def hang_up(signum: int, frame: object) -> None:
            # The terminal is gone (SIGHUP) or we are told to go (SIGTERM): there is
            # no screen to restore (Textual would wait on it for ever), but the demo's
            # processes and directory must still go.
            launcher.stop()
            os._exit(128 + signum)

        for signum in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(signum, hang_up)
        app.run()
        sinks.close()
    finally:
        launcher.stop()
    return app.return_code or 0  # non-zero when the app stopped on an error (Textual said which)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from .app import PiDashApp

    read_only = _read_only(args)
    output = Path(args.output)
    folder = output.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {output}: there is no directory {folder}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {output}: {folder} is not writable")
    theme = _theme(args)
    launcher = _DemoLauncher(read_only=read_only)
    refused: list[str] = []
    written: list[Path] = []
    try:
        store = launcher() if args.demo else _store(args, read_only)
        app = PiDashApp(store, live=args.after > 0, theme=theme)

        async def capture(pilot: Pilot[None]) -> None:
            await pilot.pause(args.after)
            if app.return_code:
                return  # the app failed already and is closing: a frame of it is no snapshot
            try:
                written.append(Path(app.save_screenshot(filename=output.name, path=str(folder.resolve()))))
            except OSError as exc:
                refused.append(f"cannot write {output}: {exc.strerror or exc}")
            app.exit()

        app.run(headless=True, size=(args.width, args.height), auto_pilot=capture)
    finally:
        launcher.stop()
    if refused:
        raise UsageError(refused[0])
    if app.return_code or not written:
        # The app failed (Textual said why above): a frame of a failed app is no snapshot.
        for path in written:
            path.unlink(missing_ok=True)
        raise Failed(f"no snapshot written: the dashboard stopped with status {app.return_code}")
    from .text import UserText

    _print(f"wrote {UserText(str(output))}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "limits":
        return cmd_limits(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "snapshot":
        return cmd_snapshot(args)
    if args.command == "why":
        return cmd_why(args)
    if args.command == "metrics":
        return cmd_metrics(args)
    if args.command == "watch":
        return cmd_watch(args)
    return cmd_dashboard(args, demo_now=args.command == "demo")


def _fail(message: str) -> None:
    from .text import UserText

    print(f"pi-dash: {UserText(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when the command did its job; otherwise one line on stderr and a non-zero status."""
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(errors="backslashreplace")  # a message the locale cannot encode still gets out
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except StoreError as exc:
        _fail(f"cannot read the fleet: {exc}")
        return EXIT_USAGE
    except Failed as exc:
        _fail(str(exc))
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly; flushing at exit must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as exc:  # a failure nothing above foresaw: still one line, not a traceback
        _fail(f"failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
