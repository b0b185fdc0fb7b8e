"""Iterable destination: user profiles through `users/bulkUpdate` and one-call-per-user deletes,
custom events through `events/trackBulk`.

What Iterable's API allows shapes what this connector offers:
- users: upsert (bulkUpdate creates or updates; Iterable has no update-only bulk call, so
  "update" is not offered), delete (Iterable has no bulk delete for users: one
  `DELETE /api/users/{email}` or `/api/users/byUserId/{userId}` per record), hence mirror.
- events: insert only (trackBulk). The key mapping fills the event's `id`, which Iterable uses
  to update rather than duplicate an event sent twice.
- A request body may not exceed 4 MB: a batch is split into several requests when needed.
- A field whose type conflicts with the project's schema makes Iterable refuse the WHOLE request
  (400 RequestFieldsTypesMismatched). The offending records are failed with Iterable's words
  and the rest are sent again, so one bad value does not sink a batch.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import requests

from connectors.destinations.base import (
    DATA_TYPES,
    ConfigField,
    Destination,
    DestinationField,
    DestinationObject,
    Operation,
    RateLimit,
    Record,
    RecordResult,
)
from connectors.errors import AuthError, ConnectorError, RetryableError, UnsupportedMode
from connectors.http_support import passing_failure

DEFAULT_BASE_URL = "https://api.iterable.com"
# Iterable's documented ceiling is 4 MB per request body; stay a little under it.
MAX_BODY_BYTES = 4_000_000
MAX_ERROR_TEXT = 1000
USER_KEYS = ("email", "userId")
# Top-level event attributes; every other mapped field goes into the event's dataFields.
EVENT_ATTRIBUTES = ("email", "userId", "eventName", "id", "createdAt", "campaignId", "templateId")
# A type conflict splits out the offending records and resends the rest; a few rounds cover
# several conflicting fields without letting a confused answer loop.
MAX_TYPE_CONFLICT_ROUNDS = 4

# Iterable field types (users/getFields) onto the shared data types.
_ITERABLE_TYPES = {
    "string": "string",
    "long": "integer",
    "double": "number",
    "boolean": "boolean",
    "date": "datetime",
    "object": "json",
    "nested": "json",
    "array": "json",
    "geo_location": "json",
}

_FAILED_UPDATE_REASONS = {
    "invalidEmails": ("DESTINATION_VALIDATION", "malformed email address"),
    "invalidUserIds": ("DESTINATION_VALIDATION", "malformed userId"),
    "invalidDataEmails": ("DESTINATION_VALIDATION", "invalid data in dataFields"),
    "invalidDataUserIds": ("DESTINATION_VALIDATION", "invalid data in dataFields"),
    "conflictEmails": ("DESTINATION_VALIDATION", "email already belongs to another user"),
    "conflictUserIds": ("DESTINATION_VALIDATION", "userId already belongs to another user"),
    "forgottenEmails": ("DESTINATION_VALIDATION", "user was forgotten (GDPR); Iterable refuses it"),
    "forgottenUserIds": (
        "DESTINATION_VALIDATION",
        "user was forgotten (GDPR); Iterable refuses it",
    ),
    "notFoundEmails": ("NOT_FOUND", "no user with this email"),
    "notFoundUserIds": ("NOT_FOUND", "no user with this userId"),
}

_DATE_FORMS = (
    re.compile(r"\d{4}-\d{2}-\d{2}"),
    re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}( [+-]\d{2}:\d{2})?"),
    re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}([+-]\d{2}:\d{2}|Z)"),
)


def iterable_datetime(value: dt.datetime) -> str:
    """`2025-03-27 17:00:00 +00:00`: Iterable's `yyyy-MM-dd HH:mm:ss ZZ` date form, in UTC."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S +00:00")


