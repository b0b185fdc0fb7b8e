"""A fake Google Ads API (REST) with its OAuth token endpoint, holding one customer's CRM-based
user lists, for Customer Match tests.

It speaks Google's wire format: `POST /token` (refresh-token grant; errors as
`{"error", "error_description"}`), versioned paths (`/v21/customers/...`), the `Authorization:
Bearer`, `developer-token` and `login-customer-id` headers, `googleAds:search` (GAQL over
`user_list` and `offline_user_data_job`, a few queries' worth), `offlineUserDataJobs:create`,
`:addOperations` with `enablePartialFailure`, `:run` answering a long-running operation, and
errors as `{"error": {"code", "message", "status", "details": [GoogleAdsFailure]}}`.

It validates as Google does: an unknown access token → 401 OAUTH_TOKEN_INVALID; a wrong
developer token → 401 DEVELOPER_TOKEN_INVALID; a manager-only list without login-customer-id →
403 USER_PERMISSION_DENIED; more than 100,000 operations → 400; a job mixing creates and
removes, a hashed value that is not SHA-256 hex (a raw email, say), an incomplete address, an
identifier of another upload key type → that operation refused in `partialFailureError` (or
the whole request without partial failure). A run job goes PENDING → RUNNING → SUCCESS (or
FAILED when scripted) as its status is read, and applies its operations when it succeeds."""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.base import FakeServer, Request, Response

MAX_OPERATIONS = 100_000
SHA256 = re.compile(r"[0-9a-f]{64}")
FAILURE_TYPE = "type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure"
VERSIONED = re.compile(r"/(v\d+)/(.*)")
CONTACT_INFO_KEYS = frozenset({"hashedEmail", "hashedPhoneNumber", "addressInfo"})
KEY_TYPES = {"CONTACT_INFO": CONTACT_INFO_KEYS, "CRM_ID": frozenset({"thirdPartyUserId"}),
             "MOBILE_ADVERTISING_ID": frozenset({"mobileId"})}


