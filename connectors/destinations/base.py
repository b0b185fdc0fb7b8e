"""The destination contract: discovery, one API call per batch, one result per record."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

Operation = Literal["upsert", "insert", "update", "delete"]

# Field data types every connector reports, so casting and validation are shared.
DATA_TYPES = ("string", "integer", "number", "boolean", "date", "datetime", "json")


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` requests in any window of `per_seconds`, as a vendor counts them."""

    requests: int
    per_seconds: float = 1.0

    @classmethod
    def per_second(cls, rate: float) -> RateLimit:
        """A rate in requests per second as a window: whole requests over the window they need
        (2.5/s is 2 per 0.8 s; 0.5/s is 1 per 2 s)."""
        requests = max(1, int(rate))
        return cls(requests=requests, per_seconds=requests / rate)


@dataclass(frozen=True)
class DestinationObject:
    api_name: str
    label: str
    supports_upsert: bool = True
    writable: bool = True


@dataclass(frozen=True)
class DestinationField:
    name: str
    label: str
    data_type: str = "string"  # one of DATA_TYPES
    required: bool = False
    updateable: bool = True
    external_id: bool = False


class Record(NamedTuple):
    """One record to send. `key` is the value of the key mapping (as text); `fields` are the
    destination field values, already mapped and cast. For deletes `fields` holds only the key.
    A named tuple: a writer builds one per record of every batch, at a third of the cost of a
    frozen dataclass."""

    key: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class RecordResult:
    """What the destination said about one record of a batch, in request order.

    ok: accepted. Otherwise `code` is a retl error code (DESTINATION_VALIDATION, NOT_FOUND,
    RATE_LIMIT, UNKNOWN, …), `message` the vendor's own words, and `retryable` says whether
    trying the same record again may succeed (a per-record lock or rate limit, not bad data).
    """

    ok: bool
    code: str | None = None
    message: str | None = None
    retryable: bool = False
    external_id: str | None = None

    @classmethod
    def success(cls, external_id: str | None = None) -> RecordResult:
        return cls(ok=True, external_id=external_id)

    @classmethod
    def failure(cls, code: str, message: str, *, retryable: bool = False) -> RecordResult:
        return cls(ok=False, code=code, message=message, retryable=retryable)


@dataclass(frozen=True)
class ConfigField:
    """One config option, for validation and for the API's schema of each connector."""

    name: str
    required: bool = False
    secret: bool = False
    default: Any = None
    description: str = ""


class Destination(ABC):
    """A destination connector. One instance per destination per worker process: it may keep a
    `requests.Session` and cached discovery. It never sleeps, retries or touches retl's database:
    the worker's executor owns retries, rate limits and the DLQ."""

    type: ClassVar[str]
    label: ClassVar[str]
    config_fields: ClassVar[tuple[ConfigField, ...]] = ()
    supported_modes: ClassVar[frozenset[str]] = frozenset({"upsert", "insert", "update", "delete", "mirror"})
    batch_size: ClassVar[int] = 100
    # Fleet-wide defaults, as the vendor publishes them; an operator may set others in the
    # destination's config (`rateLimit`: {"requests", "perSeconds"}, or `rateLimitPerSecond`;
    # `maxConcurrency`).
    rate_limit: ClassVar[RateLimit] = RateLimit(10, 1.0)
    max_concurrency: ClassVar[int] = 4
    # A destination whose requests are JSON may name the function that gives a value JSON has
    # no type for (a date, a decimal) its JSON form. The planner applies it while mapping, so a
    # batch is stored, loaded and encoded as plain JSON values: cheaper at every step than
    # carrying Decimal and datetime objects to the encoder. None: values travel as they are.
    json_form: ClassVar[Callable[[Any], Any] | None] = None

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def fleet_rate_limit(self) -> RateLimit:
        """The allowance the fleet keeps for this destination: its config's, else the vendor's."""
        window = self.config.get("rateLimit")
        if window:
            return RateLimit(int(window["requests"]), float(window["perSeconds"]))
        per_second = self.config.get("rateLimitPerSecond")
        if per_second:
            return RateLimit.per_second(float(per_second))
        return self.rate_limit

    @abstractmethod
    def test(self) -> None:
        """Call the vendor with the configured credentials; raise AuthError/ConnectorError."""

    @abstractmethod
    def list_objects(self) -> list[DestinationObject]: ...

    @abstractmethod
    def list_fields(self, object_name: str) -> list[DestinationField]: ...

    @abstractmethod
    def write_batch(
        self, object_name: str, operation: Operation, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        """Make one write call (or the fewest the vendor's API needs) for `records` and return
        one result per record, in order. Raise RetryableError when the whole call may succeed
        later, AuthError when credentials are rejected, ConnectorError for other whole-batch
        failures."""

    @classmethod
    def supported_modes_for(cls, object_name: str) -> frozenset[str]:
        """The sync modes `object_name` accepts; a connector whose objects differ narrows it."""
        return cls.supported_modes

    def batch_size_for(self, operation: Operation, total_records: int) -> int:
        """Records per write_batch call for a run that sends `total_records` with `operation`.
        A connector with a bulk API may answer more for large runs."""
        return int(self.config.get("batchSize") or self.batch_size)

    def format_value(self, value: Any, field: DestinationField) -> Any:
        """Turn an already cast Python value into the vendor's wire format (dates, datetimes)."""
        return value

    def close(self) -> None:  # noqa: B027 - optional hook; the default holds nothing
        """Release sessions and connections."""

    @classmethod
    def secret_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in cls.config_fields if f.secret)
