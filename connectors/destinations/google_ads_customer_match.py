"""Google Ads destination: Customer Match user lists filled through offline user data jobs of
the Google Ads API (REST).

What the API allows shapes what this connector offers:
- Objects are the customer's CRM-based user lists, found with a GAQL search; a list's resource
  name (`customers/{id}/userLists/{id}`) is its object name. Fields are the UserIdentifier
  parts: hashed email and phone, the address (first and last name hashed, country and postal
  code in clear), mobile id, third-party user id.
- A batch is one job: create it for the list (with the configured consent), add its operations
  (`create` for upsert, `remove` for delete; a job may not mix them) in requests of at most
  OPERATIONS_PER_REQUEST with partial failure on, run it, and follow it to SUCCESS or FAILED.
  Operations Google refused are mapped back to their records by index.
- Following a job never holds a worker long: it is polled with short waits for at most
  `jobWaitSeconds`; a job still running then raises RetryableError with `retry_after`
  (`jobRetrySeconds`). The executor waits and calls again with the same records, and this
  instance recognises them and resumes polling the same job instead of uploading again.
- Values are normalized and hashed in retl (`connectors.pii`) when the planner maps a row, and
  again (a no-op on a hash) before a request.
- Jobs on one list must not run at once, hence one request at a time per destination.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
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

DEFAULT_BASE_URL = "https://googleads.googleapis.com"
DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token"
DEFAULT_API_VERSION = "v21"
# Google allows 100,000 operations (and user identifiers) per AddOfflineUserDataJobOperations
# request, and advises about 10,000 identifiers per call for the best throughput.
OPERATIONS_PER_REQUEST = 10_000
MAX_ERROR_TEXT = 300
TOKEN_MARGIN_S = 60.0
FIRST_POLL_WAIT_S = 0.25
LONGEST_POLL_WAIT_S = 2.0
JOBS_REMEMBERED = 32
ADDRESS_PARTS = ("hashedFirstName", "hashedLastName", "countryCode", "postalCode")
CONSENT_VALUES = ("GRANTED", "DENIED", "UNSPECIFIED")
IDENTIFIER_FIELDS = frozenset({"hashedEmail", "hashedPhoneNumber", "mobileId", "thirdPartyUserId"})
USER_LIST_NAME = re.compile(r"customers/(\d+)/userLists/(\d+)")
RETRY_DELAY = re.compile(r"(\d+(?:\.\d+)?)s")
NOT_FOUND_CODES = frozenset({"INVALID_USER_LIST_ID", "RESOURCE_NOT_FOUND", "INVALID_USER_LIST_TYPE"})


@dataclass
class _Job:
    """An uploaded job being followed: its resource name and the operations Google refused
    (operation index -> message)."""

    resource_name: str
    refused: dict[int, str] = field(default_factory=dict)


def _digits(value: Any) -> str:
    return re.sub(r"\D", "", str(value or ""))


class GoogleAdsCustomerMatchDestination(Destination):
    type: ClassVar[str] = "google_ads_customer_match"
    label: ClassVar[str] = "Google Ads Customer Match"
    config_fields: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField("customerId", required=True, description="The Google Ads account (digits)."),
        ConfigField("loginCustomerId", description="The manager account, when access is through one."),
        ConfigField("developerToken", required=True, secret=True, description="API developer token."),
        ConfigField("clientId", required=True, description="OAuth2 client id."),
        ConfigField("clientSecret", required=True, secret=True, description="OAuth2 client secret."),
        ConfigField("refreshToken", required=True, secret=True,
                    description="OAuth2 refresh token with the adwords scope."),
        ConfigField("apiVersion", default=DEFAULT_API_VERSION, description="Google Ads API version."),
        ConfigField("baseUrl", default=DEFAULT_BASE_URL, description="Google Ads API base URL."),
        ConfigField("tokenUrl", default=DEFAULT_TOKEN_URL, description="OAuth2 token endpoint."),
        ConfigField("consentAdUserData", description="GRANTED, DENIED or UNSPECIFIED for the job."),
        ConfigField("consentAdPersonalization",
                    description="GRANTED, DENIED or UNSPECIFIED for the job."),
        ConfigField("jobWaitSeconds", default=10,
                    description="How long one write follows a running job before it retries later."),
        ConfigField("jobRetrySeconds", default=30,
                    description="The wait advised to the executor while a job still runs."),
        ConfigField("timeoutSeconds", default=60, description="Read timeout per request."),
    )
    supported_modes: ClassVar[frozenset[str]] = frozenset({"upsert", "delete", "mirror"})
    batch_size: ClassVar[int] = 10_000
    # Google limits a developer token's queries per second without publishing the number; each
    # write is a handful of calls, and RESOURCE_EXHAUSTED is retried after Google's delay.
    rate_limit: ClassVar[RateLimit] = RateLimit(5, 1.0)
    max_concurrency: ClassVar[int] = 1

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        for name in ("customerId", "developerToken", "clientId", "clientSecret", "refreshToken"):
            if not config.get(name):
                raise ConnectorError(f"config {name} is required")
        self.customer_id = _digits(config["customerId"])
        self.login_customer_id = _digits(config.get("loginCustomerId"))
        self.version = str(config.get("apiVersion") or DEFAULT_API_VERSION).strip("/")
        self.base_url = str(config.get("baseUrl") or DEFAULT_BASE_URL).rstrip("/")
        self.token_url = str(config.get("tokenUrl") or DEFAULT_TOKEN_URL)
        egress.check_http_url(self.base_url, "baseUrl")
        egress.check_http_url(self.token_url, "tokenUrl")
        self.consent: dict[str, str] = {}
        for name, wire in (("consentAdUserData", "adUserData"),
                           ("consentAdPersonalization", "adPersonalization")):
            value = str(config.get(name) or "").upper()
            if value and value not in CONSENT_VALUES:
                raise ConnectorError(f"config {name} must be one of {', '.join(CONSENT_VALUES)}")
            if value:
                self.consent[wire] = value
        self.job_wait_s = max(0.0, float(config.get("jobWaitSeconds", 10)))
        self.job_retry_s = max(0.0, float(config.get("jobRetrySeconds", 30)))
        read_timeout = config_checks.timeout_seconds(config, 60)
        self.timeout = (min(10.0, read_timeout), read_timeout)
        self._session: requests.Session | None = None
        self._token: tuple[str, float] | None = None  # access token, monotonic expiry
        self._token_lock = threading.Lock()
        self._jobs: OrderedDict[str, _Job] = OrderedDict()  # uploads being followed, by digest
        self._jobs_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = egress.http_session()
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- OAuth and HTTP ------------------------------------------------------------------------

    def _access_token(self) -> str:
        with self._token_lock:
            if self._token is not None and self._token[1] > time.monotonic():
                return self._token[0]
            form = {
                "grant_type": "refresh_token", "client_id": str(self.config["clientId"]),
                "client_secret": str(self.config["clientSecret"]),
                "refresh_token": str(self.config["refreshToken"]),
            }
            try:
                response = self.session.post(self.token_url, data=form, timeout=self.timeout)
            except requests.RequestException as exc:
                raise RetryableError(egress.unreachable(self.token_url, exc), code="CONNECTION") from None
            try:
                document = response.json()
            except ValueError:
                document = {}
            if response.status_code == 429 or response.status_code >= 500:
                raise RetryableError(
                    f"Google's token endpoint answered HTTP {response.status_code}",
                    retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                    code="RATE_LIMIT" if response.status_code == 429 else "UNKNOWN",
                )
            token = document.get("access_token") if isinstance(document, dict) else None
            if response.status_code != 200 or not token:
                said = (f"{document.get('error')}: {document.get('error_description')}"
                        if isinstance(document, dict) else excerpt(response.text, MAX_ERROR_TEXT))
                raise AuthError(
                    f"Google refused the OAuth refresh token ({said}); give the destination a "
                    "valid clientId, clientSecret and refreshToken"
                )
            lifetime = float(document.get("expires_in") or 3600)
            self._token = (str(token), time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN_S))
            return self._token[0]

    def _headers(self) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._access_token()}",
            "developer-token": str(self.config["developerToken"]),
            "Content-Type": "application/json",
        }
        if self.login_customer_id:
            headers["login-customer-id"] = self.login_customer_id
        return headers

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `/{version}/{path}`; the JSON answer, or the retl error for Google's.
        An access token Google calls invalid is renewed once."""
        url = f"{self.base_url}/{self.version}/{path}"
        data = json.dumps(body, separators=(",", ":"))
        for attempt in (1, 2):
            try:
                response = self.session.post(url, data=data, headers=self._headers(),
                                             timeout=self.timeout)
            except requests.Timeout as exc:
                raise RetryableError(egress.unreachable(self.base_url, exc), code="TIMEOUT") from None
            except requests.RequestException as exc:
                raise RetryableError(egress.unreachable(self.base_url, exc), code="CONNECTION") from None
            if response.status_code == 401 and attempt == 1:
                with self._token_lock:
                    self._token = None
                continue
            break
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code == 200 and isinstance(document, dict):
            return document
        raise self._error(response, document, path)

    def _error(self, response: requests.Response, document: Any, path: str) -> ConnectorError:
        status = response.status_code
        error = document.get("error") if isinstance(document, dict) else None
        if not isinstance(error, dict):
            error = {"status": "", "message": excerpt(response.text, MAX_ERROR_TEXT)}
        codes, messages, delay = _failure_details(error)
        said = f"{error.get('status') or status}: " + "; ".join(
            [f"{c}: {m}" for c, m in zip(codes, messages, strict=True)] or [str(error.get("message"))]
        )
        if status == 429 or error.get("status") == "RESOURCE_EXHAUSTED":
            advised = retry_after_seconds(response.headers.get("Retry-After"))
            return RetryableError(f"Google Ads quota exhausted ({said})",
                                  retry_after=advised if advised is not None else delay,
                                  code="RATE_LIMIT")
        if status >= 500:
            return RetryableError(f"Google Ads had a passing failure ({said})")
        if status in (401, 403):
            return AuthError(
                f"Google Ads refused the credentials ({said}); check developerToken, the OAuth "
                "client and refresh token, and loginCustomerId when the account is managed"
            )
        if status == 404 or NOT_FOUND_CODES & set(codes):
            return ConnectorError(f"Google Ads cannot find what {path} names ({said})",
                                  code="NOT_FOUND")
        return ConnectorError(f"Google Ads refused {path} ({said})")

    def _search(self, query: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        body: dict[str, Any] = {"query": query}
        while True:
            page = self._call(f"customers/{self.customer_id}/googleAds:search", body)
            rows.extend(page.get("results") or [])
            token = page.get("nextPageToken")
            if not token:
                return rows
            body = {"query": query, "pageToken": token}

    # -- discovery -----------------------------------------------------------------------------

    def test(self) -> None:
        self._search("SELECT customer.id FROM customer LIMIT 1")

    def list_objects(self) -> list[DestinationObject]:
        rows = self._search(
            "SELECT user_list.resource_name, user_list.name, user_list.read_only,"
            " user_list.crm_based_user_list.upload_key_type"
            " FROM user_list WHERE user_list.type = 'CRM_BASED'"
        )
        found = []
        for row in rows:
            user_list = row.get("userList") or {}
            key_type = (user_list.get("crmBasedUserList") or {}).get("uploadKeyType")
            label = str(user_list.get("name") or user_list["resourceName"])
            found.append(DestinationObject(
                str(user_list["resourceName"]),
                f"{label} ({key_type})" if key_type else label,
                writable=not user_list.get("readOnly"),
            ))
        return found

    def list_fields(self, object_name: str) -> list[DestinationField]:
        return pii.identifier_fields(pii.GOOGLE_RULES, IDENTIFIER_FIELDS)

    def format_value(self, value: Any, field: DestinationField) -> Any:
        return pii.format_identifier(pii.GOOGLE_RULES, field.name, value)

    # -- writes --------------------------------------------------------------------------------

    def write_batch(
        self, object_name: str, operation: Operation, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        if operation not in ("upsert", "delete"):
            raise UnsupportedMode(
                f"Customer Match lists take upsert, delete and mirror, not {operation}"
            )
        match = USER_LIST_NAME.fullmatch(object_name)
        if match is None or match.group(1) != self.customer_id:
            raise ConnectorError(
                f"{object_name!r} is not a user list of customer {self.customer_id}"
                " (customers/{customerId}/userLists/{id})", code="NOT_FOUND",
            )
        results: list[RecordResult | None] = [None] * len(records)
        operations: list[dict[str, Any]] = []
        positions: list[int] = []  # record index of each operation
        verb = "create" if operation == "upsert" else "remove"
        for index, record in enumerate(records):
            try:
                user_data = _user_data(record.fields)
            except pii.PiiError as exc:
                results[index] = RecordResult.failure("MAPPING", str(exc))
                continue
            operations.append({verb: user_data})
            positions.append(index)
        if operations:
            job = self._upload(object_name, operations)
            self._follow(job)
            for op_index, record_index in enumerate(positions):
                refused = job.refused.get(op_index)
                if refused is not None:
                    results[record_index] = RecordResult.failure("DESTINATION_VALIDATION", refused)
        return [r if r is not None else RecordResult.success() for r in results]

    def _upload(self, user_list: str, operations: list[dict[str, Any]]) -> _Job:
        """The job holding `operations`: the one already uploaded for them when this is a retry
        of a write whose job was still running, else a new one, created, filled and run."""
        digest = hashlib.sha256(
            json.dumps([user_list, operations], sort_keys=True).encode()
        ).hexdigest()
        with self._jobs_lock:
            job = self._jobs.get(digest)
        if job is not None:
            return job
        metadata: dict[str, Any] = {"userList": user_list}
        if self.consent:
            metadata["consent"] = dict(self.consent)
        created = self._call(
            f"customers/{self.customer_id}/offlineUserDataJobs:create",
            {"job": {"type": "CUSTOMER_MATCH_USER_LIST",
                     "customerMatchUserListMetadata": metadata}},
        )
        job = _Job(str(created["resourceName"]))
        for start in range(0, len(operations), OPERATIONS_PER_REQUEST):
            answer = self._call(f"{job.resource_name}:addOperations", {
                "operations": operations[start:start + OPERATIONS_PER_REQUEST],
                "enablePartialFailure": True,
            })
            for index, message in _refused_operations(answer).items():
                job.refused[start + index] = message
        if len(job.refused) < len(operations):
            self._call(f"{job.resource_name}:run", {})
            with self._jobs_lock:
                self._jobs[digest] = job
                while len(self._jobs) > JOBS_REMEMBERED:
                    self._jobs.popitem(last=False)
        return job

    def _follow(self, job: _Job) -> None:
        """Poll the job until it ends, for `jobWaitSeconds` at most; a job still running then
        is a RetryableError (the retry resumes following it), a failed job a ConnectorError."""
        with self._jobs_lock:
            if not any(known is job for known in self._jobs.values()):
                return  # every operation was refused: nothing was run
        deadline = time.monotonic() + self.job_wait_s
        wait = FIRST_POLL_WAIT_S
        while True:
            status, reason = self._job_status(job.resource_name)
            if status in ("SUCCESS", "FAILED"):
                break
            if time.monotonic() + wait > deadline:
                raise RetryableError(
                    f"offline user data job {job.resource_name} is still {status}",
                    retry_after=self.job_retry_s, code="TIMEOUT",
                )
            time.sleep(wait)
            wait = min(wait * 2, LONGEST_POLL_WAIT_S)
        with self._jobs_lock:
            for digest, known in list(self._jobs.items()):
                if known is job:
                    del self._jobs[digest]
        if status == "FAILED":
            raise ConnectorError(
                f"offline user data job {job.resource_name} failed: {reason or 'no reason given'}"
            )

    def _job_status(self, resource_name: str) -> tuple[str, str | None]:
        rows = self._search(
            "SELECT offline_user_data_job.status, offline_user_data_job.failure_reason"
            " FROM offline_user_data_job"
            f" WHERE offline_user_data_job.resource_name = '{resource_name}'"
        )
        if not rows:
            raise ConnectorError(f"offline user data job {resource_name} is gone", code="NOT_FOUND")
        job = rows[0].get("offlineUserDataJob") or {}
        return str(job.get("status") or "UNKNOWN"), job.get("failureReason")


def _user_data(fields: dict[str, Any]) -> dict[str, Any]:
    """A record's UserData: one UserIdentifier per identifier it has, the address parts
    together in one. Raises PiiError for a value that cannot be normalized or a record
    without identifiers."""
    values = {
        name: pii.normalize(pii.GOOGLE_RULES, name, value)
        for name, value in fields.items() if value is not None
    }
    identifiers: list[dict[str, Any]] = [
        {name: values[name]} for name in ("hashedEmail", "hashedPhoneNumber")
        if name in values
    ]
    address = {part: values[f"addressInfo.{part}"] for part in ADDRESS_PARTS
               if f"addressInfo.{part}" in values}
    if address:
        if len(address) != len(ADDRESS_PARTS):
            raise pii.PiiError(
                "an address needs first name, last name, country code and postal code together"
            )
        identifiers.append({"addressInfo": address})
    identifiers.extend({name: values[name]} for name in ("mobileId", "thirdPartyUserId")
                       if name in values)
    if not identifiers:
        raise pii.PiiError("the record has no identifier")
    return {"userIdentifiers": identifiers}


def _failure_details(error: dict[str, Any]) -> tuple[list[str], list[str], float | None]:
    """(error codes, messages, advised retry delay in seconds) of a Google Ads error status."""
    codes: list[str] = []
    messages: list[str] = []
    delay: float | None = None
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = _seconds(detail.get("retryDelay"), delay)
        for failure in detail.get("errors") or []:
            error_code = failure.get("errorCode") or {}
            codes.append(next(iter(error_code.values()), "UNKNOWN") if error_code else "UNKNOWN")
            messages.append(str(failure.get("message") or ""))
            quota = (failure.get("details") or {}).get("quotaErrorDetails") or {}
            delay = _seconds(quota.get("retryDelay"), delay)
    return codes, messages, delay


def _seconds(text: Any, default: float | None) -> float | None:
    match = RETRY_DELAY.fullmatch(str(text or ""))
    return float(match.group(1)) if match else default


def _refused_operations(answer: dict[str, Any]) -> dict[int, str]:
    """Operation index -> Google's words, from an addOperations answer's partialFailureError."""
    partial = answer.get("partialFailureError")
    if not isinstance(partial, dict):
        return {}
    refused: dict[int, str] = {}
    for detail in partial.get("details") or []:
        for failure in detail.get("errors") or [] if isinstance(detail, dict) else []:
            path = (failure.get("location") or {}).get("fieldPathElements") or []
            index = next((p.get("index") for p in path if p.get("fieldName") == "operations"),
                         None)
            if not isinstance(index, int):
                continue
            error_code = failure.get("errorCode") or {}
            code = next(iter(error_code.values()), "UNKNOWN") if error_code else "UNKNOWN"
            refused.setdefault(index, f"{code}: {failure.get('message') or ''}".strip())
    return refused
