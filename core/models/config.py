"""``coordinator.json``: the fleet-wide settings pi reads at start-up."""

from __future__ import annotations

from pydantic import Field

from ._base import Record

DEFAULT_TOTAL_MAX_LLM = 6
DEFAULT_HEARTBEAT_INTERVAL_MS = 15_000
DEFAULT_HEARTBEAT_TIMEOUT_MS = 60_000
MAX_TOTAL_MAX_LLM = 100_000
MAX_HEARTBEAT_MS = 86_400_000  # a day: longer waits overflow the timers


class CoordinatorConfig(Record):
    """Resolved coordinator settings; every value is a positive integer within its bound."""

    total_max_llm: int = Field(default=DEFAULT_TOTAL_MAX_LLM, gt=0, le=MAX_TOTAL_MAX_LLM)
    heartbeat_interval_ms: int = Field(default=DEFAULT_HEARTBEAT_INTERVAL_MS, gt=0, le=MAX_HEARTBEAT_MS)
    heartbeat_timeout_ms: int = Field(default=DEFAULT_HEARTBEAT_TIMEOUT_MS, gt=0, le=MAX_HEARTBEAT_MS)
