"""Provider limits and the rest of ``.pi/config.json``'s ``crossInstance`` section (seed 001).

Defaults (requests per minute / burst): openai 500/100, anthropic 50/25,
deepseek 1000/200, gemini 60/15.  ``crossInstance.providers`` overrides them,
with model-level entries under ``models``; ``adaptiveRateControl`` tunes the
controller; ``instances`` gives named instances a ``priority`` and a
``reservedCapacity`` (requests per minute kept for that instance alone).

Every section is validated on its own: a bad entry is reported with the file,
the key and the reason, and the defaults stay in force for it; nothing here
ever raises on bad input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from .models._base import MAX_BURST, MAX_DURATION_MS, MAX_RATE, MIN_RATE
from .store import EntryUnreadable
from .store.directory import read_regular_file

DEFAULT_PROVIDER_LIMITS: dict[str, tuple[int, int]] = {
    "openai": (500, 100),
    "anthropic": (50, 25),
    "deepseek": (1000, 200),
    "gemini": (60, 15),
}
FALLBACK_LIMIT = (60, 10)  # for a provider nobody configured
ENV_CONFIG = "PI_CONFIG"
ENV_INSTANCE_NAME = "PI_INSTANCE_ID"
MAX_PROVIDER_NAME = 100
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few hundred bytes; /dev/zero is not one

# Strict: JSON's true is not the number 1, and "500" is not 500.  Bounded both ways:
# 1e-300 requests a minute would overflow every wait computed from it.
Rate = Annotated[float, Strict(), Field(ge=MIN_RATE, le=MAX_RATE)]
Burst = Annotated[int, Strict(), Field(gt=0, le=MAX_BURST)]


class _Config(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True, allow_inf_nan=False
    )


class ModelLimit(_Config):
    requests_per_minute: Rate
    burst: Burst | None = None


class ProviderLimit(_Config):
    requests_per_minute: Rate
    burst: Burst
    models: dict[str, ModelLimit] = Field(default_factory=dict)


class AdaptiveRateControl(_Config):
    enabled: Annotated[bool, Strict()] = True
    reduction_factor: Annotated[float, Strict(), Field(ge=0.01, lt=1)] = 0.9
    recovery_factor: Annotated[float, Strict(), Field(gt=1, le=10)] = 1.05
    min_requests_per_minute: Rate | None = None
    max_requests_per_minute: Rate | None = None
    quiet_period_ms: Annotated[int, Strict(), Field(gt=0, le=min(86_400_000, MAX_DURATION_MS))] = 60_000

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveRateControl:
        low, high = self.min_requests_per_minute, self.max_requests_per_minute
        if low is not None and high is not None and low > high:
            raise ValueError("minRequestsPerMinute is larger than maxRequestsPerMinute")
        return self


class InstancePolicy(_Config):
    priority: Annotated[int, Strict(), Field(ge=0, le=10)] = 5
    reserved_capacity: Annotated[float, Strict(), Field(ge=0, le=MAX_RATE)] = 0


@dataclass(frozen=True)
class CrossInstanceSettings:
    """The resolved ``crossInstance`` settings and every problem met on the way."""

    providers: Mapping[str, ProviderLimit]
    adaptive: AdaptiveRateControl
    instances: Mapping[str, InstancePolicy]
    source: str | None = None
    problems: tuple[str, ...] = field(default_factory=tuple)

    def limit(self, provider: str) -> ProviderLimit:
        provider = provider.lower()
        found = self.providers.get(provider)
        if found is not None:
            return found
        rpm, burst = FALLBACK_LIMIT
        return ProviderLimit(requests_per_minute=rpm, burst=burst)

    def policy(self, instance_name: str | None) -> InstancePolicy:
        return self.instances.get(instance_name or "", InstancePolicy())


def default_settings() -> CrossInstanceSettings:
    providers = {
        name: ProviderLimit(requests_per_minute=rpm, burst=burst) for name, (rpm, burst) in DEFAULT_PROVIDER_LIMITS.items()
    }
    return CrossInstanceSettings(providers, AdaptiveRateControl(), {})


def config_path(cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """``$PI_CONFIG``, else ``{cwd}/.pi/config.json``, else ``~/.pi/config.json``, if it exists."""
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    for candidate in (Path(cwd or os.getcwd()) / ".pi" / "config.json", Path.home() / ".pi" / "config.json"):
        if candidate.is_file():
            return candidate
    return None


def _explain(error: ValidationError, key: str) -> str:
    """``key.sub.path: reason`` for each error, with the full dotted key path."""
    parts = []
    for item in error.errors():
        where = ".".join([key, *(str(p) for p in item.get("loc", ()))])
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_settings(document: Any, source: str) -> CrossInstanceSettings:
    """Settings from a parsed ``config.json``; bad parts reported and replaced by defaults."""
    base = default_settings()
    problems: list[str] = []
    if not isinstance(document, dict):
        return CrossInstanceSettings(base.providers, base.adaptive, {}, source, (f"{source}: expected a JSON object; defaults used",))
    section = document.get("crossInstance", {})
    if not isinstance(section, dict):
        problems.append(f"{source}: crossInstance: expected an object; defaults used")
        section = {}

    providers = dict(base.providers)
    raw_providers = section.get("providers", {})
    if not isinstance(raw_providers, dict):
        problems.append(f"{source}: crossInstance.providers: expected an object; defaults used")
        raw_providers = {}
    seen: set[str] = set()
    for name, raw in raw_providers.items():
        key = f"crossInstance.providers.{name}"
        lowered = str(name).lower()
        if not lowered.strip() or len(lowered) > MAX_PROVIDER_NAME or "/" in lowered:
            problems.append(f"{source}: {key}: not a usable provider name; ignored")
            continue
        if lowered in seen:
            problems.append(f"{source}: {key}: same provider as another entry (names ignore case); this one wins")
        seen.add(lowered)
        if lowered not in DEFAULT_PROVIDER_LIMITS:
            problems.append(f"{source}: {key}: unknown provider (known: {', '.join(DEFAULT_PROVIDER_LIMITS)}); used as given")
        default_rpm, default_burst = DEFAULT_PROVIDER_LIMITS.get(lowered, FALLBACK_LIMIT)
        merged = {"requestsPerMinute": default_rpm, "burst": default_burst, **raw} if isinstance(raw, dict) else raw
        try:
            providers[lowered] = ProviderLimit.model_validate(merged)
        except ValidationError as exc:
            problems.append(f"{source}: {_explain(exc, key)}; default kept")

    adaptive = base.adaptive
    if "adaptiveRateControl" in section:
        try:
            adaptive = AdaptiveRateControl.model_validate(section["adaptiveRateControl"])
        except ValidationError as exc:
            problems.append(f"{source}: {_explain(exc, 'crossInstance.adaptiveRateControl')}; defaults kept")

    instances: dict[str, InstancePolicy] = {}
    raw_instances = section.get("instances", {})
    if not isinstance(raw_instances, dict):
        problems.append(f"{source}: crossInstance.instances: expected an object; ignored")
        raw_instances = {}
    for name, raw in raw_instances.items():
        try:
            instances[str(name)] = InstancePolicy.model_validate(raw)
        except ValidationError as exc:
            problems.append(f"{source}: {_explain(exc, f'crossInstance.instances.{name}')}; ignored")
    return CrossInstanceSettings(providers, adaptive, instances, source, tuple(problems))


def load_settings(path: str | os.PathLike[str] | None) -> CrossInstanceSettings:
    """Read ``config.json``; a missing, unreadable or malformed file leaves the defaults in force."""
    if path is None:
        return default_settings()
    source = str(path)
    try:
        raw = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        base = default_settings()
        return CrossInstanceSettings(base.providers, base.adaptive, {}, source, (f"{source}: not found; defaults used",))
    except EntryUnreadable as exc:
        base = default_settings()
        return CrossInstanceSettings(base.providers, base.adaptive, {}, source, (f"{source}: {exc.reason}; defaults used",))
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        base = default_settings()
        return CrossInstanceSettings(base.providers, base.adaptive, {}, source, (f"{source}: malformed JSON ({exc}); defaults used",))
    return parse_settings(document, source)
