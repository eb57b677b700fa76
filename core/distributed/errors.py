"""The errors of the distributed execution API (seed 003), and how store failures become them.

Seed 003 has one error class per component (``LockError`` with a code,
``WorkerError`` with the worker, ``SyncError`` with the namespace) so a caller
can react to the component that failed without parsing messages.  A failure
of the store underneath (directory unreadable, Redis down) is reported as one
of these, with the store's own explanation in the message and the original
exception chained as ``__cause__``: callers of this package never need to
know which backend they run on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum

from ..store import InvalidKey, Store, StoreError, StoreUnavailable


class LockErrorCode(StrEnum):
    """Why a lock operation failed (a ``str``: ``error.code == "LOCK_EXPIRED"`` works)."""

    LOCK_EXPIRED = "LOCK_EXPIRED"  # the caller's lock ran out before it released or renewed it
    INVALID_OWNER = "INVALID_OWNER"  # another worker holds the lock
    NOT_FOUND = "NOT_FOUND"  # there is no lock for the task
    LOCK_CORRUPT = "LOCK_CORRUPT"  # the lock entry exists but cannot be read or parsed
    LOCK_CONTENDED = "LOCK_CONTENDED"  # the entry kept changing under us; nothing was done
    INVALID_KEY = "INVALID_KEY"  # the task id cannot name an entry in this store
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"  # the store as a whole cannot be used
    STORE_ERROR = "STORE_ERROR"  # one store operation failed (permissions, disk full...)


class DistributedError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class LockError(DistributedError):
    """A lock operation failed; ``code`` (a :class:`LockErrorCode`) says why."""

    def __init__(self, message: str, code: str, task_id: str | None = None) -> None:
        super().__init__(message)
        self.code = LockErrorCode(code)
        self.task_id = task_id

    def __reduce__(self):  # picklable across processes despite the extra arguments
        return (LockError, (self.message, str(self.code), self.task_id))


class NotFoundError(LockError):
    """There is no lock to release or renew (seed 003's ``NotFoundError``; code ``NOT_FOUND``)."""

    def __init__(self, message: str, task_id: str | None = None) -> None:
        super().__init__(message, LockErrorCode.NOT_FOUND, task_id)

    def __reduce__(self):
        return (NotFoundError, (self.message, self.task_id))


class WorkerError(DistributedError):
    """A registry operation failed for ``worker_id`` (``None`` when it concerns no one worker)."""

    def __init__(self, message: str, worker_id: str | None) -> None:
        super().__init__(message)
        self.worker_id = worker_id

    def __reduce__(self):
        return (type(self), (self.message, self.worker_id))


class SyncError(DistributedError):
    """A shared-memory operation failed in ``namespace``."""

    def __init__(self, message: str, namespace: str | None) -> None:
        super().__init__(message)
        self.namespace = namespace

    def __reduce__(self):
        return (SyncError, (self.message, self.namespace))


def lock_code_for(exc: StoreError) -> LockErrorCode:
    if isinstance(exc, InvalidKey):
        return LockErrorCode.INVALID_KEY
    if isinstance(exc, StoreUnavailable):
        return LockErrorCode.STORE_UNAVAILABLE
    return LockErrorCode.STORE_ERROR


@contextmanager
def translated(store: Store, make: Callable[[str, StoreError], DistributedError]) -> Iterator[None]:
    """Re-raise any :class:`StoreError` inside as ``make(message, exc)``, chained."""
    try:
        yield
    except StoreError as exc:
        kind = "unavailable" if isinstance(exc, StoreUnavailable) else "failed"
        raise make(f"store {kind} ({store.describe()}): {exc}", exc) from exc
