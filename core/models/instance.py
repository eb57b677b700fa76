"""Records of ``instances/{instanceId}.lock``: one per running pi instance."""

from __future__ import annotations

from functools import cached_property

from pydantic import Field, field_validator

from ._base import Count, DurationMs, EpochMs, JsTime, Pid, Record, to_epoch_ms


class ActiveModelInfo(Record):
    """A model an instance is currently using (pi stores provider and model lower-cased)."""

    provider: str
    model: str
    since: JsTime


class InstanceInfo(Record):
    """One instance's registration and heartbeat, as pi's coordinator writes it.

    ``hostname``, ``process_started_at``, ``instance_name`` and
    ``honours_claims`` are written only by ``core`` instances (pi ignores
    unknown keys): the first two let a reader on the same host tell a dead or
    reused pid from a live one; the last says this instance claims every entry
    before running it, so thieves may take its entries exactly once.
    """

    instance_id: str = Field(min_length=1)
    pid: Pid
    session_id: str
    started_at: JsTime
    last_heartbeat: JsTime
    cwd: str
    active_models: tuple[ActiveModelInfo, ...] = ()
    pending_task_count: Count | None = None
    avg_latency_ms: DurationMs | None = None
    last_task_completed_at: JsTime | None = None
    hostname: str | None = None
    process_started_at: EpochMs | None = None
    instance_name: str | None = None  # PI_INSTANCE_ID: the name config.json's ``instances`` refers to
    draining_since: EpochMs | None = None  # epoch ms: finishing current work, taking and stealing none
    # ``core`` instances claim every entry before running it; pi's own do not.
    honours_claims: bool | None = None

    @field_validator("honours_claims", mode="before")
    @classmethod
    def _only_true_honours(cls, value: object) -> bool | None:
        # pi counts an instance whatever this key holds: an odd value must not
        # make the whole file unreadable, it only means "does not honour claims".
        return True if value is True else None

    @cached_property
    def heartbeat_ms(self) -> int:
        """``last_heartbeat`` in epoch milliseconds (computed once: snapshots ask often)."""
        return to_epoch_ms(self.last_heartbeat)

    @cached_property
    def model_keys(self) -> frozenset[tuple[str, str]]:
        """Distinct lower-cased ``(provider, model)`` pairs in use."""
        return frozenset((m.provider.lower(), m.model.lower()) for m in self.active_models)

    @cached_property
    def model_pairs(self) -> tuple[tuple[str, str], ...]:
        """``(provider, model)`` of each model in use, as stored (pi compares them as stored)."""
        return tuple((m.provider, m.model) for m in self.active_models)

    @cached_property
    def started_ms(self) -> int:
        return to_epoch_ms(self.started_at)

    @property
    def pending(self) -> int:
        return self.pending_task_count or 0
