"""Hostile records, written raw (as another program would) beside the test fleet's good ones.

Every piece of user text in them carries one payload: a marker, then what a
terminal or Rich would act on (escape sequences that set the window title or
clear the screen, BEL, C1 controls, bidi overrides, Rich markup, a lone
surrogate).  What the dashboard shows must be the marker followed by the
payload's *escaped* spelling, wherever it appears.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.clock import utc_from_ms
from core.locks import lock_key

from .conftest import NOW

# What each payload carries after its marker: a retitle, a clear, a bell, CSI as one C1 byte,
# a right-to-left override, Rich markup (a closing tag first: parsing it raises), a NUL.
PAYLOAD = "\x1b]0;PWNED\x07\x1b[2J\x9b31m\u202e[/][bold red]b[link=x]l\x00"
DEAD_AGO = 600_000


def hostile(marker: str, payload: str = PAYLOAD) -> str:
    return marker + payload


def _write(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")


def _utc(ms: int) -> str:
    return utc_from_ms(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def instance_record(instance_id: str, *, pid: int, beat_ago: int, text: str, **extra: object) -> dict[str, object]:
    return {
        "instanceId": instance_id,
        "pid": pid,
        "sessionId": text,
        "startedAt": _utc(NOW - 3_600_000),
        "lastHeartbeat": _utc(NOW - beat_ago),
        "cwd": text,
        "activeModels": [{"provider": text, "model": text, "since": _utc(NOW - 60_000)}],
        "pendingTaskCount": 2,
        **extra,
    }


def write_hostile_records(root: Path, payload: str = PAYLOAD) -> dict[str, str]:
    """Hostile records in every space of ``root``; returns ``{marker: where}`` of each piece of user text.

    File names hold the marker only (a ``/`` or NUL cannot be in one); the
    records' contents hold marker + payload.  One dead instance's file name
    is not valid UTF-8.
    """
    markers: dict[str, str] = {}

    def text(where: str) -> str:
        marker = f"MK{len(markers):02d}Q"
        markers[marker] = where
        return hostile(marker, payload)

    alive, dead = "sess-hostile01-pid7001-h-alive", "sess-hostile02-pid7002-h-dead"
    _write(root / "instances" / f"{alive}.lock", instance_record(
        alive, pid=7001, beat_ago=1_000, text=text("alive cwd"), **{"[/]": text("extra value"), text("extra key"): 1}
    ))
    _write(root / "instances" / f"{dead}.lock", instance_record(text("dead id"), pid=7002, beat_ago=DEAD_AGO, text=text("dead cwd")))
    undecodable = os.path.join(os.fsencode(root / "instances"), b"sess-\xff\xfe-pid7003-h-dead.lock")
    with open(undecodable, "w", encoding="utf-8") as out:
        json.dump(instance_record("sess-undecodable-pid7003-h-dead", pid=7003, beat_ago=DEAD_AGO, text=text("undecodable cwd")), out)
    _write(root / "queue-states" / f"{alive}.json", {
        "instanceId": alive,
        "timestamp": _utc(NOW - 1_000),
        "pendingTaskCount": 2,
        "activeOrchestrations": 1,
        "stealableEntries": [
            {"id": text("entry id"), "toolName": text("tool"), "priority": "normal", "instanceId": alive, "enqueuedAt": _utc(NOW - 5_000)}
        ],
    })
    resource = text("lock resource").replace("\x00", "")  # a lock's file is named after its resource
    _write(root / "locks" / f"{lock_key(resource)}.lock", {
        "lockId": text("lock id"), "acquiredAt": NOW - 1_000, "expiresAt": NOW + 60_000, "resource": resource
    })
    _write(root / "pi-dash" / "stealing-stats" / f"{alive}.json", {
        "formatVersion": 1, "instanceId": alive, "totalAttempts": 3, "successfulSteals": 1, "failedAttempts": 2,
        "lastAttemptAt": 1e17, "lastSuccessAt": 1e17, "avgLatencyMs": 1.0, "latencySamples": [1.0],
    })
    with open(root / "pi-dash" / "events" / "000001.jsonl", "a", encoding="utf-8") as log:
        for line in (
            {"at": NOW - 500, "kind": text("event kind"), "message": text("event message")},
            {"at": 1e17, "kind": "steal", "message": text("far-future event")},
            {"at": -1e17, "kind": text("far-past kind"), "message": "m"},
        ):
            log.write(json.dumps(line) + "\n")
    return markers
