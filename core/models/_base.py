"""Shared machinery for every persisted record.

pi writes its files with ``JSON.stringify(value, null, 2)``: camelCase keys,
2-space indentation, ISO timestamps from ``Date.toISOString()`` and plain JS
numbers.  Every record here reproduces that shape byte for byte so that pi's own
TypeScript instances read what ``core`` writes, and keeps keys it does not know
so that a read -> write round trip loses nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from collections.abc import Mapping
from functools import cached_property
from types import UnionType
from typing import Annotated, Any, ClassVar, Self, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import SchemaSerializer


class CorruptRecord(ValueError):
    """A persisted record that cannot be parsed or fails validation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_js_iso(moment: datetime) -> str:
    """Format like JavaScript's ``Date.prototype.toISOString`` (UTC, milliseconds, ``Z``).

    ``isoformat`` in C truncates to milliseconds as JavaScript does; a time already
    in UTC (every one read from a file) skips the conversion: ``pi-dash status
    --json`` formats tens of thousands of them."""
    text = moment.isoformat(timespec="milliseconds")
    if not text.endswith("+00:00"):
        text = moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return text[:-6] + "Z"


def from_epoch_ms(epoch_ms: int | float) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def to_epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS


def _assume_utc(moment: datetime) -> datetime:
    # A timestamp without an offset is read as UTC, which is what pi means.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def _js_number(value: int | float) -> int | float:
    """JavaScript prints an integral number below 1e21 without a fraction or an
    exponent (12.0 as 12, 2**60 as 1152921504606847000), so must we, or pi's
    files change on rewrite.  Those digits are the shortest round-trip ones,
    padded with zeros, which is what ``Decimal(repr(value))`` gives."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(Decimal(repr(value))) if abs(value) >= 2**53 else int(value)
    return value


# Every number a record holds is finite and in a range the arithmetic and the
# renderers can take: a file written by a bug elsewhere (``"at": 1e17``) is a
# problem named with its key, never a crash of whoever reads it later.
MIN_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_TIME = datetime(2200, 1, 1, tzinfo=timezone.utc)
MIN_EPOCH_MS = 946_684_800_000  # MIN_TIME
MAX_EPOCH_MS = 7_258_118_400_000  # MAX_TIME
MAX_COUNT = 2**53  # JavaScript's largest exact integer
MAX_DURATION_MS = 100 * 365 * 86_400_000  # a century
MAX_RATE = 1e9  # requests per minute; anything above is a typo
MIN_RATE = 1e-3  # one request in about 17 hours; anything below would overflow the waits
MAX_BURST = 10**9


def _epoch_or_never(value: int | float) -> int | float:
    """0 means "never"; anything else must be a time in the years 2000-2199."""
    if value != 0 and not MIN_EPOCH_MS <= value < MAX_EPOCH_MS:
        raise ValueError(f"{value!r} is neither 0 nor an epoch-ms time in the years 2000-2199")
    return value


JsTime = Annotated[
    datetime,
    Field(ge=MIN_TIME, lt=MAX_TIME),  # checked in pydantic-core: a snapshot of 5,000 instances parses 15,000 of these
    AfterValidator(_assume_utc),
    PlainSerializer(to_js_iso, return_type=str),
]
"""A timestamp stored as ``2026-02-18T00:15:35.675Z`` (years 2000-2199)."""

JsNumber = Annotated[int | float, PlainSerializer(_js_number)]
"""A JSON number that may be integral or fractional, printed the way JS prints it
(finite: every record refuses NaN and infinities)."""

EpochMs = Annotated[int, Field(ge=MIN_EPOCH_MS, lt=MAX_EPOCH_MS)]
"""A time in epoch milliseconds, in the years 2000-2199."""

EpochMsOrNever = Annotated[int, AfterValidator(_epoch_or_never)]
"""An :data:`EpochMs`, or 0 for "never"."""

EpochMsFraction = Annotated[int | float, AfterValidator(_epoch_or_never), PlainSerializer(_js_number)]
"""A fractional :data:`EpochMsOrNever` (a GCRA arrival time)."""

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
"""How many of something: an integer from 0 to 2**53."""

DurationMs = Annotated[int | float, Field(ge=0, le=MAX_DURATION_MS), PlainSerializer(_js_number)]
"""A non-negative span of milliseconds, at most a century."""

Factor = Annotated[int | float, Field(ge=0, le=MAX_COUNT), PlainSerializer(_js_number)]
"""A non-negative multiplier."""

RequestsPerMinute = Annotated[int | float, Field(ge=MIN_RATE, le=MAX_RATE), PlainSerializer(_js_number)]
Burst = Annotated[int, Field(ge=1, le=MAX_BURST)]
Pid = Annotated[int, Field(ge=0, le=2**31 - 1)]


_FIELD_SETS: dict[frozenset[str], set[str]] = {}
_FIELD_SETS_KEPT = 1024
_NO_EXTRA: dict[str, Any] = {}  # every record without unknown keys shares it (pydantic copies before changing)


class Record(BaseModel):
    """Base of every persisted record: camelCase on disk, snake_case in Python.

    Optional fields that are ``None`` are left out of the file (as JS leaves out
    ``undefined``), except those listed in ``KEEP_NULL`` which pi writes as
    ``null``.  Unknown keys are kept as extras and written back after the known
    ones.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        frozen=True,
        allow_inf_nan=False,
        ser_json_inf_nan="null",
        # Validators are built on first use: a process that never meets some
        # kind of record (``pi-dash status`` and the rate limiter's state) never pays for it.
        defer_build=True,
    )

    KEEP_NULL: ClassVar[frozenset[str]] = frozenset()
    _cached: ClassVar[tuple[str, ...]] = ()
    VERSIONED: ClassVar[bool] = False  # pi-dash's own records carry a ``formatVersion``
    _omit_if_none: ClassVar[tuple[str, ...]] = ()
    _null_kept: ClassVar[tuple[str, ...]] = ()  # fields written as null when None
    _holding_records: ClassVar[tuple[str, ...]] = ()  # fields that may hold records
    _times: ClassVar[tuple[str, ...]] = ()  # JsTime fields
    _numbers: ClassVar[tuple[str, ...]] = ()  # fields printed by _js_number
    _native_ok: ClassVar[bool] = False  # every serialiser of a field is on the field itself
    _native: ClassVar[SchemaSerializer | None] = None

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        omitted = {name for name, field in cls.model_fields.items() if field.default is None and name not in cls.KEEP_NULL}
        cls._omit_if_none = tuple(cls.model_fields[name].alias or name for name in omitted)
        cls._null_kept = tuple(name for name in cls.model_fields if name not in omitted)
        cls._holding_records = tuple(name for name, field in cls.model_fields.items() if _mentions_record(field.annotation))
        serializers = {name: _field_serializers(field) for name, field in cls.model_fields.items()}
        cls._times = tuple(name for name, (own, _) in serializers.items() if own == {to_js_iso})
        cls._numbers = tuple(name for name, (own, _) in serializers.items() if own == {_js_number})
        cls._native_ok = all(not deep and own <= {to_js_iso, _js_number} and len(own) <= 1 for own, deep in serializers.values())
        cls._native = None
        cls._cached = tuple(
            name for klass in cls.__mro__ for name, value in vars(klass).items() if isinstance(value, cached_property)
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy whose derived values (``cached_property``) are computed afresh:
        pydantic would carry them over, stale, from the original."""
        copy = super().model_copy(update=update, deep=deep)
        for name in self._cached:
            copy.__dict__.pop(name, None)
        return copy

    @model_validator(mode="after")
    def _share_fields_set(self) -> Self:
        """Records made from the same keys share one set of the names given,
        and those without unknown keys one empty dict of them.

        pydantic gives every model its own set (700 bytes for an instance) and
        its own dict of extras (64 bytes, 50,000 records in a fleet of 10,000
        instances); nothing here changes either, and pydantic copies both before
        changing them (``model_copy``), so sharing them holds a 10,000-instance
        fleet in 33 MB less.  Hostile files with ever new keys stop the sharing
        of sets at ``_FIELD_SETS_KEPT`` combinations.
        """
        if not self.__pydantic_extra__:
            object.__setattr__(self, "__pydantic_extra__", _NO_EXTRA)
        fields = self.__pydantic_fields_set__
        key = frozenset(fields)
        shared = _FIELD_SETS.get(key)
        if shared is None:
            if len(_FIELD_SETS) >= _FIELD_SETS_KEPT:
                return self
            shared = _FIELD_SETS[key] = fields
        object.__setattr__(self, "__pydantic_fields_set__", shared)
        return self

    @model_serializer(mode="wrap")
    def _drop_undefined(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key in self._omit_if_none:
                if key in data and data[key] is None:
                    del data[key]
        return data

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Parse one record; any failure becomes :class:`CorruptRecord` with a short reason."""
        try:
            # By alias only: a file's "pending_task_count" is an unknown key, not pendingTaskCount.
            return cls.model_validate_json(data, by_alias=True, by_name=False)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            prefix = f"{where}: " if where else ""
            raise CorruptRecord(f"{prefix}{first['msg']}{more}") from None
        except (ValueError, RecursionError) as exc:
            raise CorruptRecord(f"unreadable JSON: {exc}") from None

    def to_json(self) -> bytes:
        """Serialise exactly as ``JSON.stringify(record, null, 2)`` would.

        Most records need none of the Python callbacks that make it so, and
        ``pi-dash status --json`` writes 10,000 instances: where
        :meth:`_native_times` vouches for it, pydantic-core alone writes them,
        ``exclude_none`` dropping what :meth:`_drop_undefined` drops, each
        number as :func:`_js_number` prints it, and each time as
        ``...T00:15:35.675000Z``, which loses its three zeros (its count of
        ``000Z"`` is checked: no other text ends so).
        """
        times = self._native_times()
        if times is not None:
            text = type(self)._native_serializer().to_json(self, indent=2, by_alias=True, exclude_none=True)
            if text.count(b'000Z"') == times:
                return text.replace(b'000Z"', b'Z"')
        return self.model_dump_json(by_alias=True, indent=2).encode("utf-8")

    def _native_times(self) -> int | None:
        """How many times this record and those it holds write, if pydantic-core writes
        them as :meth:`to_json` must bar the zeros; None if it would not: a None that is
        written as null (a field's or an unknown key's), an integral float, a time
        outside UTC or on a whole second."""
        if not self._native_ok:
            return None
        extra = self.__pydantic_extra__
        if extra and any(value is None for value in extra.values()):
            return None
        values = self.__dict__
        for name in self._null_kept:
            if values[name] is None:
                return None
        for name in self._numbers:
            number = values[name]
            if type(number) is float and number.is_integer():
                return None
        times = 0
        for name in self._times:
            moment = values[name]
            if moment is not None:
                micro = moment.microsecond
                if micro % 1000 or not micro or (moment.tzinfo not in _UTC_ZONES and not _in_utc(moment)):
                    return None
                times += 1
        for name in self._holding_records:
            held = values[name]
            for item in held.values() if isinstance(held, Mapping) else held if isinstance(held, (tuple, list)) else (held,):
                if isinstance(item, Record):
                    inner = item._native_times()
                    if inner is None:
                        return None
                    times += inner
        return times

    @classmethod
    def _native_serializer(cls) -> SchemaSerializer:
        """This class's serialiser without the Python callbacks (in it or any record it holds)."""
        if cls._native is None:
            cls._native = SchemaSerializer(_without_callbacks(cls.__pydantic_core_schema__))
        return cls._native


_UTC_ZONES: set[tzinfo] = {timezone.utc}  # and pydantic-core's own (one object for all it parses)
_UTC_ZONES_KEPT = 8


def _in_utc(moment: datetime) -> bool:
    zone = moment.tzinfo
    if zone in _UTC_ZONES:
        return True
    if moment.utcoffset() != timedelta(0):
        return False
    if len(_UTC_ZONES) < _UTC_ZONES_KEPT:
        _UTC_ZONES.add(zone)
    return True


def _field_serializers(field: Any) -> tuple[set[Any], set[Any]]:
    """The functions that print a field's value itself (``PlainSerializer``, on it or on
    its type when optional), and those that print something inside it."""
    own = {m.func for m in field.metadata if isinstance(m, PlainSerializer)}
    members = get_args(field.annotation) if get_origin(field.annotation) in (Union, UnionType) else (field.annotation,)
    deep: set[Any] = set()
    for member in members:
        if get_origin(member) is Annotated:
            inner, *metadata = get_args(member)
            own |= {m.func for m in metadata if isinstance(m, PlainSerializer)}
            deep |= _nested_serializers(inner)
        else:
            deep |= _nested_serializers(member)
    return own, deep


def _nested_serializers(annotation: Any) -> set[Any]:
    found: set[Any] = set()
    for arg in get_args(annotation):
        found |= {arg.func} if isinstance(arg, PlainSerializer) else _nested_serializers(arg)
    return found


def _mentions_record(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return True
    return any(_mentions_record(arg) for arg in get_args(annotation))


def _without_callbacks(schema: Any) -> Any:
    """A copy of a core schema without the serialisers of this module (records'
    :meth:`Record._drop_undefined`, :func:`to_js_iso`, :func:`_js_number`)."""
    if isinstance(schema, list):
        return [_without_callbacks(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {key: _without_callbacks(value) for key, value in schema.items()}
    serialization = copy.get("serialization")
    if isinstance(serialization, dict) and getattr(serialization.get("function"), "__module__", None) == __name__:
        del copy["serialization"]
    return copy
