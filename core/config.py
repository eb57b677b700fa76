"""Coordinator settings: built-in defaults < ``coordinator.json`` < environment < explicit overrides.

pi reads the same file and variables; a value that is not a positive integer
within its bound (``totalMaxLlm`` up to 100,000, times up to a day) is ignored
(the lower layer's value stays in force) and reported with where it came from,
so a typo never crashes an instance or silently changes a limit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from .models import CoordinatorConfig
from .models.config import MAX_HEARTBEAT_MS, MAX_TOTAL_MAX_LLM
from .store import Store, StoreError

ENV_VARS = {
    "total_max_llm": "PI_TOTAL_MAX_LLM",
    "heartbeat_interval_ms": "PI_HEARTBEAT_INTERVAL_MS",
    "heartbeat_timeout_ms": "PI_HEARTBEAT_TIMEOUT_MS",
}
ENV_WORK_STEALING = "PI_ENABLE_WORK_STEALING"
CONFIG_FILE = "coordinator.json"
FILE_KEYS = {"totalMaxLlm": "total_max_llm", "heartbeatIntervalMs": "heartbeat_interval_ms", "heartbeatTimeoutMs": "heartbeat_timeout_ms"}
UPPER_BOUNDS = {"total_max_llm": MAX_TOTAL_MAX_LLM, "heartbeat_interval_ms": MAX_HEARTBEAT_MS, "heartbeat_timeout_ms": MAX_HEARTBEAT_MS}


class ConfigProblem(NamedTuple):
    """A setting ignored: where it came from ("coordinator.json", "environment", ...) and why."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _positive_int(value: Any, field: str) -> int | None:
    """``value`` as a setting of ``field``, or ``None`` when it is not a positive integer within bounds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 < value <= UPPER_BOUNDS[field]:
        return value
    return None


def env_overrides(env: Mapping[str, str] | None = None) -> tuple[dict[str, int], list[ConfigProblem]]:
    """Settings from ``PI_TOTAL_MAX_LLM`` and friends, and a note for each value ignored."""
    env = os.environ if env is None else env
    values: dict[str, int] = {}
    problems: list[ConfigProblem] = []
    for field, var in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        text = raw.strip()
        value = _positive_int(int(text), field) if text.isascii() and text.isdigit() and len(text) < 20 else None
        if value is not None:
            values[field] = value
        else:
            problems.append(
                ConfigProblem("environment", f"{var}={raw!r}: not a positive integer up to {UPPER_BOUNDS[field]}; ignored")
            )
    return values, problems


def file_settings(store: Store) -> tuple[dict[str, int], list[ConfigProblem]]:
    """Settings from ``coordinator.json``, and a note for each key or value ignored."""
    where = CONFIG_FILE
    try:
        raw = store.read_config()
    except StoreError as exc:
        return {}, [ConfigProblem(where, f"{exc}; defaults used")]
    if raw is None:
        return {}, []
    if raw.startswith(b"\xef\xbb\xbf"):
        # pi's JSON.parse refuses a byte order mark and falls back to defaults: so do we.
        return {}, [ConfigProblem(where, "starts with a byte order mark, which pi cannot parse; defaults used")]
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return {}, [ConfigProblem(where, f"malformed JSON ({exc}); defaults used")]
    if not isinstance(document, dict):
        return {}, [ConfigProblem(where, "expected a JSON object; defaults used")]
    values: dict[str, int] = {}
    problems: list[ConfigProblem] = []
    for key, field in FILE_KEYS.items():
        if key in document:
            value = _positive_int(document[key], field)
            if value is None:
                shown = repr(document[key])
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                problems.append(
                    ConfigProblem(where, f"key {key!r}: {shown} is not a positive integer up to {UPPER_BOUNDS[field]}; ignored")
                )
            else:
                values[field] = value
    return values, problems


def load_config(
    store: Store,
    overrides: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[CoordinatorConfig, list[ConfigProblem]]:
    """The effective config and every problem met while resolving it."""
    from_file, problems = file_settings(store)
    from_env, env_problems = env_overrides(env)
    merged: dict[str, int] = {**from_file, **from_env}
    for field, value in (overrides or {}).items():
        if field not in ENV_VARS:
            raise ValueError(f"unknown coordinator setting {field!r}")
        checked = _positive_int(value, field)
        if checked is None:
            raise ValueError(f"{field} must be a positive integer up to {UPPER_BOUNDS[field]}, not {value!r}")
        merged[field] = checked
    config = CoordinatorConfig(**merged)
    if config.heartbeat_timeout_ms <= config.heartbeat_interval_ms:
        problems.append(
            ConfigProblem(
                "settings",
                f"heartbeat timeout {config.heartbeat_timeout_ms} ms is not longer than the interval "
                f"{config.heartbeat_interval_ms} ms: live instances will look dead",
            )
        )
    return config, problems + env_problems


def work_stealing_enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(ENV_WORK_STEALING, "").strip().lower() != "false"
