"""Each provider's limits as configured, as the fleet uses them, and its backoff: what
``pi-dash limits`` (pi's ``pi_model_limits``) and the dashboard show."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .provider_config import CrossInstanceSettings
from .snapshot import BackoffView, FleetSnapshot


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    provider: str
    requests_per_minute: float  # configured (or default)
    burst: int
    effective_requests_per_minute: float  # after adaptive control
    used_last_minute: int
    backlog_ms: float
    model_limits: tuple[tuple[str, float, int | None], ...]  # (pattern, requests/minute, burst)
    backoffs: tuple[BackoffView, ...]
    last429_at: int | None

    @property
    def backing_off(self) -> bool:
        return any(b.active for b in self.backoffs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "requestsPerMinute": _plain(self.requests_per_minute),
            "burst": self.burst,
            "effectiveRequestsPerMinute": _plain(self.effective_requests_per_minute),
            "usedLastMinute": self.used_last_minute,
            "backlogMs": self.backlog_ms,
            "models": [{"model": m, "requestsPerMinute": _plain(rpm), "burst": burst} for m, rpm, burst in self.model_limits],
            "backoffs": [
                {"model": b.model, "until": b.until, "remainingMs": b.remaining_ms, "recent429s": b.recent429s}
                for b in self.backoffs
            ],
            "last429At": self.last429_at,
        }


def whole_requests(per_minute: float) -> int:
    """A rate limit as the whole requests it lets through in a minute (an adaptive limit of
    40.5/min grants 40 in some minutes and 41 in others): rounded half up, one rule for
    every view of it (``pi-dash limits``, the dashboard's header)."""
    return int(math.floor(per_minute + 0.5)) if math.isfinite(per_minute) else 0


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)


def provider_limits(settings: CrossInstanceSettings, snapshot: FleetSnapshot, only: str | None = None) -> list[ProviderLimits]:
    """Every configured provider, plus any the fleet has used, with live figures where there are some."""
    states = {r.provider: r for r in snapshot.rate_limits}
    names = sorted(set(settings.providers) | set(states) | {b.provider for b in snapshot.backoffs})
    if only is not None:
        names = [n for n in names if n == only.lower()]
    rows = []
    for name in names:
        limit = settings.limit(name)
        state = states.get(name)
        rows.append(
            ProviderLimits(
                provider=name,
                requests_per_minute=limit.requests_per_minute,
                burst=limit.burst,
                effective_requests_per_minute=state.effective_requests_per_minute if state else limit.requests_per_minute,
                used_last_minute=state.used_last_minute if state else 0,
                backlog_ms=state.backlog_ms if state else 0.0,
                model_limits=tuple((m, ml.requests_per_minute, ml.burst) for m, ml in sorted(limit.models.items())),
                backoffs=tuple(sorted((b for b in snapshot.backoffs if b.provider == name), key=lambda b: b.model)),
                last429_at=state.last429_at if state else None,
            )
        )
    return rows
