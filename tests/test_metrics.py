"""``pi-dash metrics``: a real HTTP server on a loopback port, parsed by prometheus_client's parser."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.coordinator import Coordinator
from core.locks import LockService
from core.models import InstanceInfo
from core.provider_config import parse_settings
from core.stealing import steal_resource
from core.store import INSTANCES
from core.store.redis_store import RedisStore
from pi_dashboard.metrics import parse_listen

SETTINGS = parse_settings({"crossInstance": {"providers": {"openai": {"requestsPerMinute": 600, "burst": 50}}}}, "test")
HOSTILE = 'sess-"quoted"\\back\nline-pid1'


def _samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def exporter(root):
    """Start ``pi-dash metrics`` on a free loopback port; yields (process, url)."""
    started = []

    def start(*where: str) -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "pi_dashboard", "metrics", "--listen", "127.0.0.1:0", *(where or ("--root", str(root)))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        line = process.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), (line, process.stderr.read() if process.poll() is not None else "")
        return process, line.split()[1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return response.read().decode()


def test_a_scrape_describes_the_fleet(root, exporter):
    a = Coordinator(root=root, settings=SETTINGS)
    b = Coordinator(root=root, settings=SETTINGS)
    for c in (a, b):
        c.register(heartbeat=False)
        c.update_workload(3)
    with a.llm_slot("openai", "gpt-4o") as slot:
        slot.report_429(retry_after=40)
    assert LockService(a.store, a.instance_id).try_acquire(steal_resource(b.instance_id), ttl_ms=30_000)
    pi_like = InstanceInfo.from_json((root / "instances" / f"{b.instance_id}.lock").read_bytes())
    pi_like = pi_like.model_copy(update={"instance_id": HOSTILE, "pid": os.getpid()})
    a.store.write(INSTANCES, HOSTILE, pi_like.to_json())
    (root / "instances" / "torn.lock").write_text("{")

    process, url = exporter()
    samples = _samples(_scrape(url))
    assert samples[("pi_dash_store_up", ())] == 1
    assert samples[("pi_dash_instances", (("status", "alive"),))] == 3
    assert samples[("pi_dash_instances", (("status", "corrupt"),))] == 1
    assert samples[("pi_dash_instance_pending_tasks", (("instance", a.instance_id),))] == 3
    assert samples[("pi_dash_instance_status", (("instance", HOSTILE.replace("\n", "\\x0a")), ("status", "alive")))] == 1
    assert samples[("pi_dash_instance_dynamic_limit", (("instance", a.instance_id),))] >= 1
    model = (("instance", a.instance_id), ("model", "gpt-4o"), ("provider", "openai"))
    assert samples[("pi_dash_model_parallelism_current", model)] == 2  # 4 x 0.7 after the 429
    assert samples[("pi_dash_model_in_flight", model)] == 0
    assert 30 < samples[("pi_dash_backoff_remaining_seconds", (("model", "gpt-4o"), ("provider", "openai")))] <= 40
    assert samples[("pi_dash_recent_429s", (("model", "gpt-4o"), ("provider", "openai")))] == 1
    assert samples[("pi_dash_model_429s_total", model)] == 1
    assert samples[("pi_dash_rate_limit_used", (("provider", "openai"),))] == 1
    assert samples[("pi_dash_rate_limit_effective", (("provider", "openai"),))] == 540  # 600 x 0.9
    assert samples[("pi_dash_lock_ttl_left_seconds", (("instance", b.instance_id), ("kind", "steal")))] > 20
    assert samples[("pi_dash_locks", (("state", "held"),))] == 1
    assert samples[("pi_dash_problems", (("kind", "corrupt"),))] == 1
    assert samples[("pi_dash_instances_waiting", (("kind", "backoff"),))] == 1  # b has no parallelism record yet
    assert samples[("pi_dash_instances_without_wait_records", ())] == 2
    assert samples[("pi_dash_steal_attempts_total", ())] == 0

    # Label names are a closed set: nothing free-form (a lock's resource, a cwd) becomes one.
    families = list(text_string_to_metric_families(_scrape(url)))
    assert {name for f in families for s in f.samples for name in s.labels} <= {"instance", "provider", "model", "status", "kind", "state"}

    # The next scrape sees changes; an unreadable fleet is store_up 0, not a traceback.
    b.update_workload(9)
    assert _samples(_scrape(url))[("pi_dash_instance_pending_tasks", (("instance", b.instance_id),))] == 9
    shutil.rmtree(root)
    assert _samples(_scrape(url)) == {("pi_dash_store_up", ()): 0}

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "Traceback" not in process.stderr.read()


def test_bad_listen_addresses_and_a_missing_fleet_are_clear_errors(tmp_path):
    assert parse_listen("[::1]:9464") == ("::1", 9464) and parse_listen(":0") == ("127.0.0.1", 0)
    for args in (["--listen", "nowhere", "--root", str(tmp_path)], ["--listen", "127.0.0.1:0", "--root", str(tmp_path / "none")]):
        result = subprocess.run([sys.executable, "-m", "pi_dashboard", "metrics", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.startswith("pi-dash: ")


def test_a_scrape_of_a_redis_fleet(redis_server, exporter):
    """The same families from a fleet on Redis (the store's own feed and scripts, not files)."""
    url = f"{redis_server.url}?prefix=metrics{os.getpid()}"
    a = Coordinator(RedisStore(url), settings=SETTINGS)
    a.register(heartbeat=False)
    a.update_workload(4)
    with a.llm_slot("openai", "gpt-4o") as slot:
        slot.report_429(retry_after=40)
    try:
        process, scrape_url = exporter("--redis", url)
        samples = _samples(_scrape(scrape_url))
        model = (("instance", a.instance_id), ("model", "gpt-4o"), ("provider", "openai"))
        assert samples[("pi_dash_store_up", ())] == 1
        assert samples[("pi_dash_instances", (("status", "alive"),))] == 1
        assert samples[("pi_dash_instance_pending_tasks", (("instance", a.instance_id),))] == 4
        assert samples[("pi_dash_model_429s_total", model)] == 1
        assert 30 < samples[("pi_dash_backoff_remaining_seconds", (("model", "gpt-4o"), ("provider", "openai")))] <= 40
        assert samples[("pi_dash_rate_limit_used", (("provider", "openai"),))] == 1
        a.update_workload(7)
        assert _samples(_scrape(scrape_url))[("pi_dash_instance_pending_tasks", (("instance", a.instance_id),))] == 7
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        a.unregister()
