"""Salesforce destination: sObject Collections for batches of up to 200 records, Bulk API 2.0
ingest jobs for large runs, describe calls for discovery and OAuth refresh-token sign-in.

Salesforce facts this module is built on:

- Every call is `{instanceUrl}/services/data/{apiVersion}/…` with `Authorization: Bearer`. An
  expired session answers 401 `INVALID_SESSION_ID`; with refresh credentials configured the
  connector signs in again once (`POST {loginUrl}/services/oauth2/token`) and repeats the call.
- sObject Collections write at most 200 records per request and answer one result per record,
  in request order: `{"id", "success", "errors": [{"statusCode", "message", "fields"}]}`.
  Upsert matches on an external id field; update and delete need record Ids, which the
  connector looks up with SOQL on the key field first.
- Bulk API 2.0 ingest jobs take a CSV upload, process it asynchronously and report
  `successfulResults/` and `failedResults/` as CSV that echo the uploaded columns, which is how
  results are matched back to records (Salesforce does not keep their order).
- Over the org's daily allocation Salesforce answers 403 `REQUEST_LIMIT_EXCEEDED` without a
  `Retry-After`; every answer reports usage in `Sforce-Limit-Info: api-usage=used/limit`.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
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

DEFAULT_LOGIN_URL = "https://login.salesforce.com"
DEFAULT_API_VERSION = "v62.0"
# sObject Collections refuse more than 200 records (or Ids) per request.
COLLECTION_LIMIT = 200
DEFAULT_BULK_THRESHOLD = 10_000
DEFAULT_BULK_BATCH_SIZE = 10_000
MAX_BULK_BATCH_SIZE = 100_000
# Salesforce accepts 150 MB per job upload once base64 encoded; 100 MB of CSV stays under it.
MAX_BULK_UPLOAD_BYTES = 100 * 1024 * 1024
DEFAULT_BULK_POLL_TIMEOUT = 600.0
DEFAULT_BULK_POLL_INTERVAL = 1.0
MAX_BULK_POLL_INTERVAL = 10.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
# The daily allocation is a rolling 24 hours and Salesforce names no moment it frees up; a
# minute lets the executor back off without parking the run for long.
DAILY_LIMIT_RETRY_AFTER = 60.0
# Concurrent long-running request limits clear as soon as other requests finish.
CONCURRENCY_LIMIT_RETRY_AFTER = 5.0
# A SOQL lookup travels in the URL; Salesforce refuses URIs over about 16 KB.
MAX_LOOKUP_LITERAL_CHARS = 12_000
# Enough of a refusal to explain it without filling the DLQ with a whole HTML error page.
MAX_ERROR_TEXT = 1000
# Bulk API 2.0 CSV: this value sets a field to null (an empty cell leaves it unchanged).
BULK_NULL = "#N/A"
BULK_OPERATIONS = frozenset({"upsert", "insert", "update", "delete"})
FINISHED_JOB_STATES = frozenset({"JobComplete", "Failed", "Aborted"})

# Salesforce field types onto the shared data types; anything unlisted travels as text.
_DATA_TYPES = {
    "int": "integer",
    "long": "integer",
    "double": "number",
    "currency": "number",
    "percent": "number",
    "boolean": "boolean",
    "date": "date",
    "datetime": "datetime",
    "address": "json",
    "location": "json",
}

# Per-record status codes that say the record is not there (any more).
_GONE_STATUS_CODES = frozenset({"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY"})
# Per-record status codes that a later attempt of the same record may get past.
_RETRYABLE_STATUS_CODES = frozenset({"UNABLE_TO_LOCK_ROW"})

_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_API_USAGE = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")
# Characters a SOQL string literal must escape, with their escapes.
_SOQL_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}
# SOQL date and datetime literals are written bare.
_SOQL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SOQL_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_BULK_FIELDS_SUFFIX = re.compile(r"^[A-Za-z0-9_.,\s]*$")

# One encoder for every request: `default=str` keeps a stray Decimal from failing a batch.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


@dataclass(frozen=True)
class SalesforceError:
    """One entry of a record's `errors` (or one `sf__Error` cell of a bulk result)."""

    status_code: str
    message: str
    fields: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"{self.status_code}: {self.message}"
        if self.fields:
            text += f" (fields: {', '.join(self.fields)})"
        return text


def soql_literal(value: str) -> str:
    """`value` as a quoted SOQL string literal."""
    return "'" + "".join(_SOQL_ESCAPES.get(char, char) for char in value) + "'"


def _canonical_number(value: Any) -> str | None:
    """One spelling per number (`5`, `5.0` and `5E0` are all `5`), or None when not a number."""
    try:
        number = decimal.Decimal(str(value).strip())
    except (decimal.InvalidOperation, ValueError):
        return None
    if not number.is_finite():
        return None
    return format(number.normalize(), "f")


