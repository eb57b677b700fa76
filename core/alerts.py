"""Alert rules over successive snapshots: each alert fires once when its condition starts
and once when it clears.

:func:`evaluate` is pure: it takes the rules, a snapshot and the state the
previous call returned, and gives the new state and the alerts to send.  A
condition must be absent for ``clearAfterSeconds`` before its alert clears, so
a storm of 429s (each pushing the shared deadline again) is one alert, not one
per 429 or per gap between them.

Rules live in ``.pi/config.json`` under ``dashboard.alerts``; every key is
optional and a bad one is reported with its reason while its default stays::

    {"dashboard": {"alerts": {
        "instanceStale": true,              # an instance stale or dead
        "backoffLongerThanSeconds": 30,     # a shared 429 backoff with more than this left (null: off)
        "queueDepthOver": 20,               # a queue deeper than this ...
        "queueDepthForSeconds": 60,         # ... for this long (null: off)
        "lockPastTtl": true,                # a lock file still there after its TTL
        "drainUnanswered": true,            # a drain request not acknowledged
        "problemKinds": ["corrupt", "unreadable", "config", "unknown-version"],
        "clearAfterSeconds": 5,
        "command": "notify-send pi-dash",   # gets each alert as JSON on stdin
        "jsonl": "~/.pi/alerts.jsonl"       # each alert appended as one line
    }}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError
from pydantic.alias_generators import to_camel

from .clock import utc_from_ms
from .snapshot import FleetSnapshot, Status

FIRING = "firing"
CLEARED = "cleared"

Seconds = Annotated[float, Strict(), Field(ge=0, le=86_400 * 365)]


class AlertRules(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, allow_inf_nan=False)

    instance_stale: Annotated[bool, Strict()] = True
    backoff_longer_than_seconds: Seconds | None = 30
    queue_depth_over: Annotated[int, Strict(), Field(ge=0)] | None = 20
    queue_depth_for_seconds: Seconds = 60
    lock_past_ttl: Annotated[bool, Strict()] = True
    drain_unanswered: Annotated[bool, Strict()] = True
    problem_kinds: tuple[str, ...] = ("corrupt", "unreadable", "config", "unknown-version")
    clear_after_seconds: Seconds = 5
    command: str | None = None
    jsonl: str | None = None


def parse_rules(document: Any, source: str) -> tuple[AlertRules, tuple[str, ...]]:
    """``dashboard.alerts`` of a parsed config; each bad key reported, its default kept."""
    section = document.get("dashboard", {}) if isinstance(document, dict) else {}
    raw = section.get("alerts", {}) if isinstance(section, dict) else None
    if not isinstance(raw, dict):
        return AlertRules(), (f"{source}: dashboard.alerts: expected an object; defaults used",)
    good: dict[str, Any] = {}
    problems = []
    for key, value in raw.items():
        try:
            AlertRules.model_validate({key: value})
        except ValidationError as exc:
            reasons = "; ".join(e["msg"] for e in exc.errors())
            problems.append(f"{source}: dashboard.alerts.{key}: {reasons}; default kept")
        else:
            good[key] = value
    return AlertRules.model_validate(good), tuple(problems)


def load_rules(path: str | Path | None) -> tuple[AlertRules, tuple[str, ...]]:
    """The rules of ``config.json`` at ``path`` (defaults when there is none or it is unreadable)."""
    if path is None:
        return AlertRules(), ()
    try:
        document = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return AlertRules(), ()
    except OSError as exc:
        return AlertRules(), (f"{path}: {exc.strerror}; default alert rules used",)
    except (ValueError, RecursionError) as exc:
        return AlertRules(), (f"{path}: malformed JSON ({exc}); default alert rules used",)
    return parse_rules(document, str(path))


@dataclass(frozen=True, slots=True)
class Alert:
    key: str  # what it is about: "instance:{id}", "backoff:{provider}:{model}", ...
    rule: str  # instance-stale | backoff | queue-depth | lock-past-ttl | drain-unanswered | problem
    state: str  # firing | cleared
    at: int  # epoch ms
    subject: str
    message: str
    figures: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert": self.rule,
            "state": self.state,
            "key": self.key,
            "subject": self.subject,
            "at": self.at,
            "atIso": utc_from_ms(self.at).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "message": self.message,
            "figures": dict(self.figures),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True, slots=True)
class AlertState:
    """What :func:`evaluate` carries from one snapshot to the next."""

    firing: Mapping[str, Alert] = field(default_factory=dict)
    deep_since: Mapping[str, int] = field(default_factory=dict)  # queue over the depth, since
    absent_since: Mapping[str, int] = field(default_factory=dict)  # a firing alert's condition gone, since


_Condition = tuple[str, str, str, dict[str, Any]]  # rule, subject, message, figures


def _conditions(rules: AlertRules, snapshot: FleetSnapshot, state: AlertState) -> tuple[dict[str, _Condition], dict[str, int]]:
    now = snapshot.taken_at_ms
    found: dict[str, _Condition] = {}
    if rules.instance_stale:
        for view in snapshot.instances:
            if view.status in (Status.STALE, Status.DEAD) and view.info is not None:
                age = view.heartbeat_age_ms or 0
                found[f"instance:{view.instance_id}"] = (
                    "instance-stale",
                    view.instance_id,
                    f"{view.instance_id} is {view.status.value}: last heartbeat {age / 1000:.0f} s ago",
                    {"status": view.status.value, "heartbeatAgeMs": age, "pid": view.info.pid},
                )
    if rules.backoff_longer_than_seconds is not None:
        for backoff in snapshot.backoffs:
            if backoff.remaining_ms > rules.backoff_longer_than_seconds * 1000:
                key = f"{backoff.provider}:{backoff.model}"
                found[f"backoff:{key}"] = (
                    "backoff",
                    key,
                    f"{key} backs off for {backoff.remaining_ms / 1000:.0f} s more "
                    f"({backoff.recent429s} 429s in 5 min, last reported by {backoff.last_reported_by})",
                    {"remainingMs": backoff.remaining_ms, "recent429s": backoff.recent429s, "reportedBy": backoff.last_reported_by},
                )
    deep_since: dict[str, int] = {}
    if rules.queue_depth_over is not None:
        for queue in snapshot.queues:
            depth = queue.state.pending_task_count
            if not queue.fresh or depth <= rules.queue_depth_over:
                continue
            since = deep_since[queue.instance_id] = state.deep_since.get(queue.instance_id, now)
            if now - since >= rules.queue_depth_for_seconds * 1000:
                found[f"queue:{queue.instance_id}"] = (
                    "queue-depth",
                    queue.instance_id,
                    f"{queue.instance_id} has {depth} pending tasks, over {rules.queue_depth_over} "
                    f"for {(now - since) / 1000:.0f} s",
                    {"depth": depth, "overSinceMs": since},
                )
    if rules.lock_past_ttl:
        for lock in snapshot.locks:
            if lock.lock is not None and lock.expired:
                found[f"lock:{lock.lock.resource}"] = (
                    "lock-past-ttl",
                    lock.lock.resource,
                    f"lock {lock.lock.resource} of {lock.lock.holder} is held {(now - lock.lock.expires_at) / 1000:.0f} s past its TTL",
                    {"holder": lock.lock.holder, "expiredAt": lock.lock.expires_at, "ageMs": lock.age_ms},
                )
    if rules.drain_unanswered:
        for control in snapshot.controls:
            if control.state == "not-acknowledged":
                found[f"drain:{control.instance_id}"] = (
                    "drain-unanswered",
                    control.instance_id,
                    f"{control.request.action} of {control.instance_id} requested "
                    f"{(now - control.request.requested_at) / 1000:.0f} s ago is not acknowledged",
                    {"requestedAt": control.request.requested_at, "requestedBy": control.request.requested_by},
                )
    kinds = set(rules.problem_kinds)
    for problem in snapshot.problems:
        if problem.kind in kinds:
            found[f"problem:{problem.kind}:{problem.where}"] = (
                "problem",
                problem.where,
                str(problem),
                {"kind": problem.kind, "where": problem.where},
            )
    return found, deep_since


def evaluate(rules: AlertRules, snapshot: FleetSnapshot, state: AlertState) -> tuple[AlertState, tuple[Alert, ...]]:
    """The alerts that start or clear with ``snapshot``, and the state for the next call."""
    now = snapshot.taken_at_ms
    found, deep_since = _conditions(rules, snapshot, state)
    firing = dict(state.firing)
    absent_since: dict[str, int] = {}
    sent: list[Alert] = []
    for key, (rule, subject, message, figures) in found.items():
        if key not in firing:
            firing[key] = alert = Alert(key, rule, FIRING, now, subject, message, figures)
            sent.append(alert)
    for key, alert in list(firing.items()):
        if key in found:
            continue
        since = state.absent_since.get(key, now)
        if now - since >= rules.clear_after_seconds * 1000:
            del firing[key]
            sent.append(Alert(key, alert.rule, CLEARED, now, alert.subject, f"cleared: {alert.message}", alert.figures))
        else:
            absent_since[key] = since
    return AlertState(firing, deep_since, absent_since), tuple(sent)