def _json_value(value: Any) -> Any:
    """JSON for a value no field type was discovered for: a Postgres numeric stays a number
    (Iterable would otherwise type a new field as string), a moment takes Iterable's date form."""
    if isinstance(value, decimal.Decimal):
        # 3.0 stays a double: Iterable types a new field by its first value, and a later 4.5
        # must not conflict with a long.
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, dt.datetime):
        return iterable_datetime(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _epoch_seconds(value: Any) -> int | None:
    """An event's `createdAt` as the unix timestamp trackBulk expects."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return int(moment.timestamp())
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    if len(text) > 19 and text[10] == " ":  # Iterable's own form: "yyyy-MM-dd HH:mm:ss ZZ"
        text = text[:10] + "T" + text[11:19] + text[19:].strip()
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def _matches_iterable_type(value: Any, iterable_type: str) -> bool:
    """Whether Iterable would accept `value` in a field of `iterable_type`."""
    if value is None:
        return True
    kind = iterable_type.lower()
    if kind == "string":
        return isinstance(value, str)
    if kind == "long":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "double":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "date":
        return isinstance(value, str) and any(form.fullmatch(value) for form in _DATE_FORMS)
    if kind in ("object", "geo_location"):
        return isinstance(value, dict)
    if kind in ("nested", "array"):
        return isinstance(value, list | dict)
    return True


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Iterable names nested profile fields with dots (`address.city`); send them nested."""
    if not any("." in name for name in flat):
        return flat
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        parts = name.split(".")
        target = nested
        for part in parts[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = target[part] = {}
            target = child
        target[parts[-1]] = value
    return nested


def _value_at(data: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """(found, value) for a dotted field name inside nested dataFields."""
    if dotted in data:
        return True, data[dotted]
    current: Any = data
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            return False, None
        current = current[part]
    return True, current


@dataclass
class _Prepared:
    """One record as it goes on the wire, with its position in the batch."""

    index: int
    identifier: str | None  # email or userId value, to match Iterable's failure lists
    payload: dict[str, Any]
    encoded: str


class IterableDestination(Destination):
    type: ClassVar[str] = "iterable"
    label: ClassVar[str] = "Iterable"
    config_fields: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField("apiKey", required=True, secret=True, description="Server-side API key."),
        ConfigField(
            "baseUrl",
            default=DEFAULT_BASE_URL,
            description="API base URL (EU: api.eu.iterable.com).",
        ),
        ConfigField("timeoutSeconds", default=60, description="Read timeout per request."),
        ConfigField(
            "eventName",
            description="Event name for records whose mapping has no eventName field.",
        ),
        ConfigField(
            "eventFields",
            default=[],
            description='Event dataFields offered for mapping: names or {"name", "type"} objects.',
        ),
        ConfigField(
            "mergeNestedObjects",
            default=False,
            description="Merge top-level objects of user profiles instead of overwriting them.",
        ),
    )
    supported_modes: ClassVar[frozenset[str]] = frozenset({"upsert", "insert", "delete", "mirror"})
    # Users are upserted (and deleted); events can only be inserted.
    modes_by_object: ClassVar[dict[str, frozenset[str]]] = {
        "users": frozenset({"upsert", "delete", "mirror"}),
        "events": frozenset({"insert"}),
    }
    batch_size: ClassVar[int] = 1000
    # users/bulkUpdate allows 5 requests/s per project (trackBulk 10): the stricter one rules.
    # users/bulkUpdate: about 5 requests per second per project.
    rate_limit: ClassVar[RateLimit] = RateLimit(5, 1.0)
    max_concurrency: ClassVar[int] = 2

    @classmethod
    def supported_modes_for(cls, object_name: str) -> frozenset[str]:
        return cls.modes_by_object.get(object_name, cls.supported_modes)

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.api_key = str(config.get("apiKey") or "")
        if not self.api_key:
            raise ConnectorError("config apiKey is required")
        self.base_url = str(config.get("baseUrl") or DEFAULT_BASE_URL).rstrip("/")
        read_timeout = float(config.get("timeoutSeconds") or 60)
        self.timeout = (min(10.0, read_timeout), read_timeout)
        self._session: requests.Session | None = None

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            session.headers.update({"Api-Key": self.api_key, "Content-Type": "application/json"})
            self._session = session
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- HTTP ----------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: bytes | None = None) -> requests.Response:
        """One request; raises for everything that fails the whole call, returns the rest."""
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(method, url, data=body, timeout=self.timeout)
        except requests.Timeout as exc:
            raise RetryableError(f"Iterable timed out: {exc}", code="TIMEOUT") from None
        except requests.RequestException as exc:
            raise RetryableError(f"cannot reach Iterable at {self.base_url}: {exc}") from None
        status = response.status_code
        if status in (401, 403):
            raise AuthError(
                f"Iterable rejected the API key (HTTP {status}: {self._describe(response)}); "
                "fix apiKey in the destination's config (it must be a server-side key)"
            )
        passing = passing_failure(
            status, response.headers, f"Iterable answered HTTP {status}: {self._describe(response)}"
        )
        if passing is not None:
            raise passing
        return response

    @staticmethod
    def _json(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    @classmethod
    def _describe(cls, response: requests.Response) -> str:
        """Iterable's own message (`code`: `msg`) or the raw text."""
        document = cls._json(response)
        if isinstance(document, dict) and ("msg" in document or "code" in document):
            return f"{document.get('code')}: {document.get('msg')}"
        return response.text[:MAX_ERROR_TEXT]

    # -- discovery -----------------------------------------------------------------------------

    def test(self) -> None:
        response = self._call("GET", "/api/users/getFields")
        if response.status_code != 200:
            raise ConnectorError(
                f"Iterable answered HTTP {response.status_code}: {self._describe(response)}"
            )

    def list_objects(self) -> list[DestinationObject]:
        return [
            DestinationObject("users", "Users"),
            DestinationObject("events", "Custom events", supports_upsert=False),
        ]

    def list_fields(self, object_name: str) -> list[DestinationField]:
        if object_name == "users":
            return self._user_fields()
        if object_name == "events":
            return self._event_fields()
        raise ConnectorError(f"unknown Iterable object {object_name!r}; use users or events")

    def _user_fields(self) -> list[DestinationField]:
        response = self._call("GET", "/api/users/getFields")
        document = self._json(response)
        fields = document.get("fields") if isinstance(document, dict) else None
        if response.status_code != 200 or not isinstance(fields, dict):
            raise ConnectorError(
                f"Iterable users/getFields answered HTTP {response.status_code}: "
                f"{self._describe(response)}"
            )
        out = [
            DestinationField("email", "Email", "string", external_id=True),
            DestinationField("userId", "User ID", "string", external_id=True),
        ]
        for name, iterable_type in sorted(fields.items()):
            if name in USER_KEYS:
                continue
            data_type = _ITERABLE_TYPES.get(str(iterable_type).lower(), "string")
            out.append(DestinationField(name, name, data_type))
        return out

    def _event_fields(self) -> list[DestinationField]:
        has_default_name = bool(self.config.get("eventName"))
        out = [
            DestinationField("id", "Event ID", "string", external_id=True),
            DestinationField("email", "Email", "string"),
            DestinationField("userId", "User ID", "string"),
            DestinationField("eventName", "Event name", "string", required=not has_default_name),
            DestinationField("createdAt", "Created at", "datetime"),
            DestinationField("campaignId", "Campaign ID", "integer"),
            DestinationField("templateId", "Template ID", "integer"),
        ]
        declared = self.config.get("eventFields") or []
        if not isinstance(declared, list):
            raise ConnectorError("config eventFields must be a list")
        for entry in declared:
            if isinstance(entry, str):
                out.append(DestinationField(entry, entry))
                continue
            if not isinstance(entry, dict) or not entry.get("name"):
                raise ConnectorError(f"config eventFields entry {entry!r} needs a name")
            raw_type = str(entry.get("type") or "string").lower()
            data_type = _ITERABLE_TYPES.get(raw_type, raw_type)
            if data_type not in DATA_TYPES:
                raise ConnectorError(
                    f"config eventFields {entry['name']!r}: unknown type {raw_type!r}"
                )
            out.append(DestinationField(str(entry["name"]), str(entry["name"]), data_type))
        return out

    # -- values --------------------------------------------------------------------------------

    def format_value(self, value: Any, field: DestinationField) -> Any:
        if isinstance(value, dt.datetime):
            return iterable_datetime(value)
        if isinstance(value, dt.date):
            return value.isoformat()
        return value

    def batch_size_for(self, operation: Operation, total_records: int) -> int:
        if operation == "delete":
            # One API call per deleted user: keep each batch to about a second of calls.
            return 100
        return int(self.config.get("batchSize") or self.batch_size)

    # -- writes --------------------------------------------------------------------------------

    def write_batch(
        self, object_name: str, operation: Operation, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        if not records:
            return []
        if object_name == "users":
            if key_field not in USER_KEYS:
                raise ConnectorError(f"users are identified by email or userId, not {key_field!r}")
            if operation == "upsert":
                return self._bulk_update_users(key_field, records)
            if operation == "delete":
                return self._delete_users(key_field, records)
            raise UnsupportedMode(
                f"Iterable users support upsert and delete, not {operation}: Iterable has no "
                "bulk call that only updates existing users"
            )
        if object_name == "events":
            if operation != "insert":
                raise UnsupportedMode(f"Iterable events can only be inserted, not {operation}")
            return self._track_events(key_field, records)
        raise ConnectorError(f"unknown Iterable object {object_name!r}; use users or events")

    def _bulk_update_users(self, key_field: str, records: list[Record]) -> list[RecordResult]:
        merge = bool(self.config.get("mergeNestedObjects"))
        prepared: list[_Prepared] = []
        for index, record in enumerate(records):
            data = {name: value for name, value in record.fields.items() if name != key_field}
            user: dict[str, Any] = {key_field: record.key, "dataFields": _nest(data)}
            if key_field == "userId":
                # Without it an email-based project would not create a user known by userId.
                user["preferUserId"] = True
            if merge:
                user["mergeNestedObjects"] = True
            prepared.append(_Prepared(index, record.key, user, json.dumps(user, default=_json_value)))
        return self._send_in_bodies(
            "/api/users/bulkUpdate", "users", prepared, len(records), self._user_failures
        )

    def _track_events(self, key_field: str, records: list[Record]) -> list[RecordResult]:
        default_name = self.config.get("eventName")
        results: list[RecordResult | None] = [None] * len(records)
        prepared: list[_Prepared] = []
        for index, record in enumerate(records):
            fields = record.fields
            event: dict[str, Any] = {}
            data: dict[str, Any] = {}
            for name, value in fields.items():
                if name in EVENT_ATTRIBUTES:
                    if value is not None:
                        event[name] = value
                elif name != key_field:
                    data[name] = value
            event["id"] = record.key
            event.setdefault("eventName", default_name)
            if not event.get("eventName"):
                results[index] = RecordResult.failure(
                    "DESTINATION_VALIDATION",
                    "eventName is missing (map it or set config eventName)",
                )
                continue
            if not event.get("email") and not event.get("userId"):
                results[index] = RecordResult.failure(
                    "DESTINATION_VALIDATION", "an event needs an email or a userId"
                )
                continue
            if "createdAt" in event:
                try:
                    event["createdAt"] = _epoch_seconds(event["createdAt"])
                except ValueError as exc:
                    results[index] = RecordResult.failure(
                        "DESTINATION_VALIDATION", f"createdAt {event['createdAt']!r}: {exc}"
                    )
                    continue
            event["dataFields"] = _nest(data)
            identifier = event.get("email") or event.get("userId")
            prepared.append(
                _Prepared(index, str(identifier), event, json.dumps(event, default=_json_value))
            )
        if prepared:
            sent = self._send_in_bodies(
                "/api/events/trackBulk", "events", prepared, len(records), self._event_failures
            )
            for item in prepared:
                results[item.index] = sent[item.index]
        return [result or RecordResult.failure("UNKNOWN", "not sent") for result in results]

    def _send_in_bodies(
        self,
        path: str,
        list_key: str,
        prepared: list[_Prepared],
        total: int,
        failures_of: Callable[[dict[str, Any], list[_Prepared]], dict[int, RecordResult]],
    ) -> list[RecordResult]:
        """POST the prepared records in as few bodies of at most 4 MB as possible and map the
        answers back to record positions. While Iterable has stored nothing of the batch, a
        whole-call failure raises (the batch is retried or failed as a whole); once a body went
        in, a later failure fails only the records not yet sent."""
        results: dict[int, RecordResult] = {}
        stored_any = False
        pending = list(prepared)
        rounds = 0
        while pending:
            chunks, oversize = self._chunks(list_key, pending)
            for item in oversize:
                results[item.index] = RecordResult.failure(
                    "DESTINATION_VALIDATION",
                    f"record is {len(item.encoded)} bytes; Iterable accepts at most 4 MB per request",
                )
            resend: list[_Prepared] = []
            for chunk_number, chunk in enumerate(chunks):
                body = (
                    '{"' + list_key + '":[' + ",".join(i.encoded for i in chunk) + "]}"
                ).encode()
                try:
                    response = self._call("POST", path, body)
                    conflicts = self._type_conflicts(response)
                    if conflicts is None:
                        results.update(self._chunk_results(response, chunk, failures_of))
                        stored_any = True
                        continue
                except AuthError:
                    raise
                except ConnectorError as exc:
                    if not stored_any:
                        raise
                    for unsent in chunks[chunk_number:]:
                        for item in unsent:
                            results[item.index] = RecordResult.failure(
                                exc.code, exc.message, retryable=isinstance(exc, RetryableError)
                            )
                    resend = []
                    break
                bad = self._records_with_conflicts(chunk, conflicts)
                if not bad or rounds >= MAX_TYPE_CONFLICT_ROUNDS:
                    bad = {item.index for item in chunk}
                message = self._conflict_message(response, conflicts)
                for item in chunk:
                    if item.index in bad:
                        results[item.index] = RecordResult.failure(
                            "DESTINATION_VALIDATION", message
                        )
                    else:
                        resend.append(item)
            pending = resend
            rounds += 1
        return [results.get(i, RecordResult.failure("UNKNOWN", "no answer")) for i in range(total)]

    @staticmethod
    def _chunks(
        list_key: str, items: list[_Prepared]
    ) -> tuple[list[list[_Prepared]], list[_Prepared]]:
        """Greedy packing into bodies under MAX_BODY_BYTES; records too big alone come back
        separately. Sizes are in characters of ASCII-escaped JSON, so bytes equal characters."""
        overhead = len(list_key) + 8  # {"<key>":[ ... ]}
        chunks: list[list[_Prepared]] = []
        oversize: list[_Prepared] = []
        current: list[_Prepared] = []
        size = overhead
        for item in items:
            length = len(item.encoded) + 1
            if length + overhead > MAX_BODY_BYTES:
                oversize.append(item)
                continue
            if current and size + length > MAX_BODY_BYTES:
                chunks.append(current)
                current, size = [], overhead
            current.append(item)
            size += length
        if current:
            chunks.append(current)
        return chunks, oversize

    def _chunk_results(
        self,
        response: requests.Response,
        chunk: list[_Prepared],
        failures_of: Callable[[dict[str, Any], list[_Prepared]], dict[int, RecordResult]],
    ) -> dict[int, RecordResult]:
        document = self._json(response)
        if response.status_code == 413:
            raise ConnectorError(
                f"Iterable refused the request body as too large: {self._describe(response)}"
            )
        if response.status_code >= 400:
            raise ConnectorError(
                f"Iterable refused the request (HTTP {response.status_code}): {self._describe(response)}"
            )
        if not isinstance(document, dict) or not isinstance(document.get("successCount"), int):
            unknown = RecordResult.failure(
                "UNKNOWN", f"unexpected answer from Iterable: {response.text[:MAX_ERROR_TEXT]}"
            )
            return {item.index: unknown for item in chunk}
        failed = failures_of(document, chunk)
        fail_count = document.get("failCount")
        if isinstance(fail_count, int) and fail_count > len(failed):
            # Iterable counted failures it did not name: none of the unnamed can be trusted.
            unnamed = RecordResult.failure(
                "UNKNOWN",
                f"Iterable reported {fail_count} failures but named only {len(failed)}",
            )
            return {item.index: failed.get(item.index, unnamed) for item in chunk}
        return {item.index: failed.get(item.index, RecordResult.success()) for item in chunk}

    @staticmethod
    def _named_failures(
        lists: dict[str, Any], chunk: list[_Prepared], keys: Iterable[str]
    ) -> dict[int, RecordResult]:
        """Records whose identifier (or, for malformed emails, any data value) Iterable listed."""
        failed: dict[int, RecordResult] = {}
        for list_name in keys:
            named = lists.get(list_name)
            if not isinstance(named, list) or not named:
                continue
            # Iterable stores emails lowercased and may list them so.
            fold = list_name.endswith("Emails")
            named_set = {str(v).lower() if fold else str(v) for v in named}
            code, reason = _FAILED_UPDATE_REASONS[list_name]
            for item in chunk:
                if item.index in failed:
                    continue
                identifier = item.identifier or ""
                hit = (identifier.lower() if fold else identifier) in named_set
                if not hit and list_name == "invalidEmails":
                    data = item.payload.get("dataFields") or {}
                    hit = any(isinstance(v, str) and v.lower() in named_set for v in data.values())
                if hit:
                    failed[item.index] = RecordResult.failure(
                        code, f"{reason} (Iterable {list_name}: {item.identifier})"
                    )
        return failed

    def _user_failures(
        self, document: dict[str, Any], chunk: list[_Prepared]
    ) -> dict[int, RecordResult]:
        lists = document.get("failedUpdates")
        if not isinstance(lists, dict):
            # Older answers carry only the deprecated top-level lists.
            lists = {k: document.get(k) for k in ("invalidEmails", "invalidUserIds")}
        return self._named_failures(lists, chunk, _FAILED_UPDATE_REASONS)

    def _event_failures(
        self, document: dict[str, Any], chunk: list[_Prepared]
    ) -> dict[int, RecordResult]:
        lists = document.get("failedUpdates")
        if not isinstance(lists, dict):
            lists = {k: document.get(k) for k in ("invalidEmails", "invalidUserIds")}
        failed = self._named_failures(lists, chunk, _FAILED_UPDATE_REASONS)
        disallowed = document.get("disallowedEventNames")
        if isinstance(disallowed, list) and disallowed:
            names = {str(name) for name in disallowed}
            for item in chunk:
                if item.index not in failed and item.payload.get("eventName") in names:
                    failed[item.index] = RecordResult.failure(
                        "DESTINATION_VALIDATION",
                        f"event name {item.payload['eventName']!r} is disallowed from tracking "
                        "in this Iterable project",
                    )
        return failed

    def _type_conflicts(self, response: requests.Response) -> dict[str, Any] | None:
        """The validationErrors of a RequestFieldsTypesMismatched refusal, else None."""
        if response.status_code != 400:
            return None
        document = self._json(response)
        if not isinstance(document, dict) or document.get("code") != "RequestFieldsTypesMismatched":
            return None
        params = document.get("params")
        errors = params.get("validationErrors") if isinstance(params, dict) else None
        return errors if isinstance(errors, dict) else {}

    @staticmethod
    def _records_with_conflicts(chunk: list[_Prepared], conflicts: dict[str, Any]) -> set[int]:
        bad: set[int] = set()
        for field_name, detail in conflicts.items():
            if not isinstance(detail, dict):
                continue
            expected = str(detail.get("expectedType") or "")
            offending = detail.get("offendingValue")
            for item in chunk:
                data = item.payload.get("dataFields") or {}
                found, value = _value_at(data, field_name)
                if not found:
                    continue
                if not _matches_iterable_type(value, expected) or (
                    offending is not None and value == offending
                ):
                    bad.add(item.index)
        return bad

    def _conflict_message(self, response: requests.Response, conflicts: dict[str, Any]) -> str:
        parts = []
        for field_name, detail in conflicts.items():
            if isinstance(detail, dict):
                parts.append(
                    f"field {field_name} must be {detail.get('expectedType')} "
                    f"(got {detail.get('offendingValue')!r})"
                )
        summary = "; ".join(parts) or self._describe(response)
        return f"Iterable RequestFieldsTypesMismatched: {summary}"[:MAX_ERROR_TEXT]

    def _delete_users(self, key_field: str, records: list[Record]) -> list[RecordResult]:
        results: list[RecordResult] = []
        for position, record in enumerate(records):
            if key_field == "email":
                path = f"/api/users/{quote(record.key, safe='@')}"
            else:
                path = f"/api/users/byUserId/{quote(record.key, safe='')}"
            try:
                response = self._call("DELETE", path)
            except RetryableError as exc:
                if position == 0:
                    raise
                # Earlier deletes went through; only the rest must be tried again.
                rest = RecordResult.failure(exc.code, exc.message, retryable=True)
                results.extend([rest] * (len(records) - position))
                break
            results.append(self._delete_result(response))
        return results

    def _delete_result(self, response: requests.Response) -> RecordResult:
        if 200 <= response.status_code < 300:
            return RecordResult.success()
        document = self._json(response)
        code = document.get("code") if isinstance(document, dict) else None
        if response.status_code == 404 or code in (
            "UnknownEmailError",
            "UnknownUserIdError",
            "NotFound",
        ):
            # Already absent: what a delete asks for.
            return RecordResult.success()
        if response.status_code == 400:
            return RecordResult.failure("DESTINATION_VALIDATION", self._describe(response))
        return RecordResult.failure(
            "UNKNOWN", f"HTTP {response.status_code}: {self._describe(response)}"
        )