def _error_entries(response: requests.Response) -> list[SalesforceError]:
    """The `[{"errorCode", "message"}]` body of a refused REST call; [] for anything else."""
    try:
        body = response.json()
    except ValueError:
        return []
    if isinstance(body, dict):
        body = [body]
    if not isinstance(body, list):
        return []
    entries = []
    for item in body:
        if isinstance(item, dict) and (item.get("errorCode") or item.get("message")):
            fields = item.get("fields") if isinstance(item.get("fields"), list) else []
            entries.append(
                SalesforceError(
                    str(item.get("errorCode") or "UNKNOWN"),
                    str(item.get("message") or ""),
                    tuple(str(name) for name in fields),
                )
            )
    return entries


def _record_errors(raw: Any) -> list[SalesforceError]:
    """The `errors` array of one sObject Collections result."""
    if not isinstance(raw, list):
        return []
    errors = []
    for item in raw:
        if isinstance(item, dict):
            fields = item.get("fields") if isinstance(item.get("fields"), list) else []
            errors.append(
                SalesforceError(
                    str(item.get("statusCode") or "UNKNOWN"),
                    str(item.get("message") or ""),
                    tuple(str(name) for name in fields),
                )
            )
        else:
            errors.append(SalesforceError("UNKNOWN", str(item)))
    return errors


def parse_bulk_error(cell: str) -> SalesforceError:
    """An `sf__Error` cell: `STATUS_CODE:message:Field1,Field2 --` (`:--` without fields)."""
    text = cell.strip()
    status_code, separator, rest = text.partition(":")
    if not separator or not re.fullmatch(r"[A-Z][A-Z0-9_]*", status_code):
        return SalesforceError("UNKNOWN", text)
    fields: tuple[str, ...] = ()
    if rest.endswith("--"):
        rest = rest[:-2].rstrip()
        message, colon, suffix = rest.rpartition(":")
        if colon and _BULK_FIELDS_SUFFIX.match(suffix):
            fields = tuple(name.strip() for name in suffix.split(",") if name.strip())
            rest = message
    return SalesforceError(status_code, rest.strip(), fields)


def _failure_from_errors(errors: list[SalesforceError], operation: str, raw: str) -> RecordResult:
    """What a record's errors mean for retl. Deleting a record that is already gone succeeded;
    updating one that is gone is NOT_FOUND."""
    if not errors:
        return RecordResult.failure(
            "UNKNOWN", f"Salesforce reported a failure: {raw}"[:MAX_ERROR_TEXT]
        )
    message = "; ".join(error.describe() for error in errors)[:MAX_ERROR_TEXT]
    codes = {error.status_code for error in errors}
    if operation == "delete" and codes <= _GONE_STATUS_CODES:
        return RecordResult.success()
    # A lookup field pointing at a missing record is also INVALID_CROSS_REFERENCE_KEY, but names
    # that field; the record itself missing names none.
    if operation == "update" and any(
        error.status_code == "ENTITY_IS_DELETED"
        or (error.status_code == "INVALID_CROSS_REFERENCE_KEY" and not error.fields)
        for error in errors
    ):
        return RecordResult.failure("NOT_FOUND", message)
    if "REQUEST_LIMIT_EXCEEDED" in codes:
        return RecordResult.failure("RATE_LIMIT", message, retryable=True)
    if codes & _RETRYABLE_STATUS_CODES:
        return RecordResult.failure("UNKNOWN", message, retryable=True)
    return RecordResult.failure("DESTINATION_VALIDATION", message)


def _collection_result(item: Any, operation: str) -> RecordResult:
    """One entry of an sObject Collections answer as a RecordResult."""
    if not isinstance(item, dict) or not isinstance(item.get("success"), bool):
        return RecordResult.failure(
            "UNKNOWN",
            f"unexpected result from Salesforce: {json.dumps(item, default=str)}"[:MAX_ERROR_TEXT],
        )
    record_id = item.get("id")
    if item["success"]:
        return RecordResult.success(None if record_id is None else str(record_id))
    raw = json.dumps(item, default=str)
    return _failure_from_errors(_record_errors(item.get("errors")), operation, raw)


def _combine(results: list[RecordResult]) -> RecordResult:
    """One record written as several rows (a delete of every record sharing a key): it succeeded
    when every row did."""
    if not results:
        return RecordResult.failure("UNKNOWN", "Salesforce reported no result for this record")
    for result in results:
        if not result.ok:
            return result
    external_id = next((result.external_id for result in results if result.external_id), None)
    return RecordResult.success(external_id)


def _csv_cell(value: Any) -> str:
    if value is None:
        return BULK_NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return iso_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _BulkRow:
    """One CSV row of an ingest job and the record it was made for."""

    record_index: int
    values: dict[str, Any]
    match_value: str = ""