def ads_error(
    http: int, status: str, family: str, code: str, message: str,
    index: int | None = None, details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Google Ads error status holding one GoogleAdsError."""
    error: dict[str, Any] = {"errorCode": {family: code}, "message": message}
    if index is not None:
        error["location"] = {"fieldPathElements": [{"fieldName": "operations", "index": index}]}
    if details:
        error["details"] = details
    return {"error": {"code": http, "message": message, "status": status, "details": [
        {"@type": FAILURE_TYPE, "errors": [error], "requestId": "fake-request"}]}}


def quota_exhausted(retry_seconds: int = 1) -> dict[str, Any]:
    return ads_error(429, "RESOURCE_EXHAUSTED", "quotaError", "RESOURCE_EXHAUSTED",
                     "Too many requests. Retry in the advised time.",
                     details={"quotaErrorDetails": {"rateScope": "DEVELOPER",
                                                    "retryDelay": f"{retry_seconds}s"}})


@dataclass
class UserList:
    resource_name: str
    name: str
    upload_key_type: str = "CONTACT_INFO"
    read_only: bool = False
    needs_manager: bool = False
    # Members as the identifiers they were added with, e.g. {"hashedEmail": "..."}.
    members: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, operations: list[dict[str, Any]]) -> None:
        """Add (create) or drop (remove) the people of `operations`; a person is one member
        whichever of its identifiers matches."""
        index = {pair: i for i, m in enumerate(self.members) for pair in _pairs(m)}
        kept: dict[int, dict[str, Any]] = dict(enumerate(self.members))
        positions = itertools.count(len(self.members))
        for operation in operations:
            identifiers = (operation.get("create") or operation.get("remove"))["userIdentifiers"]
            member = {k: v for identifier in identifiers for k, v in identifier.items()}
            for pair in _pairs(member):
                found = index.pop(pair, None)
                if found is not None:
                    kept.pop(found, None)
            if "create" in operation:
                position = next(positions)
                kept[position] = member
                index.update(dict.fromkeys(_pairs(member), position))
        self.members = list(kept.values())


@dataclass
class Job:
    resource_name: str
    user_list: str
    consent: dict[str, str] | None
    operations: list[dict[str, Any]] = field(default_factory=list)
    status: str = "PENDING"
    polls_left: int = 0
    failure_reason: str | None = None


class FakeGoogleAds(FakeServer):
    """`with FakeGoogleAds(customer_id="1234567890") as google:`; point baseUrl and tokenUrl
    (`google.token_url`) at it.

    `job_polls` is how many status reads a run job answers RUNNING before it ends;
    `fail_jobs_with` makes every run job end FAILED with that reason."""

    def __init__(
        self, customer_id: str = "1234567890", developer_token: str = "dev-token",
        client_id: str = "client-id", client_secret: str = "client-secret",
        refresh_token: str = "refresh-token", manager_id: str = "9999999999",
        job_polls: int = 1, token_lifetime: int = 3599,
    ) -> None:
        super().__init__()
        self.customer_id = customer_id
        self.developer_token = developer_token
        self.client = (client_id, client_secret)
        self.refresh_token = refresh_token
        self.manager_id = manager_id
        self.job_polls = job_polls
        self.token_lifetime = token_lifetime
        self.fail_jobs_with: str | None = None
        self.user_lists: dict[str, UserList] = {}
        self.jobs: dict[str, Job] = {}
        self.tokens_issued: list[str] = []
        self._valid_tokens: set[str] = set()
        self._ids = itertools.count(1)
        self._state = threading.Lock()

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    # -- helpers for tests ---------------------------------------------------------------------

    def add_user_list(self, list_id: str, name: str, **options: Any) -> UserList:
        resource = f"customers/{self.customer_id}/userLists/{list_id}"
        user_list = UserList(resource, name, **options)
        self.user_lists[resource] = user_list
        return user_list

    def members(self, resource_name: str, key: str) -> set[str]:
        return {m[key] for m in self.user_lists[resource_name].members if key in m}

    def revoke_tokens(self) -> None:
        """Every access token issued so far stops working (as when one expires)."""
        with self._state:
            self._valid_tokens.clear()

    # -- protocol ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.method == "POST" and request.path == "/token":
            return self._token(request)
        versioned = VERSIONED.fullmatch(request.path)
        if versioned is None or request.method != "POST":
            return Response(404, {"error": {"code": 404, "status": "NOT_FOUND",
                                            "message": f"no route {request.path}"}})
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        path = versioned.group(2)
        try:
            body = request.json() or {}
        except ValueError:
            return Response(400, ads_error(400, "INVALID_ARGUMENT", "requestError",
                                           "INVALID_INPUT", "Invalid JSON payload received."))
        prefix = f"customers/{self.customer_id}/"
        if path == f"{prefix}googleAds:search":
            return self._search(request, str(body.get("query") or ""))
        if path == f"{prefix}offlineUserDataJobs:create":
            return self._create_job(request, body)
        if path.startswith(f"{prefix}offlineUserDataJobs/"):
            resource, _, verb = path.partition(":")
            job = self.jobs.get(resource)
            if job is None:
                return Response(404, ads_error(404, "NOT_FOUND", "mutateError",
                                               "RESOURCE_NOT_FOUND", f"{resource} not found"))
            if verb == "addOperations":
                return self._add_operations(job, body)
            if verb == "run":
                return self._run(job)
        return Response(404, {"error": {"code": 404, "status": "NOT_FOUND",
                                        "message": f"no route {request.path}"}})

    def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        if (form.get("client_id"), form.get("client_secret")) != self.client:
            return Response(401, {"error": "invalid_client",
                                  "error_description": "The OAuth client was not found."})
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != (
            self.refresh_token
        ):
            return Response(400, {"error": "invalid_grant",
                                  "error_description": "Token has been expired or revoked."})
        with self._state:
            token = f"ya29.fake-{next(self._ids)}"
            self._valid_tokens.add(token)
            self.tokens_issued.append(token)
        return Response(200, {"access_token": token, "expires_in": self.token_lifetime,
                              "scope": "https://www.googleapis.com/auth/adwords",
                              "token_type": "Bearer"})

    def _authenticate(self, request: Request) -> Response | None:
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme != "Bearer" or token not in self._valid_tokens:
            return Response(401, ads_error(
                401, "UNAUTHENTICATED", "authenticationError", "OAUTH_TOKEN_INVALID",
                "Request had invalid authentication credentials. Expected OAuth 2 access"
                " token, login cookie or other valid authentication credential."))
        if request.headers.get("developer-token") != self.developer_token:
            return Response(401, ads_error(
                401, "UNAUTHENTICATED", "authenticationError", "DEVELOPER_TOKEN_INVALID",
                "The developer token is not valid."))
        login = request.headers.get("login-customer-id")
        if login is not None and login not in (self.customer_id, self.manager_id):
            return Response(403, ads_error(
                403, "PERMISSION_DENIED", "authorizationError", "USER_PERMISSION_DENIED",
                "User doesn't have permission to access customer. Note: If you're accessing a"
                " client customer, the manager's customer id must be set in the"
                " 'login-customer-id' header."))
        return None

    def _via_manager(self, request: Request) -> bool:
        return request.headers.get("login-customer-id") == self.manager_id

    def _search(self, request: Request, query: str) -> Response:
        if "FROM user_list" in query:
            rows = []
            for user_list in self.user_lists.values():
                if user_list.needs_manager and not self._via_manager(request):
                    continue  # reached through the manager only
                rows.append({"userList": {
                    "resourceName": user_list.resource_name, "name": user_list.name,
                    "readOnly": user_list.read_only, "type": "CRM_BASED",
                    "crmBasedUserList": {"uploadKeyType": user_list.upload_key_type},
                }})
            return Response(200, {"results": rows, "fieldMask": "userList.resourceName"})
        if "FROM customer" in query:
            return Response(200, {"results": [{"customer": {
                "resourceName": f"customers/{self.customer_id}", "id": self.customer_id}}]})
        found = re.search(r"offline_user_data_job\.resource_name = '([^']+)'", query)
        if "FROM offline_user_data_job" in query and found:
            job = self.jobs.get(found.group(1))
            if job is None:
                return Response(200, {"results": []})
            with self._state:
                self._advance(job)
                row: dict[str, Any] = {"resourceName": job.resource_name, "status": job.status}
                if job.failure_reason:
                    row["failureReason"] = job.failure_reason
            return Response(200, {"results": [{"offlineUserDataJob": row}]})
        return Response(400, ads_error(400, "INVALID_ARGUMENT", "queryError",
                                       "PROHIBITED_RESOURCE_TYPE_IN_SELECT_CLAUSE",
                                       f"The fake does not answer this query: {query}"))

    def _create_job(self, request: Request, body: dict[str, Any]) -> Response:
        job_body = body.get("job") or {}
        metadata = job_body.get("customerMatchUserListMetadata") or {}
        user_list = self.user_lists.get(str(metadata.get("userList")))
        if job_body.get("type") != "CUSTOMER_MATCH_USER_LIST" or user_list is None or (
            user_list.needs_manager and not self._via_manager(request)
        ):
            return Response(400, ads_error(400, "INVALID_ARGUMENT", "offlineUserDataJobError",
                                           "INVALID_USER_LIST_ID",
                                           "The user list ID provided for the job is invalid."))
        with self._state:
            resource = f"customers/{self.customer_id}/offlineUserDataJobs/{next(self._ids)}"
            self.jobs[resource] = Job(resource, user_list.resource_name, metadata.get("consent"))
        return Response(200, {"resourceName": resource})

    def _add_operations(self, job: Job, body: dict[str, Any]) -> Response:
        operations = body.get("operations")
        if not isinstance(operations, list) or not operations:
            return Response(400, ads_error(400, "INVALID_ARGUMENT", "collectionSizeError",
                                           "TOO_FEW", "operations must not be empty."))
        if len(operations) > MAX_OPERATIONS:
            return Response(400, ads_error(400, "INVALID_ARGUMENT", "collectionSizeError",
                                           "TOO_MANY",
                                           f"At most {MAX_OPERATIONS} operations per request."))
        if job.status != "PENDING":
            return Response(400, ads_error(400, "FAILED_PRECONDITION", "offlineUserDataJobError",
                                           "UNKNOWN",
                                           "Operations can only be added to a PENDING job."))
        user_list = self.user_lists[job.user_list]
        refused: list[dict[str, Any]] = []
        with self._state:
            for index, operation in enumerate(operations):
                problem = _check(operation, job, user_list)
                if problem is None:
                    job.operations.append(operation)
                    continue
                if not body.get("enablePartialFailure"):
                    return Response(400, ads_error(400, "INVALID_ARGUMENT",
                                                   "offlineUserDataJobError", problem[0],
                                                   problem[1], index))
                refused.append({
                    "errorCode": {"offlineUserDataJobError": problem[0]}, "message": problem[1],
                    "location": {"fieldPathElements": [{"fieldName": "operations",
                                                        "index": index}]},
                })
        if not refused:
            return Response(200, {})
        return Response(200, {"partialFailureError": {
            "code": 3, "message": f"{len(refused)} operations failed.",
            "details": [{"@type": FAILURE_TYPE, "errors": refused, "requestId": "fake"}],
        }})

    def _run(self, job: Job) -> Response:
        with self._state:
            if job.status != "PENDING":
                return Response(400, ads_error(400, "FAILED_PRECONDITION",
                                               "offlineUserDataJobError", "UNKNOWN",
                                               "The job has already been run."))
            job.status = "RUNNING"
            job.polls_left = self.job_polls
        operation_id = job.resource_name.rsplit("/", 1)[1]
        return Response(200, {"name": f"customers/{self.customer_id}/operations/{operation_id}",
                              "metadata": {"resourceName": job.resource_name}})

    def _advance(self, job: Job) -> None:
        """A status read moves a running job along; its last read ends it."""
        if job.status != "RUNNING":
            return
        if job.polls_left > 0:
            job.polls_left -= 1
            return
        if self.fail_jobs_with:
            job.status, job.failure_reason = "FAILED", self.fail_jobs_with
            return
        self.user_lists[job.user_list].apply(job.operations)
        job.status = "SUCCESS"


def _pairs(member: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, json.dumps(v, sort_keys=True)) for k, v in member.items()]


def _check(operation: Any, job: Job, user_list: UserList) -> tuple[str, str] | None:
    """(error code, message) for an operation Google refuses, None for one it accepts."""
    if not isinstance(operation, dict) or len(operation) != 1 or not (
        {"create", "remove"} & set(operation)
    ):
        return ("UNKNOWN", "An operation is exactly one of create, remove.")
    verb = next(iter(operation))
    if job.operations and next(iter(job.operations[0])) != verb:
        return ("CONFLICTING_OPERATION",
                "Mixing creation and removal of offline data in the same job is not allowed.")
    identifiers = (operation[verb] or {}).get("userIdentifiers")
    if not isinstance(identifiers, list) or not identifiers:
        return ("MISSING_USER_IDENTIFIER", "User identifiers are required.")
    allowed = KEY_TYPES[user_list.upload_key_type]
    for identifier in identifiers:
        (name, value), = identifier.items()
        if name not in allowed:
            return ("INCOMPATIBLE_UPLOAD_KEY_TYPE",
                    "Upload data is not compatible with the upload key type of the list.")
        if name in ("hashedEmail", "hashedPhoneNumber") and not SHA256.fullmatch(str(value)):
            return ("INVALID_SHA256_FORMAT", "The SHA256 encoded value is malformed.")
        if name == "addressInfo":
            parts = ("hashedFirstName", "hashedLastName", "countryCode", "postalCode")
            if set(value) != set(parts):
                return ("MISSING_USER_IDENTIFIER",
                        "An address needs first and last name, country and postal code.")
            if not all(SHA256.fullmatch(str(value[p])) for p in parts[:2]):
                return ("INVALID_SHA256_FORMAT", "The SHA256 encoded value is malformed.")
            if not re.fullmatch(r"[A-Z]{2}", str(value["countryCode"])):
                return ("INVALID_COUNTRY_CODE", "The country code is invalid.")
    return None
