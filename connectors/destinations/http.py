"""Generic HTTP destination: POST (or PUT/PATCH) each batch of records as JSON to a URL.

Wire contract, so that any receiver can be written against it:

- The body is the batch's records, each a JSON object of the mapped fields, in one of three
  formats: `json_array` (a JSON array), `json_object` (`{"<recordsKey>": [...]}`) or `ndjson`
  (one object per line, `Content-Type: application/x-ndjson`). A delete record carries only the
  key field.
- Headers say what to do with the whole batch: `X-Retl-Operation` (upsert, insert, update or
  delete), `X-Retl-Key-Field` (the field that identifies a record) and `Idempotency-Key`
  (sha256 of operation, key field and body), so a receiver can drop a batch retried after a
  timeout it already applied. The key is derived from content, so a later run that sends the
  same content again (after other changes in between) carries the same key: a receiver should
  dedupe within a short window (minutes, the span of retries), not forever.
- A 2xx answer accepts every record, unless `resultsPath` names a list in the answer with one
  result per record, in request order: `{"ok": true}` or `{"ok": false, "error": "why"}`
  (`success` and `message` are accepted as synonyms; an `id` becomes the record's external id).
  A refusal may carry `"code"` (`NOT_FOUND`, `DESTINATION_VALIDATION`, `RATE_LIMIT`, `TIMEOUT`,
  `UNKNOWN`) and `"retryable": true` for a passing reason, which retl then tries again.
- 429, 5xx, connection errors and timeouts are retried later (`Retry-After` is honoured);
  401/403 reject the credentials; any other 4xx refuses every record of the batch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any, ClassVar

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
from connectors.errors import AuthError, ConnectorError, RetryableError
from connectors.http_support import passing_failure
from connectors.json_forms import json_value

FORMATS = ("json_array", "json_object", "ndjson")
METHODS = ("POST", "PUT", "PATCH")
MAX_BATCH_SIZE = 10_000
# Codes a receiver may give a refused record; anything else files it as DESTINATION_VALIDATION.
RECORD_ERROR_CODES = frozenset({"DESTINATION_VALIDATION", "NOT_FOUND", "RATE_LIMIT", "TIMEOUT", "UNKNOWN"})
# Enough of a refusal to explain it without filling the DLQ with a whole HTML error page.
MAX_ERROR_TEXT = 1000
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0

# Names people write in a `fields` declaration, mapped onto the shared data types.
_TYPE_ALIASES = {
    "str": "string",
    "text": "string",
    "varchar": "string",
    "int": "integer",
    "long": "integer",
    "bigint": "integer",
    "float": "number",
    "double": "number",
    "decimal": "number",
    "numeric": "number",
    "bool": "boolean",
    "timestamp": "datetime",
    "timestamptz": "datetime",
    "object": "json",
    "array": "json",
}

# One encoder for every batch: the C encoder does the work, calling json_value only for the
# rare value JSON has no type for.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=json_value)


def _dig(document: Any, dotted_path: str) -> Any:
    """The value at `a.b.0.c` in a parsed JSON document, or None when the path is absent."""
    current = document
    for part in dotted_path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            current = current[index] if -len(current) <= index < len(current) else None
        else:
            return None
    return current


class HttpDestination(Destination):
    type: ClassVar[str] = "http"
    label: ClassVar[str] = "HTTP endpoint"
    config_fields: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField("url", required=True, description="Endpoint that receives each batch."),
        ConfigField("method", default="POST", description="POST, PUT or PATCH."),
        ConfigField(
            "headers",
            secret=True,
            default={},
            description="Extra request headers, e.g. Authorization; kept secret.",
        ),
        ConfigField(
            "batchSize",
            default=100,
            description=f"Records per request, at most {MAX_BATCH_SIZE}.",
        ),
        ConfigField(
            "format",
            default="json_array",
            description="json_array, json_object (records under recordsKey) or ndjson.",
        ),
        ConfigField("recordsKey", default="records", description="Key of the list in json_object."),
        ConfigField(
            "resultsPath",
            description="Dotted path in the JSON answer to a list of per-record results, "
            'in request order: {"ok": true} or {"ok": false, "error": "..."}.',
        ),
        ConfigField(
            "fields",
            default=[],
            description='Declared fields for mapping: names, or {"name", "type", "label", '
            '"required", "externalId"} objects.',
        ),
        ConfigField("objectName", default="records", description="Name of the one object."),
        ConfigField("timeoutSeconds", default=DEFAULT_READ_TIMEOUT, description="Read timeout."),
    )
    supported_modes: ClassVar[frozenset[str]] = frozenset(
        {"upsert", "insert", "update", "delete", "mirror"}
    )
    batch_size: ClassVar[int] = 100
    rate_limit: ClassVar[RateLimit] = RateLimit(1000, 1.0)
    max_concurrency: ClassVar[int] = 8
    json_form: ClassVar[Callable[[Any], Any] | None] = staticmethod(json_value)

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.url = str(config.get("url") or "").strip()
        if not self.url.startswith(("http://", "https://")):
            raise ConnectorError("config url must be an http:// or https:// URL")
        self.method = str(config.get("method") or "POST").upper()
        if self.method not in METHODS:
            raise ConnectorError(f"config method must be one of {', '.join(METHODS)}")
        self.format = str(config.get("format") or "json_array")
        if self.format not in FORMATS:
            raise ConnectorError(f"config format must be one of {', '.join(FORMATS)}")
        self.records_key = str(config.get("recordsKey") or "records")
        self.results_path = str(config.get("resultsPath") or "").strip() or None
        self.object_name = str(config.get("objectName") or "records")
        headers = config.get("headers") or {}
        if not isinstance(headers, dict):
            raise ConnectorError("config headers must be an object of header names to values")
        self.extra_headers = {str(name): str(value) for name, value in headers.items()}
        read_timeout = float(config.get("timeoutSeconds") or DEFAULT_READ_TIMEOUT)
        self.timeout = (min(DEFAULT_CONNECT_TIMEOUT, read_timeout), read_timeout)
        self.content_type = (
            "application/x-ndjson" if self.format == "ndjson" else "application/json"
        )
        self._session: requests.Session | None = None

    # -- session -------------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            session.headers.update(self.extra_headers)
            self._session = session
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- discovery -----------------------------------------------------------------------------

    def test(self) -> None:
        # OPTIONS changes nothing on any sane receiver; any answer proves the URL is reachable.
        try:
            response = self.session.options(self.url, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise ConnectorError(f"cannot reach {self.url}: {exc}") from None
        if response.status_code in (401, 403):
            raise AuthError(
                f"{self.url} refused the credentials (HTTP {response.status_code}): "
                "fix the headers in the destination's config"
            )

    def list_objects(self) -> list[DestinationObject]:
        return [DestinationObject(api_name=self.object_name, label=self.object_name)]

    def list_fields(self, object_name: str) -> list[DestinationField]:
        if object_name != self.object_name:
            raise ConnectorError(
                f"unknown object {object_name!r}: this endpoint has {self.object_name!r}"
            )
        declared = self.config.get("fields") or []
        if not isinstance(declared, list):
            raise ConnectorError("config fields must be a list")
        return [self._declared_field(entry) for entry in declared]

    @staticmethod
    def _declared_field(entry: Any) -> DestinationField:
        if isinstance(entry, str):
            return DestinationField(name=entry, label=entry)
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ConnectorError(f"config fields entry {entry!r} needs a name")
        name = str(entry["name"])
        raw_type = str(entry.get("type") or entry.get("data_type") or "string").lower()
        data_type = _TYPE_ALIASES.get(raw_type, raw_type)
        if data_type not in DATA_TYPES:
            raise ConnectorError(
                f"config field {name!r} has type {raw_type!r}; use one of {', '.join(DATA_TYPES)}"
            )
        return DestinationField(
            name=name,
            label=str(entry.get("label") or name),
            data_type=data_type,
            required=bool(entry.get("required", False)),
            external_id=bool(entry.get("externalId", entry.get("external_id", False))),
        )

    # -- writes --------------------------------------------------------------------------------

    def batch_size_for(self, operation: Operation, total_records: int) -> int:
        configured = int(self.config.get("batchSize") or self.batch_size)
        return max(1, min(configured, MAX_BATCH_SIZE))

    def format_value(self, value: Any, field: DestinationField) -> Any:
        if isinstance(value, dt.datetime):
            return value.isoformat().replace("+00:00", "Z")
        if isinstance(value, dt.date):
            return value.isoformat()
        return value

    def encode_body(self, operation: Operation, key_field: str, records: list[Record]) -> bytes:
        """The request body for `records`; the one place records are serialised."""
        if operation == "delete":
            objects = [record.fields or {key_field: record.key} for record in records]
        else:
            objects = [record.fields for record in records]
        if self.format == "json_array":
            text = _ENCODER.encode(objects)
        elif self.format == "json_object":
            text = _ENCODER.encode({self.records_key: objects})
        else:
            text = "\n".join(map(_ENCODER.encode, objects)) + "\n"
        return text.encode()

    def write_batch(
        self, object_name: str, operation: Operation, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        if not records:
            return []
        body = self.encode_body(operation, key_field, records)
        digest = hashlib.sha256(f"{operation}\n{key_field}\n".encode())
        digest.update(body)
        headers = {
            "Content-Type": self.content_type,
            "X-Retl-Operation": operation,
            "Idempotency-Key": digest.hexdigest(),
        }
        if key_field:  # an insert-only sync may have no key mapping
            headers["X-Retl-Key-Field"] = key_field
        try:
            response = self.session.request(
                self.method,
                self.url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise RetryableError(f"{self.url} timed out: {exc}", code="TIMEOUT") from None
        except requests.RequestException as exc:
            raise RetryableError(f"cannot reach {self.url}: {exc}") from None
        return self._results(response, len(records))

    def _results(self, response: requests.Response, count: int) -> list[RecordResult]:
        status = response.status_code
        if 200 <= status < 300:
            if self.results_path is None:
                return [RecordResult.success()] * count
            return self._per_record_results(response, count)
        text = response.text[:MAX_ERROR_TEXT]
        passing = passing_failure(status, response.headers, f"{self.url} answered HTTP {status}: {text}")
        if passing is not None:
            raise passing
        if status in (401, 403):
            raise AuthError(
                f"{self.url} refused the credentials (HTTP {status}): {text}; "
                "fix the headers in the destination's config"
            )
        if 400 <= status < 500:
            # The receiver refused the data itself: every record of the batch is rejected.
            failure = RecordResult.failure("DESTINATION_VALIDATION", f"HTTP {status}: {text}")
            return [failure] * count
        location = response.headers.get("Location", "")
        raise ConnectorError(
            f"{self.url} answered HTTP {status} {location}: configure the final URL. {text}"
        )

    def _per_record_results(self, response: requests.Response, count: int) -> list[RecordResult]:
        assert self.results_path is not None
        try:
            results = _dig(response.json(), self.results_path)
        except ValueError:
            results = None
        if not isinstance(results, list):
            # The receiver did not say what became of each record: none counts as delivered.
            message = (
                f"answer has no list at {self.results_path!r}: {response.text[:MAX_ERROR_TEXT]}"
            )
            return [RecordResult.failure("UNKNOWN", message)] * count
        out = [self._record_result(item) for item in results[:count]]
        if len(out) < count:
            missing = RecordResult.failure(
                "UNKNOWN", f"answer listed {len(results)} results for {count} records"
            )
            out.extend([missing] * (count - len(out)))
        return out

    @staticmethod
    def _record_result(item: Any) -> RecordResult:
        if not isinstance(item, dict):
            return RecordResult.failure(
                "UNKNOWN", f"unexpected result {str(item)[:MAX_ERROR_TEXT]}"
            )
        ok = item.get("ok", item.get("success"))
        if ok is True:
            external_id = item.get("id")
            return RecordResult.success(None if external_id is None else str(external_id))
        message = item.get("error", item.get("message"))
        if ok is False:
            if message is not None and not isinstance(message, str):
                message = json.dumps(message, default=str)
            code = item.get("code")
            return RecordResult.failure(
                code if isinstance(code, str) and code in RECORD_ERROR_CODES else "DESTINATION_VALIDATION",
                (message or "rejected by the endpoint")[:MAX_ERROR_TEXT],
                retryable=item.get("retryable") is True,
            )
        return RecordResult.failure(
            "UNKNOWN", f"unexpected result {json.dumps(item)[:MAX_ERROR_TEXT]}"
        )
