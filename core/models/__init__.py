"""pydantic records of everything ``core`` reads or writes (the bottom layer)."""

from ._base import (
    Count,
    CorruptRecord,
    DurationMs,
    EpochMs,
    JsNumber,
    JsTime,
    Pid,
    Record,
    from_epoch_ms,
    to_epoch_ms,
    to_js_iso,
)
from .config import CoordinatorConfig
from .control import ControlRequest
from .instance import ActiveModelInfo, InstanceInfo
from .lock import DistributedLock
from .parallelism import (
    Backoff429,
    ErrorType,
    FleetEvent,
    GcraBucket,
    InstanceParallelism,
    ModelParallelism,
    ProviderRateState,
    RecentError,
    SharedBackoff,
)
from .queue import BroadcastQueueState, EntryLike, Priority, StealableQueueEntry, as_entry
from .stealing import FORMAT_VERSION, StealClaim, StealingStats

__all__ = [
    "FORMAT_VERSION",
    "ActiveModelInfo",
    "Backoff429",
    "ErrorType",
    "FleetEvent",
    "GcraBucket",
    "InstanceParallelism",
    "ModelParallelism",
    "ProviderRateState",
    "RecentError",
    "SharedBackoff",
    "BroadcastQueueState",
    "ControlRequest",
    "CoordinatorConfig",
    "CorruptRecord",
    "Count",
    "DurationMs",
    "EpochMs",
    "Pid",
    "DistributedLock",
    "InstanceInfo",
    "JsNumber",
    "JsTime",
    "Priority",
    "Record",
    "StealClaim",
    "StealableQueueEntry",
    "EntryLike",
    "as_entry",
    "StealingStats",
    "from_epoch_ms",
    "to_epoch_ms",
    "to_js_iso",
]
