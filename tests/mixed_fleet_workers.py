"""Instances of a mixed fleet, as real processes: pi's own (a test double) and ``core``'s.

``python -m tests.mixed_fleet_workers KIND ROOT LOG SECONDS NAME BURST``

* ``pi``: a stand-in for pi's TypeScript coordinator, written from FORMAT.md
  alone (nothing from ``core``): it registers and heartbeats in pi's format,
  broadcasts its queue with its next entries as ``stealableEntries``, runs every
  entry it queued itself whether or not someone stole it (pi's owner never
  looks), and when idle steals as pi's ``safeStealWork`` does: the busiest
  other instance by its file, ``steal:{id}`` taken with an exclusive create and
  released at once around ``stealWork`` (the most urgent first entry of the
  fresh queues with more than two pending), then runs what it picked.  Nothing
  is claimed.
* ``core``: a :class:`~core.coordinator.Coordinator`: it runs its own entries
  only after ``claim_own`` and steals with ``safe_steal_work``.

Every instance queues ``BURST`` entries every ``BURST_EVERY`` seconds for
``SECONDS``, runs them (``RUN_S`` each), then works its queue off and leaves.
``LOG`` gets one JSON line per entry queued (``"queued"``) and per run
(``"ran"``), appended whole (``O_APPEND``, lines far below ``PIPE_BUF``).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BURST_EVERY = 2.5
RUN_S = 0.12
OFFERED = 4  # entries a queue lists for thieves
DRAIN_S = 20.0  # at most this long to work the queue off after SECONDS


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


class Log:
    def __init__(self, path: str, me: str, kind: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.me, self.kind = me, kind

    def write(self, event: str, owner: str, entry_id: str, how: str = "") -> None:
        line = {"event": event, "owner": owner, "entry": entry_id, "by": self.me, "kind": self.kind, "how": how}
        os.write(self.fd, (json.dumps(line) + "\n").encode())


def entry_doc(owner: str, entry_id: str, priority: str, enqueued: int) -> dict[str, object]:
    return {"id": entry_id, "toolName": "subagent_run", "priority": priority, "instanceId": owner, "enqueuedAt": iso(enqueued)}


# ------------------------------------------------------------------ pi's double
class PiDouble:
    """pi's coordinator, as FORMAT.md describes it."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        session = secrets.token_hex(8)
        started = now_ms()
        base36 = ""
        n = started
        while n:
            n, r = divmod(n, 36)
            base36 = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + base36
        self.id = f"sess-{session[:8]}-pid{os.getpid()}-{base36}-{secrets.token_hex(2)}"
        self.info = {
            "instanceId": self.id,
            "pid": os.getpid(),
            "sessionId": session,
            "startedAt": iso(started),
            "lastHeartbeat": iso(started),
            "cwd": f"/work/{name}",
            "activeModels": [],
            "pendingTaskCount": 0,
        }
        for sub in ("instances", "queue-states", "locks"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def _write(self, path: Path, doc: object) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, path)

    def publish(self, queue: list[dict[str, object]]) -> None:
        self.info["lastHeartbeat"] = iso(now_ms())
        self.info["pendingTaskCount"] = len(queue)
        self._write(self.root / "instances" / f"{self.id}.lock", self.info)
        state = {
            "instanceId": self.id,
            "timestamp": iso(now_ms()),
            "pendingTaskCount": len(queue),
            "activeOrchestrations": 1 if queue else 0,
            "stealableEntries": queue[:OFFERED],
        }
        self._write(self.root / "queue-states" / f"{self.id}.json", state)

    def _read_all(self, sub: str, suffix: str) -> list[dict[str, object]]:
        docs = []
        for name in sorted(os.listdir(self.root / sub)):
            if not name.endswith(suffix) or name.startswith("."):
                continue
            try:
                docs.append(json.loads((self.root / sub / name).read_bytes()))
            except (OSError, ValueError):
                continue
        return docs

    def safe_steal_work(self) -> dict[str, object] | None:
        now = now_ms()
        alive = [d for d in self._read_all("instances", ".lock") if now - iso_ms(str(d["lastHeartbeat"])) < 60_000]
        busy = [d for d in alive if d["instanceId"] != self.id and (d.get("pendingTaskCount") or 0) > 2]
        if not busy:
            return None
        candidate = sorted(busy, key=lambda d: -(d.get("pendingTaskCount") or 0))[0]
        resource = f"steal:{candidate['instanceId']}"
        lock_path = self.root / "locks" / (resource.replace(":", "_").replace("/", "_") + ".lock")
        lock_id = f"{self.id}-{now}"
        try:
            fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, json.dumps({"lockId": lock_id, "acquiredAt": now, "expiresAt": now + 30_000, "resource": resource}, indent=2).encode())
            os.close(fd)
            remote = [
                s
                for s in self._read_all("queue-states", ".json")
                if s.get("instanceId") != self.id and now - iso_ms(str(s["timestamp"])) <= 30_000
            ]
            offers = [s["stealableEntries"][0] for s in remote if s["pendingTaskCount"] > 2 and s["stealableEntries"]]
            order = ["critical", "high", "normal", "low", "background"]
            offers.sort(key=lambda e: order.index(e["priority"]) if e["priority"] in order else -1)
            return offers[0] if offers else None
        finally:
            try:
                if json.loads(lock_path.read_bytes())["lockId"] == lock_id:
                    lock_path.unlink()
            except (OSError, ValueError):
                pass

    def leave(self) -> None:
        for path in (self.root / "instances" / f"{self.id}.lock", self.root / "queue-states" / f"{self.id}.json"):
            path.unlink(missing_ok=True)


