"""Storage: the interface (``base``), its backends, and typed record access."""

from .base import (
    ALL_SPACES,
    CLAIMS,
    INSTANCES,
    LOCKS,
    QUEUES,
    STEALING_STATS,
    Blob,
    EntryUnreadable,
    InvalidKey,
    Space,
    Store,
    StoreError,
    StoreUnavailable,
    Version,
)
from .directory import DirectoryStore, default_root
from .records import Loaded, RecordCache, parse_blob, read_record

__all__ = [
    "ALL_SPACES",
    "CLAIMS",
    "INSTANCES",
    "LOCKS",
    "QUEUES",
    "STEALING_STATS",
    "Blob",
    "DirectoryStore",
    "EntryUnreadable",
    "InvalidKey",
    "Loaded",
    "RecordCache",
    "Space",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Version",
    "default_root",
    "parse_blob",
    "read_record",
]
