"""Meta destination: people added to and removed from an ad account's customer file custom
audiences through the Marketing API (`/{audience_id}/users`).

What the API allows shapes what this connector offers:
- Objects are the ad account's customer file audiences (subtype CUSTOM), found live; an
  audience's id is its object name. Fields are Meta's schema keys (EMAIL, PHONE, FN, ...).
- upsert adds people (`POST`), delete removes them (`DELETE` with the same payload), mirror does
  both. Meta takes at most 10,000 rows per request.
- Every value is normalized and hashed in retl (`connectors.pii`) when the planner maps a row,
  and again (a no-op on a hash) before a request, so a batch, a preview and a request only ever
  hold hashes, and EXTERN_ID and MADID in clear as Meta asks.
- Meta names the rows it found invalid in `invalid_entry_samples` (a sample, keyed by the value
  sent): those records fail, the others count as received.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import requests

from connectors import config_checks, egress, pii
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
from connectors.errors import AuthError, ConnectorError, RetryableError, UnsupportedMode
from connectors.http_support import excerpt, retry_after_seconds

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v23.0"
MAX_ROWS_PER_REQUEST = 10_000
MAX_ERROR_TEXT = 300
# Graph API throttling: app (4), user (17), page (32), API-specific (613), custom audience
# (80003) and ads management (80004) rate limits.
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80003, 80004})
# Invalid or expired token (190), session (102); missing permissions (10, 200-299).
AUTH_CODES = frozenset({102, 190, 10, *range(200, 300)})
AUDIENCE_BLOCKED_SUBCODE = 1713230  # audience flagged for integrity reasons (operation_status 471)
OBJECT_MISSING_SUBCODE = 33  # "Object with ID ... does not exist"
FLAGGED_STATUS = 471
IDENTIFIER_KEYS = frozenset({"EMAIL", "PHONE", "MADID", "EXTERN_ID"})


class MetaAudiencesDestination(Destination):
    type: ClassVar[str] = "meta_audiences"
    label: ClassVar[str] = "Meta custom audiences"
    config_fields: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField("accessToken", required=True, secret=True,
                    description="A system user token with ads_management on the ad account."),
        ConfigField("adAccountId", required=True, description="The ad account id (act_ optional)."),
        ConfigField("apiVersion", default=DEFAULT_API_VERSION, description="Graph API version."),
        ConfigField("baseUrl", default=DEFAULT_BASE_URL, description="Graph API base URL."),
        ConfigField("timeoutSeconds", default=60, description="Read timeout per request."),
    )
    supported_modes: ClassVar[frozenset[str]] = frozenset({"upsert", "delete", "mirror"})
    batch_size: ClassVar[int] = MAX_ROWS_PER_REQUEST
    # Meta throttles ad accounts by a usage score, not a published rate: a modest default, and
    # its throttling answers (with the wait it advises) are retried.
    rate_limit: ClassVar[RateLimit] = RateLimit(2, 1.0)
    max_concurrency: ClassVar[int] = 2

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.access_token = str(config.get("accessToken") or "")
        account = str(config.get("adAccountId") or "").strip()
        if not self.access_token:
            raise ConnectorError("config accessToken is required")
        if not account:
            raise ConnectorError("config adAccountId is required")
        self.ad_account = account if account.startswith("act_") else f"act_{account}"
        self.version = str(config.get("apiVersion") or DEFAULT_API_VERSION).strip("/")
        self.base_url = str(config.get("baseUrl") or DEFAULT_BASE_URL).rstrip("/")
        egress.check_http_url(self.base_url, "baseUrl")
        read_timeout = config_checks.timeout_seconds(config, 60)
        self.timeout = (min(10.0, read_timeout), read_timeout)
        self._session: requests.Session | None = None

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            session = egress.http_session()
            session.headers["Authorization"] = f"OAuth {self.access_token}"
            self._session = session
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- HTTP ----------------------------------------------------------------------------------

    def _call(
        self, method: str, path_or_url: str, *, params: dict[str, Any] | None = None,
        form: dict[str, str] | None = None, audience: str | None = None,
    ) -> dict[str, Any]:
        """One Graph API request; its JSON answer, or the retl error for Meta's."""
        url = path_or_url if "://" in path_or_url else f"{self.base_url}/{self.version}{path_or_url}"
        try:
            response = self.session.request(
                method, url, params=params, data=form, timeout=self.timeout
            )
        except requests.Timeout as exc:
            raise RetryableError(egress.unreachable(url, exc), code="TIMEOUT") from None
        except requests.RequestException as exc:
            raise RetryableError(egress.unreachable(url, exc), code="CONNECTION") from None
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code == 200 and isinstance(document, dict) and "error" not in document:
            return document
        raise self._error(response, document, audience)

    def _error(
        self, response: requests.Response, document: Any, audience: str | None
    ) -> ConnectorError:
        error = document.get("error") if isinstance(document, dict) else None
        status = response.status_code
        if not isinstance(error, dict):
            text = f"Meta answered HTTP {status}: {excerpt(response.text, MAX_ERROR_TEXT)}"
            if status == 429 or status >= 500:
                return RetryableError(
                    text, retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                    code="RATE_LIMIT" if status == 429 else "UNKNOWN",
                )
            return ConnectorError(text)
        code, subcode = error.get("code"), error.get("error_subcode")
        said = (
            f"{error.get('message')} (code {code}"
            + (f", subcode {subcode}" if subcode else "")
            + (f", fbtrace_id {error.get('fbtrace_id')}" if error.get("fbtrace_id") else "")
            + ")"
        )
        if code in RATE_LIMIT_CODES:
            return RetryableError(
                f"Meta is throttling this app or ad account: {said}",
                retry_after=self._advised_wait(response), code="RATE_LIMIT",
            )
        if code in AUTH_CODES:
            return AuthError(
                f"Meta rejected the access token: {said}; give the destination a valid token "
                "with ads_management on the ad account"
            )
        if code == 100 and subcode == AUDIENCE_BLOCKED_SUBCODE:
            return ConnectorError(
                f"Meta blocks changes to audience {audience} until its integrity restrictions "
                f"are resolved in Audience Manager: {said}", code="DESTINATION_VALIDATION",
            )
        missing = code == 803 or (code == 100 and subcode == OBJECT_MISSING_SUBCODE)
        if audience is not None and missing:
            return ConnectorError(
                f"audience {audience} was not found in ad account {self.ad_account} or this "
                f"token cannot reach it: {said}", code="NOT_FOUND",
            )
        if error.get("is_transient") or code in (1, 2) or status >= 500:
            return RetryableError(f"Meta had a passing failure: {said}")
        return ConnectorError(f"Meta refused the request: {said}")

    @staticmethod
    def _advised_wait(response: requests.Response) -> float | None:
        """Retry-After, else the longest `estimated_time_to_regain_access` (minutes) of the
        business use case usage header Meta sends with throttling errors."""
        advised = retry_after_seconds(response.headers.get("Retry-After"))
        if advised is not None:
            return advised
        try:
            usage = json.loads(response.headers.get("X-Business-Use-Case-Usage") or "{}")
        except ValueError:
            return None
        minutes = [
            entry.get("estimated_time_to_regain_access")
            for entries in (usage.values() if isinstance(usage, dict) else [])
            for entry in (entries if isinstance(entries, list) else [])
            if isinstance(entry, dict)
        ]
        numbers = [m for m in minutes if isinstance(m, int | float)]
        return 60.0 * max(numbers) if numbers else None

    # -- discovery -----------------------------------------------------------------------------

    def test(self) -> None:
        self._call("GET", f"/{self.ad_account}/customaudiences",
                   params={"fields": "id", "limit": 1})

    def list_objects(self) -> list[DestinationObject]:
        params: dict[str, Any] | None = {
            "fields": "id,name,subtype,operation_status", "limit": 200,
        }
        url = f"/{self.ad_account}/customaudiences"
        found: list[DestinationObject] = []
        while url:
            page = self._call("GET", url, params=params)
            for audience in page.get("data") or []:
                if audience.get("subtype") != "CUSTOM":
                    continue  # lookalikes, website and engagement audiences take no files
                status = audience.get("operation_status") or {}
                flagged = status.get("code") == FLAGGED_STATUS
                label = str(audience.get("name") or audience["id"])
                found.append(DestinationObject(
                    str(audience["id"]),
                    f"{label} (flagged: resolve it in Audience Manager)" if flagged else label,
                    writable=not flagged,
                ))
            url = (page.get("paging") or {}).get("next") or ""
            params = None  # the next link carries them
        return found

    def list_fields(self, object_name: str) -> list[DestinationField]:
        return pii.identifier_fields(pii.META_RULES, IDENTIFIER_KEYS)

    def format_value(self, value: Any, field: DestinationField) -> Any:
        return pii.format_identifier(pii.META_RULES, field.name, value)

    # -- writes --------------------------------------------------------------------------------

    def write_batch(
        self, object_name: str, operation: Operation, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        if operation not in ("upsert", "delete"):
            raise UnsupportedMode(f"Meta audiences take upsert, delete and mirror, not {operation}")
        results: list[RecordResult | None] = [None] * len(records)
        rows: list[tuple[int, dict[str, str]]] = []
        for index, record in enumerate(records):
            try:
                values = {
                    name: pii.normalize(pii.META_RULES, name, value)
                    for name, value in record.fields.items() if value is not None
                }
            except pii.PiiError as exc:
                results[index] = RecordResult.failure("MAPPING", str(exc))
                continue
            if not values:
                results[index] = RecordResult.failure("MAPPING", "the record has no identifier")
                continue
            rows.append((index, values))
        method = "POST" if operation == "upsert" else "DELETE"
        for start in range(0, len(rows), MAX_ROWS_PER_REQUEST):
            chunk = rows[start:start + MAX_ROWS_PER_REQUEST]
            for index, result in self._send(object_name, method, chunk):
                results[index] = result
        return [r if r is not None else RecordResult.success() for r in results]

    def _send(
        self, audience: str, method: str, rows: list[tuple[int, dict[str, str]]]
    ) -> list[tuple[int, RecordResult]]:
        present = {name for _, values in rows for name in values}
        schema = [key for key in pii.META_RULES if key in present]
        data = [[values.get(key, "") for key in schema] for _, values in rows]
        payload = json.dumps({"schema": schema, "data": data}, separators=(",", ":"))
        answer = self._call(method, f"/{audience}/users", form={"payload": payload},
                            audience=audience)
        samples = answer.get("invalid_entry_samples") or {}
        if isinstance(samples, list):  # seen in the wild as a bare list of values
            samples = {str(value): "invalid entry" for value in samples}
        outcome = []
        for (index, _), sent in zip(rows, data, strict=True):
            reasons = [str(samples[v]) for v in sent if v and v in samples]
            if reasons:
                outcome.append((index, RecordResult.failure(
                    "DESTINATION_VALIDATION",
                    f"Meta counted this row among the invalid entries: {reasons[0]}",
                )))
            else:
                outcome.append((index, RecordResult.success()))
        return outcome
