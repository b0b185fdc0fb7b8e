"""HubSpot destination: writes CRM records through the v3 batch APIs (upsert, create, update,
archive) and discovers objects from the schemas API and fields from the properties API."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import threading
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import requests

from connectors.casting import iso_datetime
from connectors.destinations.base import (
    ConfigField,
    Destination,
    DestinationField,
    DestinationObject,
    Operation,
    RateLimit,
    Record,
    RecordResult,
)
from connectors.errors import AuthError, ConnectorError, RetryableError
from connectors.http_support import retry_after_seconds

DEFAULT_BASE_URL = "https://api.hubapi.com"
# HubSpot's CRM batch endpoints take at most 100 inputs per request.
MAX_BATCH_INPUTS = 100
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
# The ten-secondly window is 10 s unless the response says otherwise.
DEFAULT_WINDOW_SECONDS = 10.0
# The daily limit resets at midnight in the account's time zone, which the API does not report:
# try again every hour rather than hammering a spent quota.
DAILY_LIMIT_RETRY_SECONDS = 3600.0
# A 423 Locked lasts two seconds (HubSpot's error-handling guide).
LOCKED_RETRY_SECONDS = 2.0
# HubSpot's own record id: update and archive address records by it without an idProperty.
RECORD_ID_PROPERTY = "hs_object_id"

# Standard objects writable through /crm/v3/objects/{type}: (api name, label, has unique keys).
# Contacts, companies, deals, tickets and products accept unique-value properties, so they can
# be upserted; line items and activities are written by record id only.
STANDARD_OBJECTS: tuple[tuple[str, str, bool], ...] = (
    ("contacts", "Contacts", True),
    ("companies", "Companies", True),
    ("deals", "Deals", True),
    ("tickets", "Tickets", True),
    ("products", "Products", True),
    ("line_items", "Line items", False),
    ("calls", "Calls", False),
    ("emails", "Emails", False),
    ("meetings", "Meetings", False),
    ("notes", "Notes", False),
    ("tasks", "Tasks", False),
)

# Properties HubSpot documents as record identifiers although their definition does not carry
# hasUniqueValue: a contact's email address and a company's domain.
_CONTACT_TYPES = frozenset({"contacts", "contact", "0-1"})
_COMPANY_TYPES = frozenset({"companies", "company", "0-2"})

_DATA_TYPES = {"number": "number", "bool": "boolean", "date": "date", "datetime": "datetime"}

# 400 VALIDATION_ERROR answers about the request itself rather than the records in it.
_REQUEST_LEVEL_MESSAGES = (
    "maximum number of inputs",
    "unable to infer object type",
    "invalid input json",
    "non-unique",
    "idproperty",
)
_PROPERTY_VALUES_PREFIX = "Property values were not valid: "
_DUPLICATE_IDS = re.compile(r"Duplicate IDs found in batch input: \[(.*?)\]")


@dataclass
class _Reply:
    status: int
    text: str
    body: Any
    # requests' case-insensitive header mapping: HubSpot's header names vary in case.
    headers: Any = None

    @property
    def message(self) -> str:
        if isinstance(self.body, dict) and self.body.get("message"):
            return str(self.body["message"])
        return self.text.strip() or f"HTTP {self.status} with an empty body"

    @property
    def category(self) -> str:
        return str(self.body.get("category") or "") if isinstance(self.body, dict) else ""


@dataclass
class _Invalid:
    """One rejected property value from a whole-batch validation answer."""

    name: str
    message: str
    value: str | None


class _KeyIndex:
    """Finds the records a key value names: exactly first, then ignoring case and spaces,
    because HubSpot stores emails and domains lower-cased."""

    def __init__(self, keys: list[str]) -> None:
        self._exact: dict[str, list[int]] = {}
        self._folded: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            self._exact.setdefault(key, []).append(index)
            self._folded.setdefault(_fold(key), []).append(index)

    def find(self, value: Any) -> list[int]:
        if value is None:
            return []
        text = str(value)
        return self._exact.get(text) or self._folded.get(_fold(text)) or []


def _fold(value: str) -> str:
    return value.strip().casefold()


class HubSpotDestination(Destination):
    type = "hubspot"
    label = "HubSpot"
    config_fields: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField(
            "accessToken",
            required=True,
            secret=True,
            description="Private app access token (or OAuth access token) with CRM object scopes.",
        ),
        ConfigField("baseUrl", default=DEFAULT_BASE_URL, description="HubSpot API base URL."),
        ConfigField(
            "timeoutSeconds",
            default=READ_TIMEOUT_SECONDS,
            description="Seconds to wait for HubSpot's answer to one request.",
        ),
    )
    supported_modes: ClassVar[frozenset[str]] = frozenset(
        {"upsert", "insert", "update", "delete", "mirror"}
    )
    batch_size: ClassVar[int] = MAX_BATCH_INPUTS
    # 100 requests per 10 s on the lowest plan; the account's limit is shared by every app.
    # Private apps: 100 requests per 10 s (Free, Starter), 190 (Professional, Enterprise).
    rate_limit: ClassVar[RateLimit] = RateLimit(100, 10.0)
    max_concurrency: ClassVar[int] = 5

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()
        # The last rate-limit headroom HubSpot reported (None until a response carried it).
        self.rate_limit_remaining: int | None = None
        self.daily_limit_remaining: int | None = None

    # --- contract -------------------------------------------------------------------------

    def test(self) -> None:
        reply = self._request("GET", "/crm/v3/objects/contacts", params={"limit": 1})
        if not 200 <= reply.status < 300:
            raise self._request_error(reply)

    def list_objects(self) -> list[DestinationObject]:
        objects = [
            DestinationObject(api_name=name, label=label, supports_upsert=upsertable)
            for name, label, upsertable in STANDARD_OBJECTS
        ]
        reply = self._request("GET", "/crm/v3/schemas", passthrough=(403,))
        if reply.status == 403:
            # A token without the custom-object schema scope still writes standard objects.
            return objects
        if not 200 <= reply.status < 300:
            raise self._request_error(reply)
        for schema in _results(reply):
            api_name = (
                schema.get("objectTypeId") or schema.get("fullyQualifiedName") or schema.get("name")
            )
            if not api_name:
                continue
            labels = schema.get("labels") if isinstance(schema.get("labels"), dict) else {}
            label = labels.get("plural") or labels.get("singular") or schema.get("name") or api_name
            objects.append(DestinationObject(api_name=str(api_name), label=str(label)))
        return objects

    def list_fields(self, object_name: str) -> list[DestinationField]:
        reply = self._request("GET", f"/crm/v3/properties/{quote(object_name, safe='')}")
        if reply.status in (400, 404):
            raise ConnectorError(f"HubSpot has no object type {object_name!r}: {reply.message}")
        if not 200 <= reply.status < 300:
            raise self._request_error(reply)
        if not isinstance(reply.body, dict) or not isinstance(reply.body.get("results"), list):
            raise ConnectorError(
                f"unexpected answer from HubSpot's properties API: {reply.text[:500]}"
            )
        identifiers = {RECORD_ID_PROPERTY}
        if object_name.lower() in _CONTACT_TYPES:
            identifiers.add("email")
        if object_name.lower() in _COMPANY_TYPES:
            identifiers.add("domain")
        fields = []
        for prop in _results(reply):
            name = prop.get("name")
            if not name:
                continue
            metadata = prop.get("modificationMetadata")
            read_only = bool(metadata.get("readOnlyValue")) if isinstance(metadata, dict) else False
            fields.append(
                DestinationField(
                    name=str(name),
                    label=str(prop.get("label") or name),
                    data_type=_DATA_TYPES.get(str(prop.get("type") or "").lower(), "string"),
                    updateable=not read_only,
                    external_id=bool(prop.get("hasUniqueValue")) or name in identifiers,
                )
            )
        return fields

    def batch_size_for(self, operation: Operation, total_records: int) -> int:
        return min(super().batch_size_for(operation, total_records), MAX_BATCH_INPUTS)

    def format_value(self, value: Any, field: DestinationField) -> Any:
        """Dates go as midnight-UTC epoch milliseconds (the form every HubSpot API version
        accepts for date properties), datetimes as ISO 8601 UTC, booleans as "true"/"false",
        numbers as plain decimal text (HubSpot rejects `1e-14` as not a number)."""
        return _wire_value(value)

    def write_batch(
        self, object_name: str, operation: Operation, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        if not records:
            return []
        if len(records) > MAX_BATCH_INPUTS:
            raise ConnectorError(
                f"{len(records)} records in one batch; HubSpot takes at most {MAX_BATCH_INPUTS}"
            )
        if operation == "delete":
            return self._archive(object_name, key_field, records)
        by_record_id = key_field == RECORD_ID_PROPERTY
        # objectWriteTraceId asks HubSpot for a multi-status answer that names each failed
        # input, instead of failing the whole batch for one bad record.
        if operation == "insert":
            endpoint = "create"
            inputs = [
                {"properties": _properties(record), "objectWriteTraceId": str(index)}
                for index, record in enumerate(records)
            ]
        elif operation == "update" or (operation == "upsert" and by_record_id):
            # Record ids are HubSpot's to assign, so an upsert keyed by hs_object_id can only
            # update records that exist; missing ones come back NOT_FOUND.
            endpoint = "update"
            inputs = [
                {
                    "id": record.key,
                    **({} if by_record_id else {"idProperty": key_field}),
                    "properties": _properties(record),
                    "objectWriteTraceId": str(index),
                }
                for index, record in enumerate(records)
            ]
        elif operation == "upsert":
            endpoint = "upsert"
            inputs = [
                {
                    "id": record.key,
                    "idProperty": key_field,
                    "properties": _properties(record),
                    "objectWriteTraceId": str(index),
                }
                for index, record in enumerate(records)
            ]
        else:
            raise ConnectorError(f"HubSpot does not support the operation {operation!r}")
        reply = self._request(
            "POST", f"{_objects_path(object_name)}/batch/{endpoint}", json_body={"inputs": inputs}
        )
        if reply.status == 400:
            return self._whole_batch_rejection(reply, records)
        if not 200 <= reply.status < 300:
            raise self._request_error(reply)
        return self._match_results(reply, records, key_field, positional=operation == "insert")

    def close(self) -> None:
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    # --- deletes ---------------------------------------------------------------------------

    def _archive(
        self, object_name: str, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        """batch/archive takes HubSpot record ids only; other keys are resolved to ids first with
        batch/read by idProperty. Keys HubSpot does not know are already gone: they count as
        deleted, as does archiving an id that no longer exists (HubSpot answers 204 for it)."""
        results: list[RecordResult | None] = [None] * len(records)
        if key_field == RECORD_ID_PROPERTY:
            record_ids = {index: record.key for index, record in enumerate(records)}
        else:
            record_ids = self._resolve_record_ids(object_name, key_field, records, results)
        unique_ids = list(dict.fromkeys(record_ids.values()))
        if unique_ids:
            reply = self._request(
                "POST",
                f"{_objects_path(object_name)}/batch/archive",
                json_body={"inputs": [{"id": record_id} for record_id in unique_ids]},
            )
            if not 200 <= reply.status < 300:
                raise self._request_error(reply)
        return [
            result
            if result is not None
            else RecordResult.success(external_id=record_ids.get(index))
            for index, result in enumerate(results)
        ]

    def _resolve_record_ids(
        self,
        object_name: str,
        key_field: str,
        records: list[Record],
        results: list[RecordResult | None],
    ) -> dict[int, str]:
        keys = [record.key for record in records]
        reply = self._request(
            "POST",
            f"{_objects_path(object_name)}/batch/read",
            json_body={
                "idProperty": key_field,
                "properties": [key_field],
                "inputs": [{"id": key} for key in dict.fromkeys(keys)],
            },
        )
        if not 200 <= reply.status < 300:
            raise self._request_error(reply)
        if not isinstance(reply.body, dict) or not isinstance(reply.body.get("results"), list):
            failure = RecordResult.failure(
                "UNKNOWN", f"unexpected answer from HubSpot ({reply.status}): {reply.message[:500]}"
            )
            results[:] = [failure] * len(records)
            return {}
        index = _KeyIndex(keys)
        record_ids: dict[int, str] = {}
        for found in _results(reply):
            properties = (
                found.get("properties") if isinstance(found.get("properties"), dict) else {}
            )
            if found.get("id") is None:
                continue
            for position in index.find(properties.get(key_field)):
                record_ids.setdefault(position, str(found["id"]))
        unattributed: list[dict[str, Any]] = []
        for error in _errors(reply):
            if str(error.get("category")) in ("OBJECT_NOT_FOUND", "NOT_FOUND"):
                continue
            targets = _error_targets(error, {}, index)
            for position in targets:
                if position not in record_ids:
                    results[position] = _failure_from(error)
            if not targets:
                unattributed.append(error)
        if unattributed:
            for position in range(len(records)):
                if position not in record_ids and results[position] is None:
                    results[position] = _failure_from(unattributed[0], also=unattributed[1:])
        return record_ids

    # --- answers to writes -----------------------------------------------------------------

    def _match_results(
        self, reply: _Reply, records: list[Record], key_field: str, *, positional: bool
    ) -> list[RecordResult]:
        """One result per record from a 200/207 answer. Errors name their inputs through
        context.objectWriteTraceId or context.ids; results through objectWriteTraceId when
        HubSpot echoes it, else through the key property value (or the record id when the key is
        hs_object_id). batch/create results carry no link to their input when the key is not
        among the properties, so they are paired with the successful inputs in request order."""
        body = reply.body
        if not isinstance(body, dict) or ("results" not in body and "errors" not in body):
            failure = RecordResult.failure(
                "UNKNOWN", f"unexpected answer from HubSpot ({reply.status}): {reply.message[:500]}"
            )
            return [failure] * len(records)
        traces = {str(index): index for index in range(len(records))}
        keys = _KeyIndex([record.key for record in records])
        errors_for: dict[int, dict[str, Any]] = {}
        unattributed: list[dict[str, Any]] = []
        for error in _errors(reply):
            targets = _error_targets(error, traces, keys)
            for position in targets:
                errors_for.setdefault(position, error)
            if not targets:
                unattributed.append(error)
        result_for: dict[int, dict[str, Any]] = {}
        unlinked: list[dict[str, Any]] = []
        for result in _results(reply):
            position = self._result_position(
                result, traces, keys, key_field, errors_for, result_for
            )
            if position is None:
                unlinked.append(result)
            else:
                result_for[position] = result
        if positional:
            waiting = [
                i for i in range(len(records)) if i not in errors_for and i not in result_for
            ]
            paired = min(len(waiting), len(unlinked))
            for position, result in zip(waiting[:paired], unlinked[:paired], strict=True):
                result_for[position] = result
            unlinked = unlinked[paired:]
        outcomes: list[RecordResult] = []
        spare_results = len(unlinked)
        for position in range(len(records)):
            if position in errors_for:
                outcomes.append(_failure_from(errors_for[position]))
            elif position in result_for:
                record_id = result_for[position].get("id")
                outcomes.append(
                    RecordResult.success(external_id=None if record_id is None else str(record_id))
                )
            elif unattributed:
                outcomes.append(_failure_from(unattributed[0], also=unattributed[1:]))
            elif spare_results > 0:
                # A result came back for it that could not be told apart from the others'
                # (HubSpot normalised the key): written, id unknown.
                spare_results -= 1
                outcomes.append(RecordResult.success())
            else:
                outcomes.append(
                    RecordResult.failure(
                        "UNKNOWN",
                        "HubSpot returned neither a result nor an error for this record "
                        "(it may have been merged into another record)",
                    )
                )
        return outcomes

    @staticmethod
    def _result_position(
        result: dict[str, Any],
        traces: dict[str, int],
        keys: _KeyIndex,
        key_field: str,
        errors_for: dict[int, dict[str, Any]],
        result_for: dict[int, dict[str, Any]],
    ) -> int | None:
        trace = result.get("objectWriteTraceId")
        if trace is not None and str(trace) in traces:
            return traces[str(trace)]
        if key_field == RECORD_ID_PROPERTY:
            candidates = keys.find(result.get("id"))
        else:
            properties = (
                result.get("properties") if isinstance(result.get("properties"), dict) else {}
            )
            candidates = keys.find(properties.get(key_field))
        for position in candidates:
            if position not in errors_for and position not in result_for:
                return position
        return None

    def _whole_batch_rejection(self, reply: _Reply, records: list[Record]) -> list[RecordResult]:
        """HubSpot fails a whole upsert/update batch on one invalid property value (400
        VALIDATION_ERROR, nothing written). Records whose value HubSpot names get
        DESTINATION_VALIDATION; when only some records are to blame the others were merely
        caught in the same batch, so they fail as retryable. A 400 about the request itself
        (batch too large, unknown object type, idProperty not unique) fails the call."""
        message = reply.message
        if reply.category != "VALIDATION_ERROR" or any(
            marker in message.lower() for marker in _REQUEST_LEVEL_MESSAGES
        ):
            raise self._request_error(reply)
        culprits = _culprits(reply, records)
        if not culprits or len(culprits) == len(records):
            return [
                RecordResult.failure("DESTINATION_VALIDATION", culprits.get(index) or message)
                for index in range(len(records))
            ]
        bystander = (
            "not written: HubSpot rejected the whole batch because of another record's value: "
            + message
        )
        return [
            RecordResult.failure("DESTINATION_VALIDATION", culprits[index])
            if index in culprits
            else RecordResult.failure("DESTINATION_VALIDATION", bystander, retryable=True)
            for index in range(len(records))
        ]

    # --- HTTP ------------------------------------------------------------------------------

    def _session_for_requests(self) -> requests.Session:
        with self._session_lock:
            if self._session is None:
                token = self.config.get("accessToken")
                if not token:
                    raise AuthError(
                        "HubSpot destination has no accessToken: set it in the destination's config"
                    )
                session = requests.Session()
                session.headers.update(
                    {
                        "Authorization": f"Bearer {token}",
                        "Accept": "application/json",
                        "Content-Type": "application/json",
                    }
                )
                self._session = session
            return self._session

    @property
    def _timeout(self) -> tuple[float, float]:
        read = float(self.config.get("timeoutSeconds") or READ_TIMEOUT_SECONDS)
        return (min(CONNECT_TIMEOUT_SECONDS, read), read)

    @property
    def _base_url(self) -> str:
        return str(self.config.get("baseUrl") or DEFAULT_BASE_URL).rstrip("/")

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        passthrough: tuple[int, ...] = (),
    ) -> _Reply:
        """One HTTP call. Raises for answers no caller can use (401/403, 429, 423, 477, 5xx,
        network failures) unless `passthrough` names the status; returns every other answer
        for the caller to read."""
        session = self._session_for_requests()
        try:
            response = session.request(
                method,
                self._base_url + path,
                json=json_body,
                params=params,
                timeout=self._timeout,
            )
        except requests.Timeout as exc:
            raise RetryableError(
                f"HubSpot did not answer {method} {path} in time: {exc}", code="TIMEOUT"
            ) from exc
        except requests.ConnectionError as exc:
            raise RetryableError(f"could not reach HubSpot for {method} {path}: {exc}") from exc
        except requests.RequestException as exc:
            raise ConnectorError(f"HubSpot request {method} {path} failed: {exc}") from exc
        self._note_rate_limits(response.headers)
        text = response.text or ""
        try:
            body = response.json() if text.strip() else None
        except ValueError:
            body = None
        reply = _Reply(response.status_code, text, body, response.headers)
        status = reply.status
        if status in passthrough:
            return reply
        if status == 401:
            raise AuthError(
                f"HubSpot rejected the access token (401 {reply.category or 'INVALID_AUTHENTICATION'}): "
                f"{reply.message} — fix the accessToken in the destination's config"
            )
        if status == 403:
            raise AuthError(
                f"HubSpot refused access (403 {reply.category or 'FORBIDDEN'}): {reply.message} — "
                "grant the token the CRM scopes this object needs"
            )
        if status == 429:
            raise self._rate_limit_error(reply)
        if status == 423:
            raise RetryableError(
                f"HubSpot locked the records (423): {reply.message}",
                retry_after=retry_after_seconds(reply.headers.get("Retry-After")) or LOCKED_RETRY_SECONDS,
            )
        if status == 477 or status >= 500:
            raise RetryableError(
                f"HubSpot is unavailable ({status}): {reply.message[:500]}",
                retry_after=retry_after_seconds(reply.headers.get("Retry-After")),
            )
        return reply

    def _rate_limit_error(self, reply: _Reply) -> RetryableError:
        body = reply.body if isinstance(reply.body, dict) else {}
        policy = str(body.get("policyName") or "")
        retry_after = retry_after_seconds(reply.headers.get("Retry-After"))
        if retry_after is None:
            if policy == "DAILY":
                retry_after = DAILY_LIMIT_RETRY_SECONDS
            else:
                retry_after = _window_seconds(reply.headers)
        policy_text = f" {policy}" if policy else ""
        return RetryableError(
            f"HubSpot rate limit{policy_text} reached (429): {reply.message}",
            retry_after=retry_after,
            code="RATE_LIMIT",
        )

    def _note_rate_limits(self, headers: Any) -> None:
        remaining = _int_header(headers, "X-HubSpot-RateLimit-Remaining")
        if remaining is not None:
            self.rate_limit_remaining = remaining
        daily = _int_header(headers, "X-HubSpot-RateLimit-Daily-Remaining")
        if daily is not None:
            self.daily_limit_remaining = daily

    @staticmethod
    def _request_error(reply: _Reply) -> ConnectorError:
        category = f" {reply.category}" if reply.category else ""
        return ConnectorError(
            f"HubSpot rejected the request ({reply.status}{category}): {reply.message[:1000]}"
        )


# --- request and answer plumbing ---------------------------------------------------------


def _objects_path(object_name: str) -> str:
    return f"/crm/v3/objects/{quote(object_name, safe='')}"


def _results(reply: _Reply) -> list[dict[str, Any]]:
    if not isinstance(reply.body, dict) or not isinstance(reply.body.get("results"), list):
        return []
    return [item for item in reply.body["results"] if isinstance(item, dict)]


def _errors(reply: _Reply) -> list[dict[str, Any]]:
    if not isinstance(reply.body, dict) or not isinstance(reply.body.get("errors"), list):
        return []
    return [
        item if isinstance(item, dict) else {"message": str(item)} for item in reply.body["errors"]
    ]


def _context_values(context: Any, name: str) -> list[str]:
    if not isinstance(context, dict):
        return []
    values = context.get(name)
    if isinstance(values, list):
        return [str(value) for value in values]
    return [] if values is None else [str(values)]


def _error_targets(error: dict[str, Any], traces: dict[str, int], keys: _KeyIndex) -> list[int]:
    """The records a 207 error names: by objectWriteTraceId first, else by the ids it lists."""
    context = error.get("context")
    targets: list[int] = []
    for trace in _context_values(context, "objectWriteTraceId"):
        if trace in traces:
            targets.append(traces[trace])
    if not targets:
        named = _context_values(context, "ids")
        if error.get("id") is not None:
            named.append(str(error["id"]))
        for value in named:
            targets.extend(keys.find(value))
    return list(dict.fromkeys(targets))


def _property_names(error: dict[str, Any]) -> list[str]:
    names = _context_values(error.get("context"), "propertyName")
    names += _context_values(error.get("context"), "properties")
    for detail in error.get("errors") or []:
        if isinstance(detail, dict):
            names += _context_values(detail.get("context"), "propertyName")
            if detail.get("in"):
                names.append(str(detail["in"]))
    return list(dict.fromkeys(names))


def _error_text(error: dict[str, Any]) -> str:
    message = str(error.get("message") or "")
    details = [
        str(detail.get("message"))
        for detail in error.get("errors") or []
        if isinstance(detail, dict)
        and detail.get("message")
        and str(detail.get("message")) not in message
    ]
    text = "; ".join(part for part in [message, *details] if part) or json.dumps(error)[:1000]
    missing = [name for name in _property_names(error) if name not in text]
    if missing:
        text += f" (property: {', '.join(missing)})"
    category = str(error.get("category") or "")
    return f"{category}: {text}" if category else text


def _failure_from(error: dict[str, Any], also: list[dict[str, Any]] | None = None) -> RecordResult:
    category = str(error.get("category") or "")
    message = "; ".join(_error_text(item) for item in [error, *(also or [])])
    if category in ("OBJECT_NOT_FOUND", "NOT_FOUND"):
        return RecordResult.failure("NOT_FOUND", message)
    if category in ("VALIDATION_ERROR", "CONFLICT", "INVALID_PARAMS"):
        return RecordResult.failure("DESTINATION_VALIDATION", message)
    if category in ("RATE_LIMITS", "RATE_LIMIT"):
        return RecordResult.failure("RATE_LIMIT", message, retryable=True)
    return RecordResult.failure("UNKNOWN", message)


def _invalid_values(reply: _Reply) -> list[_Invalid]:
    """The rejected values of a 400 VALIDATION_ERROR: the JSON list HubSpot embeds in its
    message names each property and value; `errors[]` names properties only."""
    message = reply.message
    found: list[_Invalid] = []
    if message.startswith(_PROPERTY_VALUES_PREFIX):
        try:
            entries = json.loads(message[len(_PROPERTY_VALUES_PREFIX) :])
        except ValueError:
            entries = []
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("name"):
                value = entry.get("propertyValue")
                found.append(
                    _Invalid(
                        name=str(entry["name"]),
                        message=str(entry.get("message") or entry.get("error") or message),
                        value=None if value is None else str(value),
                    )
                )
    if not found:
        for detail in _errors(reply):
            for name in _context_values(detail.get("context"), "propertyName"):
                found.append(
                    _Invalid(name=name, message=str(detail.get("message") or message), value=None)
                )
    return found


def _culprits(reply: _Reply, records: list[Record]) -> dict[int, str]:
    """Records a whole-batch rejection names, with the message that concerns each."""
    culprits: dict[int, str] = {}
    duplicates = _DUPLICATE_IDS.search(reply.message)
    if duplicates:
        named = {_fold(part) for part in duplicates.group(1).split(",")}
        for index, record in enumerate(records):
            if _fold(record.key) in named:
                culprits[index] = reply.message
        return culprits
    for invalid in _invalid_values(reply):
        for index, record in enumerate(records):
            if invalid.name not in record.fields:
                continue
            sent = _wire_value(record.fields[invalid.name])
            if invalid.value is None or str(sent) == invalid.value:
                text = f"{invalid.name}: {invalid.message}"
                culprits[index] = f"{culprits[index]}; {text}" if index in culprits else text
    return culprits


def _properties(record: Record) -> dict[str, Any]:
    # HubSpot clears a property given an empty string; JSON null is not a documented value.
    # hs_object_id is HubSpot's own record id: it addresses a record and is never written.
    return {
        name: "" if value is None else _wire_value(value)
        for name, value in record.fields.items()
        if name != RECORD_ID_PROPERTY
    }


def _wire_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return iso_datetime(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
    if isinstance(value, dt.date):
        midnight = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
        return str(int(midnight.timestamp()) * 1000)
    if isinstance(value, int):
        # HubSpot's properties map takes strings; numbers go as their plain decimal text.
        return str(value)
    if isinstance(value, float):
        return _plain_number(decimal.Decimal(repr(value)))
    if isinstance(value, decimal.Decimal):
        return _plain_number(value)
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return value


def _plain_number(number: decimal.Decimal) -> str:
    if not number.is_finite():
        return str(number)
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _int_header(headers: Any, name: str) -> int | None:
    value = headers.get(name) if headers is not None else None
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def _window_seconds(headers: Any) -> float:
    interval = _int_header(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")
    return interval / 1000.0 if interval and interval > 0 else DEFAULT_WINDOW_SECONDS


