"""Control requests from the dashboard to one instance (``pi-dash/control/{instanceId}.json``).

pi's own instances never read this folder, which is how a request they do not
understand is noticed: it stays unacknowledged.
"""

from __future__ import annotations

from typing import Literal

from ._base import Count, EpochMs, Record
from .stealing import FORMAT_VERSION


class ControlRequest(Record):
    VERSIONED = True

    format_version: Count = FORMAT_VERSION
    instance_id: str
    action: Literal["drain"]
    requested_at: EpochMs
    requested_by: str
    acknowledged_at: EpochMs | None = None  # the instance saw it and is draining
    completed_at: EpochMs | None = None  # the instance finished its work and went offline