class SalesforceDestination(Destination):
    type: ClassVar[str] = "salesforce"
    label: ClassVar[str] = "Salesforce"
    config_fields: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField(
            "instanceUrl",
            required=True,
            description="The org's URL, e.g. https://acme.my.salesforce.com.",
        ),
        ConfigField(
            "accessToken",
            secret=True,
            description="OAuth access token (session id); or configure the refresh token below.",
        ),
        ConfigField("clientId", description="Connected app consumer key, for token refresh."),
        ConfigField("clientSecret", secret=True, description="Connected app consumer secret."),
        ConfigField("refreshToken", secret=True, description="OAuth refresh token."),
        ConfigField(
            "loginUrl",
            default=DEFAULT_LOGIN_URL,
            description="OAuth server; https://test.salesforce.com for sandboxes.",
        ),
        ConfigField("apiVersion", default=DEFAULT_API_VERSION, description="REST API version."),
        ConfigField(
            "batchSize",
            default=COLLECTION_LIMIT,
            description=f"Records per sObject Collections request, at most {COLLECTION_LIMIT}.",
        ),
        ConfigField(
            "bulkThreshold",
            default=DEFAULT_BULK_THRESHOLD,
            description="Runs with more records than this write through Bulk API 2.0 jobs.",
        ),
        ConfigField(
            "bulkBatchSize",
            default=DEFAULT_BULK_BATCH_SIZE,
            description=f"Records per Bulk API 2.0 job, at most {MAX_BULK_BATCH_SIZE}.",
        ),
        ConfigField(
            "bulkPollTimeoutSeconds",
            default=DEFAULT_BULK_POLL_TIMEOUT,
            description="How long to wait for a bulk job before retrying the batch later.",
        ),
        ConfigField(
            "bulkPollIntervalSeconds",
            default=DEFAULT_BULK_POLL_INTERVAL,
            description="First pause between bulk job status checks; it grows up to 10 s.",
        ),
        ConfigField("timeoutSeconds", default=DEFAULT_READ_TIMEOUT, description="Read timeout."),
    )
    supported_modes: ClassVar[frozenset[str]] = frozenset(
        {"upsert", "insert", "update", "delete", "mirror"}
    )
    batch_size: ClassVar[int] = COLLECTION_LIMIT
    # No per-second window is published (the allocation is per rolling 24 h): a gentle pace.
    rate_limit: ClassVar[RateLimit] = RateLimit(20, 1.0)
    # Salesforce allows about 25 concurrent long-running requests per org; leave room for
    # the org's other integrations.
    max_concurrency: ClassVar[int] = 10

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._instance_url = self._base_url(config.get("instanceUrl"), "instanceUrl")
        self.login_url = self._base_url(config.get("loginUrl") or DEFAULT_LOGIN_URL, "loginUrl")
        version = str(config.get("apiVersion") or DEFAULT_API_VERSION).strip()
        self.api_version = version if version.startswith("v") else f"v{version}"
        if not re.fullmatch(r"v\d+\.\d", self.api_version):
            raise ConnectorError(f"config apiVersion {version!r} is not like {DEFAULT_API_VERSION}")
        self.client_id = str(config.get("clientId") or "").strip()
        self.client_secret = str(config.get("clientSecret") or "").strip()
        self.refresh_token = str(config.get("refreshToken") or "").strip()
        self._access_token: str | None = str(config.get("accessToken") or "").strip() or None
        if self._access_token is None and not self.can_refresh:
            raise ConnectorError(
                "config needs accessToken, or clientId and refreshToken (and clientSecret) "
                "to sign in with OAuth"
            )
        self.collection_batch_size = max(
            1, min(int(config.get("batchSize") or COLLECTION_LIMIT), COLLECTION_LIMIT)
        )
        self.bulk_threshold = int(config.get("bulkThreshold") or DEFAULT_BULK_THRESHOLD)
        self.bulk_batch_size = max(
            1, min(int(config.get("bulkBatchSize") or DEFAULT_BULK_BATCH_SIZE), MAX_BULK_BATCH_SIZE)
        )
        poll_timeout = config.get("bulkPollTimeoutSeconds")
        self.bulk_poll_timeout = float(
            DEFAULT_BULK_POLL_TIMEOUT if poll_timeout is None else poll_timeout
        )
        poll_interval = config.get("bulkPollIntervalSeconds")
        self.bulk_poll_interval = float(
            DEFAULT_BULK_POLL_INTERVAL if poll_interval is None else poll_interval
        )
        read_timeout = float(config.get("timeoutSeconds") or DEFAULT_READ_TIMEOUT)
        self.timeout = (min(DEFAULT_CONNECT_TIMEOUT, read_timeout), read_timeout)
        # The last `Sforce-Limit-Info` usage seen: (calls used, daily allocation).
        self.api_usage: tuple[int, int] | None = None
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._field_types: dict[str, dict[str, str]] = {}

    @staticmethod
    def _base_url(value: Any, name: str) -> str:
        url = str(value or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConnectorError(f"config {name} must be an https:// URL, got {value!r}")
        return url

    @property
    def can_refresh(self) -> bool:
        return bool(self.client_id and self.refresh_token)

    @property
    def instance_url(self) -> str:
        return self._instance_url

    @property
    def _data_path(self) -> str:
        return f"/services/data/{self.api_version}"

    # -- session and sign-in -------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = requests.Session()
        return self._session

    def close(self) -> None:
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    def _token(self) -> str:
        token = self._access_token
        if token is None:
            self._refresh_access_token(stale_token=None)
            token = self._access_token
        assert token is not None
        return token

    def _refresh_access_token(self, stale_token: str | None) -> None:
        """Trade the refresh token for a new access token, once for all threads that saw
        `stale_token` refused."""
        with self._auth_lock:
            if self._access_token is not None and self._access_token != stale_token:
                return  # another thread signed in again meanwhile
            url = f"{self.login_url}/services/oauth2/token"
            form = {
                "grant_type": "refresh_token",
                "client_id": self.client_id,
                "refresh_token": self.refresh_token,
            }
            if self.client_secret:
                form["client_secret"] = self.client_secret
            try:
                response = self.session.post(
                    url, data=form, headers={"Accept": "application/json"}, timeout=self.timeout
                )
            except requests.Timeout as exc:
                raise RetryableError(
                    f"Salesforce sign-in timed out: {exc}", code="TIMEOUT"
                ) from None
            except requests.RequestException as exc:
                raise RetryableError(f"cannot reach {self.login_url}: {exc}") from None
            text = response.text[:MAX_ERROR_TEXT]
            if response.status_code == 429 or response.status_code >= 500:
                raise RetryableError(
                    f"Salesforce sign-in failed (HTTP {response.status_code}): {text}",
                    retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                    code="RATE_LIMIT" if response.status_code == 429 else "UNKNOWN",
                )
            try:
                body = response.json()
            except ValueError:
                body = None
            if response.status_code != 200 or not isinstance(body, dict):
                detail = text
                if isinstance(body, dict) and body.get("error"):
                    detail = f"{body.get('error')}: {body.get('error_description', '')}"
                raise AuthError(
                    f"Salesforce refused the refresh token (HTTP {response.status_code}, {detail}): "
                    "fix clientId, clientSecret and refreshToken in the destination's config"
                )
            access_token = body.get("access_token")
            if not isinstance(access_token, str) or not access_token:
                raise ConnectorError(f"Salesforce sign-in answered without access_token: {text}")
            instance_url = body.get("instance_url")
            if isinstance(instance_url, str) and instance_url.startswith(("http://", "https://")):
                self._instance_url = instance_url.rstrip("/")
            self._access_token = access_token

    # -- requests ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        params: dict[str, str] | None = None,
        accept: str = "application/json",
    ) -> requests.Response:
        """One REST call to the instance; signs in again once when the session expired."""
        body = data
        if json_body is not None:
            body = _ENCODER.encode(json_body).encode()
            content_type = "application/json"
        for attempt in range(2):
            token = self._token()
            headers = {"Authorization": f"Bearer {token}", "Accept": accept}
            if content_type:
                headers["Content-Type"] = content_type
            url = self._instance_url + path
            try:
                response = self.session.request(
                    method,
                    url,
                    data=body,
                    params=params,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.Timeout as exc:
                raise RetryableError(
                    f"Salesforce timed out on {method} {path}: {exc}", code="TIMEOUT"
                ) from None
            except requests.RequestException as exc:
                raise RetryableError(f"cannot reach {self._instance_url}: {exc}") from None
            self._note_api_usage(response)
            if response.status_code == 401 and attempt == 0 and self.can_refresh:
                self._refresh_access_token(stale_token=token)
                continue
            self._raise_for_status(response, method, path)
            return response
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _note_api_usage(self, response: requests.Response) -> None:
        match = _API_USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            self.api_usage = (int(match.group(1)), int(match.group(2)))

    def _raise_for_status(self, response: requests.Response, method: str, path: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        errors = _error_entries(response)
        detail = "; ".join(error.describe() for error in errors) or response.text
        detail = detail[:MAX_ERROR_TEXT]
        where = f"{method} {path.split('?')[0]}"
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        if status == 401:
            raise AuthError(
                f"Salesforce refused the session (HTTP 401, {detail}): fix the destination's "
                "credentials (accessToken, or clientId/clientSecret/refreshToken)"
            )
        codes = {error.status_code for error in errors}
        if status == 403 and "REQUEST_LIMIT_EXCEEDED" in codes:
            concurrent = "concurrent" in detail.lower()
            default_wait = CONCURRENCY_LIMIT_RETRY_AFTER if concurrent else DAILY_LIMIT_RETRY_AFTER
            raise RetryableError(
                f"Salesforce API limit reached on {where}: {detail}",
                retry_after=retry_after if retry_after is not None else default_wait,
                code="RATE_LIMIT",
            )
        if status == 429:
            raise RetryableError(
                f"Salesforce is rate limiting (HTTP 429) on {where}: {detail}",
                retry_after=retry_after,
                code="RATE_LIMIT",
            )
        if status >= 500:
            raise RetryableError(
                f"Salesforce failed (HTTP {status}) on {where}: {detail}", retry_after=retry_after
            )
        if status == 403:
            raise AuthError(
                f"Salesforce refused {where} (HTTP 403, {detail}): give the integration user "
                "the permissions it needs, or fix the destination's credentials"
            )
        raise ConnectorError(f"Salesforce refused {where} (HTTP {status}): {detail}")

    def _json(self, response: requests.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ConnectorError(
                f"Salesforce answered {what} with something other than JSON: "
                f"{response.text[:MAX_ERROR_TEXT]}"
            ) from None

    # -- discovery -----------------------------------------------------------------------------

    def test(self) -> None:
        self._request("GET", f"{self._data_path}/limits")

    def list_objects(self) -> list[DestinationObject]:
        body = self._json(self._request("GET", f"{self._data_path}/sobjects"), "describeGlobal")
        sobjects = body.get("sobjects") if isinstance(body, dict) else None
        if not isinstance(sobjects, list):
            raise ConnectorError(
                f"describeGlobal has no sobjects list: {str(body)[:MAX_ERROR_TEXT]}"
            )
        objects = []
        for item in sobjects:
            if not isinstance(item, dict) or not item.get("name"):
                continue
            createable = bool(item.get("createable"))
            updateable = bool(item.get("updateable"))
            objects.append(
                DestinationObject(
                    api_name=str(item["name"]),
                    label=str(item.get("label") or item["name"]),
                    supports_upsert=createable and updateable,
                    writable=createable or updateable,
                )
            )
        return objects

    def list_fields(self, object_name: str) -> list[DestinationField]:
        self._check_identifier(object_name, "object")
        response = self._request("GET", f"{self._data_path}/sobjects/{quote(object_name)}/describe")
        body = self._json(response, f"the describe of {object_name}")
        raw_fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(raw_fields, list):
            raise ConnectorError(
                f"describe of {object_name} has no fields list: {str(body)[:MAX_ERROR_TEXT]}"
            )
        fields = []
        for item in raw_fields:
            if not isinstance(item, dict) or not item.get("name"):
                continue
            createable = bool(item.get("createable"))
            fields.append(
                DestinationField(
                    name=str(item["name"]),
                    label=str(item.get("label") or item["name"]),
                    data_type=_DATA_TYPES.get(str(item.get("type") or "").lower(), "string"),
                    required=createable
                    and not item.get("nillable", True)
                    and not item.get("defaultedOnCreate", False),
                    updateable=bool(item.get("updateable")),
                    external_id=bool(item.get("externalId")),
                )
            )
        self._field_types[object_name] = {field.name: field.data_type for field in fields}
        return fields

    @staticmethod
    def _check_identifier(name: str, what: str) -> None:
        # Names go into URLs and SOQL; Salesforce API names are letters, digits and underscores.
        if not _IDENTIFIER.match(name or ""):
            raise ConnectorError(f"{name!r} is not a Salesforce {what} API name")

    # -- values --------------------------------------------------------------------------------

    def format_value(self, value: Any, field: DestinationField) -> Any:
        if isinstance(value, dt.datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            return iso_datetime(moment)
        if isinstance(value, dt.date):
            return value.isoformat()
        return value

    def batch_size_for(self, operation: Operation, total_records: int) -> int:
        if operation in BULK_OPERATIONS and total_records > self.bulk_threshold:
            return self.bulk_batch_size
        return self.collection_batch_size

    # -- writes --------------------------------------------------------------------------------

    def write_batch(
        self, object_name: str, operation: Operation, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        if not records:
            return []
        if operation not in BULK_OPERATIONS:
            raise ConnectorError(
                f"Salesforce cannot {operation!r}; use upsert, insert, update or delete"
            )
        self._check_identifier(object_name, "object")
        # An insert without a key mapping has no key field: its keys are content hashes.
        if key_field or operation != "insert":
            self._check_identifier(key_field, "field")
        if operation == "upsert" and key_field == "Id":
            raise ConnectorError(
                "Salesforce upserts match on an external id field, not on Id: choose an "
                "external id field as the key, or sync in update mode"
            )
        if len(records) > COLLECTION_LIMIT:
            return self._write_bulk(object_name, operation, key_field, records)
        return self._write_collection(object_name, operation, key_field, records)

    def _values(self, record: Record, operation: str, key_field: str) -> dict[str, Any]:
        """The field values to send for `record`. Upsert and insert carry the key in its field
        (upsert matches on it); the Id is never a writable field."""
        values = {name: value for name, value in record.fields.items() if name != "Id"}
        carries_key = bool(key_field) and key_field != "Id"
        if operation in ("upsert", "insert") and carries_key and key_field not in values:
            values[key_field] = record.key
        return values

    def _sobject(self, object_name: str, values: dict[str, Any]) -> dict[str, Any]:
        return {"attributes": {"type": object_name}, **values}

    def _write_collection(
        self, object_name: str, operation: str, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        collection_path = f"{self._data_path}/composite/sobjects"
        if operation in ("upsert", "insert"):
            payload = [
                self._sobject(object_name, self._values(record, operation, key_field))
                for record in records
            ]
            if operation == "upsert":
                path = f"{collection_path}/{quote(object_name)}/{quote(key_field)}"
                return self._save_collection("PATCH", path, payload, operation)
            return self._save_collection("POST", collection_path, payload, operation)

        ids_per_record = self._record_ids(object_name, key_field, records)
        results: list[RecordResult | None] = [None] * len(records)
        if operation == "update":
            to_update: list[int] = []
            for index, ids in enumerate(ids_per_record):
                problem = self._lookup_problem(object_name, key_field, records[index], ids)
                if problem is not None:
                    results[index] = problem
                else:
                    to_update.append(index)
            if to_update:
                payload = [
                    self._sobject(
                        object_name,
                        {
                            **self._values(records[index], operation, key_field),
                            "Id": ids_per_record[index][0],
                        },
                    )
                    for index in to_update
                ]
                answers = self._save_collection("PATCH", collection_path, payload, operation)
                for index, answer in zip(to_update, answers, strict=True):
                    results[index] = answer
            return [result or RecordResult.failure("UNKNOWN", "no result") for result in results]

        # delete: every record sharing the key goes; a key with no record is already gone.
        pairs = [
            (index, record_id) for index, ids in enumerate(ids_per_record) for record_id in ids
        ]
        per_record: dict[int, list[RecordResult]] = defaultdict(list)
        for chunk in _chunks(pairs, COLLECTION_LIMIT):
            ids_param = ",".join(record_id for _, record_id in chunk)
            response = self._request(
                "DELETE", collection_path, params={"ids": ids_param, "allOrNone": "false"}
            )
            answers = self._collection_results(response, len(chunk), operation)
            for (index, _), answer in zip(chunk, answers, strict=True):
                per_record[index].append(answer)
        return [
            _combine(per_record.get(index, [RecordResult.success()]))
            for index in range(len(records))
        ]

    def _lookup_problem(
        self, object_name: str, key_field: str, record: Record, ids: list[str]
    ) -> RecordResult | None:
        """Why `record` cannot be updated, when its key matched no record or several."""
        if not ids:
            return RecordResult.failure(
                "NOT_FOUND", f"no {object_name} has {key_field} = {record.key!r}"
            )
        if len(ids) > 1:
            return RecordResult.failure(
                "DESTINATION_VALIDATION",
                f"{len(ids)} {object_name} records have {key_field} = {record.key!r} "
                f"({', '.join(ids[:5])}); an update needs a key that matches one record",
            )
        return None

    def _save_collection(
        self, method: str, path: str, payload: list[dict[str, Any]], operation: str
    ) -> list[RecordResult]:
        response = self._request(method, path, json_body={"allOrNone": False, "records": payload})
        return self._collection_results(response, len(payload), operation)

    def _collection_results(
        self, response: requests.Response, count: int, operation: str
    ) -> list[RecordResult]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, list):
            failure = RecordResult.failure(
                "UNKNOWN", f"unexpected answer from Salesforce: {response.text}"[:MAX_ERROR_TEXT]
            )
            return [failure] * count
        results = [_collection_result(item, operation) for item in body[:count]]
        if len(results) < count:
            missing = RecordResult.failure(
                "UNKNOWN", f"Salesforce answered {len(body)} results for {count} records"
            )
            results.extend([missing] * (count - len(results)))
        return results

    # -- Id lookups ----------------------------------------------------------------------------

    def _record_ids(
        self, object_name: str, key_field: str, records: list[Record]
    ) -> list[list[str]]:
        """The Ids of the Salesforce records each record's key names, in record order."""
        if key_field == "Id":
            return [[record.key] if record.key else [] for record in records]
        data_type = self._key_type(object_name, key_field)
        found = self._lookup_ids(object_name, key_field, data_type, [r.key for r in records])
        return [found(record.key) for record in records]

    def _key_type(self, object_name: str, key_field: str) -> str:
        if object_name not in self._field_types:
            self.list_fields(object_name)
        types = self._field_types[object_name]
        if key_field not in types:
            raise ConnectorError(f"{object_name} has no field {key_field!r} to look records up by")
        return types[key_field]

    def _literal(self, key: str, data_type: str) -> str | None:
        """`key` as a SOQL literal for a field of `data_type`; None when no record can match."""
        if data_type in ("integer", "number"):
            return _canonical_number(key)
        if data_type == "boolean":
            lowered = key.strip().lower()
            return lowered if lowered in ("true", "false") else None
        if data_type == "date":
            return key if _SOQL_DATE.match(key) else None
        if data_type == "datetime":
            return key if _SOQL_DATETIME.match(key) else None
        return soql_literal(key)

    def _normalised(self, value: Any, data_type: str) -> str:
        if data_type in ("integer", "number"):
            return _canonical_number(value) or str(value)
        if data_type == "boolean":
            return str(value).lower()
        return str(value)

    def _lookup_ids(
        self, object_name: str, key_field: str, data_type: str, keys: list[str]
    ) -> Callable[[str], list[str]]:
        """Query the Ids of records whose `key_field` is one of `keys`; answer a function from a
        key to its Ids. SOQL compares text without regard to case, so a key that matches no
        value exactly takes the records that match it case-insensitively."""
        literals: list[str] = []
        seen: set[str] = set()
        for key in keys:
            literal = self._literal(key, data_type)
            if literal is not None and literal not in seen:
                seen.add(literal)
                literals.append(literal)
        exact: dict[str, list[str]] = defaultdict(list)
        folded: dict[str, list[str]] = defaultdict(list)
        for group in self._literal_groups(literals):
            soql = (
                f"SELECT Id, {key_field} FROM {object_name} "
                f"WHERE {key_field} IN ({','.join(group)})"
            )
            for row in self._query(soql):
                record_id, value = row.get("Id"), row.get(key_field)
                if not record_id or value is None:
                    continue
                normalised = self._normalised(value, data_type)
                exact[normalised].append(str(record_id))
                folded[normalised.casefold()].append(str(record_id))

        def ids_for(key: str) -> list[str]:
            normalised = self._normalised(key, data_type)
            return list(exact.get(normalised) or folded.get(normalised.casefold()) or [])

        return ids_for

    @staticmethod
    def _literal_groups(literals: list[str]) -> Iterator[list[str]]:
        """`literals` in groups whose URL-encoded IN lists stay under the URI length limit."""
        group: list[str] = []
        size = 0
        for literal in literals:
            encoded = len(quote(literal, safe="")) + 3
            if group and size + encoded > MAX_LOOKUP_LITERAL_CHARS:
                yield group
                group, size = [], 0
            group.append(literal)
            size += encoded
        if group:
            yield group

    def _query(self, soql: str) -> Iterator[dict[str, Any]]:
        """The records a SOQL query returns, following `nextRecordsUrl` page by page."""
        response = self._request("GET", f"{self._data_path}/query", params={"q": soql})
        while True:
            body = self._json(response, "a query")
            if not isinstance(body, dict) or not isinstance(body.get("records"), list):
                raise ConnectorError(f"unexpected query answer: {str(body)[:MAX_ERROR_TEXT]}")
            for row in body["records"]:
                if isinstance(row, dict):
                    yield row
            next_url = body.get("nextRecordsUrl")
            if body.get("done", True) or not isinstance(next_url, str) or not next_url:
                return
            response = self._request("GET", next_url)

    # -- Bulk API 2.0 --------------------------------------------------------------------------

    def _write_bulk(
        self, object_name: str, operation: str, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        per_record: dict[int, list[RecordResult]] = defaultdict(list)
        rows: list[_BulkRow] = []
        match_column: str | None
        if operation in ("upsert", "insert"):
            match_column = key_field if key_field and key_field != "Id" else None
            for index, record in enumerate(records):
                rows.append(_BulkRow(index, self._values(record, operation, key_field)))
        else:
            match_column = "Id"
            ids_per_record = self._record_ids(object_name, key_field, records)
            for index, ids in enumerate(ids_per_record):
                if operation == "delete":
                    if not ids:
                        per_record[index].append(RecordResult.success())
                    rows.extend(_BulkRow(index, {"Id": record_id}) for record_id in ids)
                    continue
                problem = self._lookup_problem(object_name, key_field, records[index], ids)
                if problem is not None:
                    per_record[index].append(problem)
                else:
                    values = {**self._values(records[index], operation, key_field), "Id": ids[0]}
                    rows.append(_BulkRow(index, values))

        if rows:
            columns = list(dict.fromkeys(name for row in rows for name in row.values))
            external_id_field = key_field if operation == "upsert" else None
            outcomes = self._bulk_ingest(
                object_name, operation, external_id_field, columns, rows, match_column
            )
            for row, outcome in zip(rows, outcomes, strict=True):
                per_record[row.record_index].append(outcome)
        return [_combine(per_record[index]) for index in range(len(records))]

    def _bulk_ingest(
        self,
        object_name: str,
        operation: str,
        external_id_field: str | None,
        columns: list[str],
        rows: list[_BulkRow],
        match_column: str | None,
    ) -> list[RecordResult]:
        """Run one ingest job for `rows` (several when the CSV is too large for one upload) and
        answer one result per row."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            cells = [_csv_cell(row.values[name]) if name in row.values else "" for name in columns]
            row.match_value = (
                cells[columns.index(match_column)]
                if match_column is not None
                else "\x1f".join(cells)
            )
            writer.writerow(cells)
        payload = buffer.getvalue().encode()
        if len(payload) > MAX_BULK_UPLOAD_BYTES and len(rows) > 1:
            middle = len(rows) // 2
            return self._bulk_ingest(
                object_name, operation, external_id_field, columns, rows[:middle], match_column
            ) + self._bulk_ingest(
                object_name, operation, external_id_field, columns, rows[middle:], match_column
            )

        job_id = self._create_job(object_name, operation, external_id_field)
        jobs_path = f"{self._data_path}/jobs/ingest/{quote(job_id)}"
        try:
            self._request("PUT", f"{jobs_path}/batches", data=payload, content_type="text/csv")
            self._request("PATCH", jobs_path, json_body={"state": "UploadComplete"})
        except ConnectorError:
            self._abort_job(jobs_path)
            raise
        info = self._wait_for_job(jobs_path, job_id)

        state = info.get("state")
        job_error = str(info.get("errorMessage") or "")
        processed = info.get("numberRecordsProcessed")
        if state == "Aborted" or (state == "Failed" and not processed):
            raise ConnectorError(
                f"Salesforce bulk job {job_id} {str(state).lower()}: {job_error or 'no reason given'}"[
                    :MAX_ERROR_TEXT
                ]
            )

        waiting: dict[str, deque[int]] = defaultdict(deque)
        for position, row in enumerate(rows):
            waiting[row.match_value].append(position)
        outcomes: list[RecordResult | None] = [None] * len(rows)

        def matched(result_row: dict[str, str]) -> int | None:
            if match_column is not None:
                value = result_row.get(match_column)
            else:
                value = "\x1f".join(result_row.get(name) or "" for name in columns)
            queue = waiting.get(value or "")
            return queue.popleft() if queue else None

        for result_row in self._job_results(jobs_path, "successfulResults"):
            position = matched(result_row)
            if position is not None:
                outcomes[position] = RecordResult.success(result_row.get("sf__Id") or None)
        for result_row in self._job_results(jobs_path, "failedResults"):
            position = matched(result_row)
            if position is not None:
                error = parse_bulk_error(result_row.get("sf__Error") or "")
                outcomes[position] = _failure_from_errors(
                    [error], operation, result_row.get("sf__Error") or ""
                )
        unreported = RecordResult.failure(
            "UNKNOWN",
            f"Salesforce bulk job {job_id} reported no result for this record"
            + (f": {job_error}" if job_error else ""),
        )
        return [outcome or unreported for outcome in outcomes]

    def _create_job(self, object_name: str, operation: str, external_id_field: str | None) -> str:
        spec: dict[str, str] = {
            "object": object_name,
            "operation": operation,
            "contentType": "CSV",
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
        }
        if external_id_field is not None:
            spec["externalIdFieldName"] = external_id_field
        response = self._request("POST", f"{self._data_path}/jobs/ingest", json_body=spec)
        try:
            body = response.json()
        except ValueError:
            body = None
        job_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(job_id, str) or not job_id:
            raise ConnectorError(
                f"Salesforce created a bulk job without an id: {response.text[:MAX_ERROR_TEXT]}"
            )
        return job_id

    def _wait_for_job(self, jobs_path: str, job_id: str) -> dict[str, Any]:
        """Poll the job until it finishes. This is the one wait the connector makes: the
        records are only accepted once Salesforce has processed them."""
        deadline = time.monotonic() + self.bulk_poll_timeout
        interval = self.bulk_poll_interval
        while True:
            info = self._json(self._request("GET", jobs_path), f"bulk job {job_id}")
            if not isinstance(info, dict):
                raise ConnectorError(f"unexpected bulk job answer: {str(info)[:MAX_ERROR_TEXT]}")
            if info.get("state") in FINISHED_JOB_STATES:
                return info
            if time.monotonic() >= deadline:
                self._abort_job(jobs_path)
                raise RetryableError(
                    f"Salesforce bulk job {job_id} was still {info.get('state')} after "
                    f"{self.bulk_poll_timeout:g} s",
                    code="TIMEOUT",
                )
            time.sleep(interval)
            interval = min(interval * 1.5, max(interval, MAX_BULK_POLL_INTERVAL))

    def _abort_job(self, jobs_path: str) -> None:
        """Stop a job this batch gives up on, so a retry does not race it; best effort."""
        try:
            self._request("PATCH", jobs_path, json_body={"state": "Aborted"})
        except ConnectorError:
            pass

    def _job_results(self, jobs_path: str, kind: str) -> Iterator[dict[str, str]]:
        response = self._request("GET", f"{jobs_path}/{kind}/", accept="text/csv")
        text = response.content.decode("utf-8-sig", errors="replace")
        yield from csv.DictReader(io.StringIO(text))
