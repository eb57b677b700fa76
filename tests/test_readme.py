"""The README as a new user meets it: every Python block runs as written, and it links only
to files in the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.events import EventLog
from core.store import DirectoryStore

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)
AGENT_CALLS = (
    "register(",
    "set_active_model(",
    "llm_slot(",
    "report_429(",
    "StealableQueueEntry(",
    "broadcast_queue_state(",
    "claim_own(",
    "safe_steal_work(",
    "draining",
    "finish_drain(",
    "unregister(",
)


def _run(block: str, tmp_path: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One block as a script of its own, in a fresh interpreter, on a temporary runtime directory."""
    script = tmp_path / "block.py"
    script.write_text(block, encoding="utf-8")
    env = {**os.environ, "PI_RUNTIME_DIR": str(tmp_path / "runtime"), "PYTHONPATH": str(REPO), **extra_env}
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_readme_has_a_complete_agent():
    assert len(BLOCKS) >= 3
    assert any(all(call in block for call in AGENT_CALLS) for block in BLOCKS), "no block is a complete agent"


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(BLOCKS)), ids=[f"block{n + 1}" for n in range(len(BLOCKS))])
def test_every_python_block_runs_as_written(number, tmp_path, request):
    block = BLOCKS[number]
    extra = {}
    if "RedisStore" in block:
        extra["PI_DASH_REDIS"] = request.getfixturevalue("redis_server").url
    result = _run(block, tmp_path, extra)
    assert result.returncode == 0, f"block {number + 1} failed:\n{block}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    if all(call in block for call in AGENT_CALLS):
        # The agent did what it says: three answers, one 429 shared with the fleet, a drain honoured.
        assert result.stdout.strip() == "['done task-0', 'done task-1', 'done task-2']"
        kinds = [(e.kind, e.message) for e in EventLog(DirectoryStore(tmp_path / "runtime")).read(0, 1000)[0]]
        assert sum(kind == "429" for kind, _ in kinds) == 1
        assert any(kind == "drain" and "drained and went offline" in message for kind, message in kinds)
        assert not list((tmp_path / "runtime" / "instances").iterdir())  # unregistered
    if "llm_slot_async" in block:
        latency = float(result.stdout.split()[-1])
        assert latency >= 50  # what llm_slot measured, published by the heartbeat


def test_the_readme_links_only_inside_the_repository():
    targets = re.findall(r"\]\(([^)]+)\)", README)
    assert targets
    for target in targets:
        assert "://" not in target and not target.startswith(("/", "..")), target
        assert (REPO / target.split("#")[0]).exists(), f"README links to a missing file: {target}"
    assert "seed 0" not in README and "FORMAT.md" not in README