class Schedule:
    """One worker's time line, the same for pi's and core's: a burst every ``BURST_EVERY``
    seconds for ``seconds``, then its queue worked off (for at most ``DRAIN_S``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        self.next_burst = self.start

    def producing(self) -> bool:
        return time.monotonic() - self.start < self.seconds

    def over(self, queue_empty: bool) -> bool:
        elapsed = time.monotonic() - self.start
        return elapsed >= self.seconds and (queue_empty or elapsed > self.seconds + DRAIN_S)

    def burst_due(self) -> bool:
        if not self.producing() or time.monotonic() < self.next_burst:
            return False
        self.next_burst += BURST_EVERY
        return True


def run_pi(root: Path, log_path: str, seconds: float, name: str, burst: int) -> None:
    pi = PiDouble(root, name)
    log = Log(log_path, pi.id, "pi")
    rng = random.Random(name)
    queue: list[dict[str, object]] = []
    made = 0
    schedule = Schedule(seconds)
    pi.publish(queue)
    while not schedule.over(queue_empty=not queue):
        producing = schedule.producing()
        if schedule.burst_due():
            for _ in range(burst):
                entry = entry_doc(pi.id, f"{name}-{made}", rng.choice(["high", "normal", "low"]), now_ms())
                made += 1
                queue.append(entry)
                log.write("queued", pi.id, str(entry["id"]))
        pi.publish(queue)
        if queue:
            entry = queue.pop(0)  # pi's owner runs its own entries, stolen or not
            time.sleep(RUN_S)
            log.write("ran", pi.id, str(entry["id"]), "own")
            continue
        stolen = pi.safe_steal_work() if producing else None
        if stolen is not None:
            time.sleep(RUN_S)
            log.write("ran", str(stolen["instanceId"]), str(stolen["id"]), "stolen")
        else:
            time.sleep(0.05)
    pi.leave()


# -------------------------------------------------------------------- core's
def run_core(root: Path, log_path: str, seconds: float, name: str, burst: int) -> None:
    from core.clock import utc_from_ms
    from core.coordinator import Coordinator
    from core.models import StealableQueueEntry

    coordinator = Coordinator(root=root)
    me = coordinator.register(cwd=f"/work/{name}").instance_id
    log = Log(log_path, me, "core")
    rng = random.Random(name)
    queue: list[StealableQueueEntry] = []
    made = 0
    schedule = Schedule(seconds)
    try:
        while not schedule.over(queue_empty=not queue):
            producing = schedule.producing()
            if schedule.burst_due():
                for _ in range(burst):
                    entry = StealableQueueEntry(
                        id=f"{name}-{made}",
                        tool_name="subagent_run",
                        priority=rng.choice(["high", "normal", "low"]),
                        instance_id=me,
                        enqueued_at=utc_from_ms(now_ms()),
                    )
                    made += 1
                    queue.append(entry)
                    log.write("queued", me, entry.id)
            claimed = coordinator.claimed_entries()
            queue = [e for e in queue if e.id not in claimed]  # stolen ones are no longer ours to offer
            coordinator.update_workload(len(queue))
            coordinator.broadcast_queue_state(len(queue), 1 if queue else 0, queue[:OFFERED])
            if queue:
                entry = queue.pop(0)
                if coordinator.claim_own(entry):
                    time.sleep(RUN_S)
                    log.write("ran", me, entry.id, "own")
                continue
            stolen = coordinator.safe_steal_work() if producing else None
            if stolen is not None:
                time.sleep(RUN_S)
                log.write("ran", stolen.owner_instance_id, stolen.entry.id, "stolen")
            else:
                time.sleep(0.05)
    finally:
        coordinator.unregister()


if __name__ == "__main__":
    kind, root, log_file, secs, who, size = sys.argv[1:7]
    runner = run_pi if kind == "pi" else run_core
    runner(Path(root), log_file, float(secs), who, int(size))
