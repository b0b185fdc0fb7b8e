"""A fake Salesforce org for tests: OAuth refresh, describe discovery, SOQL Id lookups, sObject
Collections writes and Bulk API 2.0 ingest jobs, validating requests as Salesforce does.

What it checks, with Salesforce's own answers:
- `Authorization: Bearer <token>` on every data call, else 401 `INVALID_SESSION_ID`; the token
  can be expired, and `POST /services/oauth2/token` (grant_type=refresh_token) issues new ones.
- The daily allocation: each call counts, `Sforce-Limit-Info: api-usage=used/limit` reports it,
  and past the limit calls answer 403 `REQUEST_LIMIT_EXCEEDED`.
- sObject Collections: at most 200 records (or Ids) per request, else 400 `EXCEEDED_ID_LIMIT`;
  a field the object lacks is 400 `INVALID_FIELD`; a JSON value the field type cannot take is
  400 `JSON_PARSER_ERROR` (the body is parsed before any record is saved). Per record:
  required fields on create (`REQUIRED_FIELD_MISSING`), read-only fields
  (`INVALID_FIELD_FOR_INSERT_UPDATE`), text length (`STRING_TOO_LONG`), email format
  (`INVALID_EMAIL_ADDRESS`), unique external ids (`DUPLICATE_VALUE`), missing or deleted Ids,
  and rejections a test scripts with `reject()`.
- SOQL `SELECT Id, X FROM Obj WHERE X IN (…)`, with string literal escapes, quoted literals for
  text fields only, case-insensitive text matching and `nextRecordsUrl` pages.
- Bulk API 2.0 ingest: create, CSV upload, UploadComplete, polling, and results CSVs with
  `sf__Id`/`sf__Created` and `sf__Error` (`STATUS_CODE:message:Fields --`) before the uploaded
  columns. Text in CSV becomes typed values the way the Bulk API reads it, so a bad value is a
  per-row `INVALID_TYPE_ON_FIELD_IN_RECORD`; an unknown column fails the whole job.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import decimal
import io
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

from tests.fakes.base import FakeServer, Request, Response

COLLECTION_LIMIT = 200
DEFAULT_API_LIMIT = 15_000
QUERY_PAGE_SIZE = 2000
MAX_SOQL_LENGTH = 100_000
MAX_URI_LENGTH = 16_384
BULK_NULL = "#N/A"

_DATA_PATH = re.compile(r"^/services/data/(v\d+\.\d)(/.*)?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:?\d{2})$")
_SOQL = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\w+)"
    r"(?:\s+WHERE\s+(?P<field>\w+)\s+IN\s*\((?P<values>.*)\))?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_SOQL_UNESCAPES = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "b": "\b",
    "f": "\f",
}
_TEXT_TYPES = {
    "string",
    "textarea",
    "picklist",
    "multipicklist",
    "email",
    "phone",
    "url",
    "id",
    "reference",
}
_NUMBER_TYPES = {"double", "currency", "percent"}
_SESSION_EXPIRED = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


@dataclass
class FakeField:
    """One field of an object's describe."""

    name: str
    type: str = "string"
    label: str = ""
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    external_id: bool = False
    id_lookup: bool = False
    unique: bool = False
    defaulted_on_create: bool = False
    length: int = 255

    @property
    def required(self) -> bool:
        return self.createable and not self.nillable and not self.defaulted_on_create

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label or self.name,
            "type": self.type,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "externalId": self.external_id,
            "idLookup": self.id_lookup,
            "unique": self.unique,
            "defaultedOnCreate": self.defaulted_on_create,
            "length": self.length if self.type in _TEXT_TYPES else 0,
            "custom": self.name.endswith("__c"),
            "filterable": True,
        }


@dataclass
class FakeObject:
    """One sObject type: its describe and whether records can be written."""

    name: str
    label: str
    key_prefix: str
    fields: dict[str, FakeField]
    createable: bool = True
    updateable: bool = True
    deletable: bool = True

    def summary(self, version: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "labelPlural": self.label + "s",
            "keyPrefix": self.key_prefix,
            "custom": self.name.endswith("__c"),
            "createable": self.createable,
            "updateable": self.updateable,
            "deletable": self.deletable,
            "queryable": True,
            "urls": {"sobject": f"/services/data/{version}/sobjects/{self.name}"},
        }


def _system_fields() -> list[FakeField]:
    return [
        FakeField(
            "Id",
            "id",
            "Record ID",
            nillable=False,
            createable=False,
            updateable=False,
            id_lookup=True,
            defaulted_on_create=True,
            length=18,
        ),
        FakeField(
            "CreatedDate",
            "datetime",
            "Created Date",
            nillable=False,
            createable=False,
            updateable=False,
            defaulted_on_create=True,
        ),
        FakeField(
            "OwnerId", "reference", "Owner ID", nillable=False, defaulted_on_create=True, length=18
        ),
    ]


def standard_objects() -> dict[str, FakeObject]:
    """Account, Contact and a read-only history object, as a small org describes them."""
    account = FakeObject(
        "Account",
        "Account",
        "001",
        {
            f.name: f
            for f in _system_fields()
            + [
                FakeField("Name", label="Account Name", nillable=False, id_lookup=True),
                FakeField(
                    "External_Id__c",
                    label="External Id",
                    external_id=True,
                    id_lookup=True,
                    unique=True,
                    length=80,
                ),
                FakeField("AnnualRevenue", "currency", "Annual Revenue"),
                FakeField("NumberOfEmployees", "int", "Employees"),
                FakeField("Last_Activity__c", "datetime", "Last Activity"),
                FakeField(
                    "Active__c", "boolean", "Active", nillable=False, defaulted_on_create=True
                ),
                FakeField("Founded__c", "date", "Founded"),
                FakeField("Rating", "picklist", "Account Rating", length=40),
                FakeField("Website", "url", "Website"),
                FakeField("Description", "textarea", "Account Description", length=32_000),
            ]
        },
    )
    contact = FakeObject(
        "Contact",
        "Contact",
        "003",
        {
            f.name: f
            for f in _system_fields()
            + [
                FakeField("LastName", label="Last Name", nillable=False, length=80),
                FakeField("FirstName", label="First Name", length=40),
                FakeField("Email", "email", "Email", id_lookup=True, length=80),
                FakeField("Phone", "phone", "Business Phone", length=40),
                FakeField("AccountId", "reference", "Account ID", length=18),
                FakeField(
                    "Customer_Number__c",
                    "double",
                    "Customer Number",
                    external_id=True,
                    id_lookup=True,
                ),
                FakeField("Birthdate", "date", "Birthdate"),
            ]
        },
    )
    history = FakeObject(
        "AccountHistory",
        "Account History",
        "017",
        {
            f.name: f
            for f in [
                FakeField(
                    "Id",
                    "id",
                    "History ID",
                    nillable=False,
                    createable=False,
                    updateable=False,
                    defaulted_on_create=True,
                ),
                FakeField("Field", "picklist", "Changed Field", createable=False, updateable=False),
            ]
        },
        createable=False,
        updateable=False,
        deletable=False,
    )
    return {obj.name: obj for obj in (account, contact, history)}


class _ParserError(Exception):
    """The request body cannot become records: Salesforce refuses the whole request."""


@dataclass
class _Rejection:
    status_code: str
    message: str
    fields: tuple[str, ...] = ()


@dataclass
class _Job:
    id: str
    object: str
    operation: str
    external_id_field: str | None
    line_ending: str
    created: str
    state: str = "Open"
    data: bytes = b""
    polls_left: int = 0
    columns: list[str] = field(default_factory=list)
    successful: list[list[str]] = field(default_factory=list)
    failed: list[list[str]] = field(default_factory=list)
    error_message: str = ""
    processed: int = 0

    def info(self, version: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": self.id,
            "operation": self.operation,
            "object": self.object,
            "createdById": "005000000000001AAA",
            "createdDate": self.created,
            "systemModstamp": self.created,
            "state": self.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(version[1:]),
            "jobType": "V2Ingest",
            "lineEnding": self.line_ending,
            "columnDelimiter": "COMMA",
            "numberRecordsProcessed": self.processed,
            "numberRecordsFailed": len(self.failed),
            "retries": 0,
            "totalProcessingTime": 0,
        }
        if self.external_id_field:
            info["externalIdFieldName"] = self.external_id_field
        if self.state == "Open":
            info["contentUrl"] = f"services/data/{version}/jobs/ingest/{self.id}/batches"
        if self.error_message:
            info["errorMessage"] = self.error_message
        return info


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, [{"message": message, "errorCode": code}])


def _record_error(
    code: str, message: str, fields: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    return {"statusCode": code, "message": message, "fields": list(fields)}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class FakeSalesforce(FakeServer):
    """Use as `with FakeSalesforce() as org:` and point `instanceUrl` and `loginUrl` at
    `org.url`. `org.records(object)` is what the org holds.

    Controls: `access_token` (the valid bearer token), `expire_token()`, `revoke_refresh_token()`,
    `reject(value, status_code, message)` (records whose external id is `value`),
    `clear_rejections()`, `api_limit`/`api_used`, `bulk_polls_before_complete` (status checks that still see a job
    InProgress), `hold_bulk_jobs` (jobs never finish), `query_page_size`.
    """

    def __init__(
        self,
        *,
        access_token: str = "00Dfake!AQ0AQ.session-1",
        client_id: str = "3MVG9fake.consumer.key",
        client_secret: str = "fake-consumer-secret",
        refresh_token: str = "5Aep861fake.refresh",
        objects: dict[str, FakeObject] | None = None,
    ) -> None:
        super().__init__()
        self.access_token: str | None = access_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token: str | None = refresh_token
        self.objects = objects if objects is not None else standard_objects()
        self.api_limit = DEFAULT_API_LIMIT
        self.api_used = 0
        self.bulk_polls_before_complete = 1
        self.hold_bulk_jobs = False
        self.query_page_size = QUERY_PAGE_SIZE
        self.token_requests = 0
        self.jobs: dict[str, _Job] = {}
        self._store: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.objects}
        self._deleted: set[str] = set()
        self._rejections: dict[str, _Rejection] = {}
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._tokens = itertools.count(2)
        self._state_lock = threading.RLock()

    # -- test controls -------------------------------------------------------------------------

    def records(self, object_name: str) -> list[dict[str, Any]]:
        with self._state_lock:
            return [dict(record) for record in self._store[object_name].values()]

    def find(self, object_name: str, field_name: str, value: Any) -> list[dict[str, Any]]:
        return [r for r in self.records(object_name) if r.get(field_name) == value]

    def add(self, object_name: str, **values: Any) -> str:
        """Put a record straight into the org (no validation); answer its Id."""
        with self._state_lock:
            return self._create(self.objects[object_name], values)

    def reject(
        self, value: str, status_code: str, message: str, fields: tuple[str, ...] = ()
    ) -> None:
        """Refuse every write of a record whose external id (or key) is `value`."""
        with self._state_lock:
            self._rejections[value] = _Rejection(status_code, message, fields)

    def clear_rejections(self) -> None:
        """Stop refusing the records `reject()` named."""
        with self._state_lock:
            self._rejections.clear()

    def expire_token(self) -> None:
        with self._state_lock:
            self.access_token = f"00Dfake!AQ0AQ.session-{next(self._tokens)}"

    def revoke_refresh_token(self) -> None:
        with self._state_lock:
            self.refresh_token = None

    # -- dispatch ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        with self._state_lock:
            if request.path == "/services/oauth2/token" and request.method == "POST":
                return self._oauth_token(request)
            if request.path.rstrip("/") == "/services/data":
                return Response(
                    200, [{"label": "Winter '25", "url": "/services/data/v62.0", "version": "62.0"}]
                )
            match = _DATA_PATH.match(request.path)
            if not match:
                return _error(404, "NOT_FOUND", "The requested resource does not exist")
            version, rest = match.group(1), (match.group(2) or "/").rstrip("/") or "/"
            if not self._authorised(request):
                return Response(401, _SESSION_EXPIRED)
            self.api_used += 1
            if self.api_used > self.api_limit:
                response = _error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            else:
                response = self._route(request, version, rest)
            response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.api_limit}"
            return response

    def _authorised(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme in ("Bearer", "OAuth") and bool(token) and token == self.access_token

    def _route(self, request: Request, version: str, rest: str) -> Response:
        method, parts = request.method, rest.strip("/").split("/")
        if method == "GET" and rest == "/limits":
            remaining = max(0, self.api_limit - self.api_used)
            return Response(
                200, {"DailyApiRequests": {"Max": self.api_limit, "Remaining": remaining}}
            )
        if method == "GET" and rest == "/sobjects":
            return Response(
                200,
                {
                    "encoding": "UTF-8",
                    "maxBatchSize": COLLECTION_LIMIT,
                    "sobjects": [obj.summary(version) for obj in self.objects.values()],
                },
            )
        if (
            method == "GET"
            and len(parts) == 3
            and parts[0] == "sobjects"
            and parts[2] == "describe"
        ):
            return self._describe(parts[1])
        if method == "GET" and parts[0] == "query":
            if len(parts) == 2:
                return self._query_page(version, parts[1])
            return self._query(request, version)
        if parts[:2] == ["composite", "sobjects"]:
            return self._collections(request, parts[2:])
        if parts[:2] == ["jobs", "ingest"]:
            return self._ingest(request, version, parts[2:])
        return _error(404, "NOT_FOUND", "The requested resource does not exist")

    # -- OAuth ---------------------------------------------------------------------------------

    def _oauth_token(self, request: Request) -> Response:
        self.token_requests += 1
        form = {key: values[0] for key, values in parse_qs(request.body.decode()).items()}
        if form.get("grant_type") != "refresh_token":
            return Response(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
            )
        if form.get("client_id") != self.client_id:
            return Response(
                400,
                {"error": "invalid_client_id", "error_description": "client identifier invalid"},
            )
        if form.get("client_secret") != self.client_secret:
            return Response(
                400, {"error": "invalid_client", "error_description": "invalid client credentials"}
            )
        if self.refresh_token is None or form.get("refresh_token") != self.refresh_token:
            return Response(
                400, {"error": "invalid_grant", "error_description": "expired access/refresh token"}
            )
        self.access_token = f"00Dfake!AQ0AQ.session-{next(self._tokens)}"
        return Response(
            200,
            {
                "access_token": self.access_token,
                "instance_url": self.url,
                "id": f"{self.url}/id/00D000000000001AAA/005000000000001AAA",
                "token_type": "Bearer",
                "issued_at": str(int(dt.datetime.now(dt.UTC).timestamp() * 1000)),
                "signature": "fake-signature",
                "scope": "api refresh_token",
            },
        )

    # -- discovery -----------------------------------------------------------------------------

    def _describe(self, object_name: str) -> Response:
        obj = self.objects.get(object_name)
        if obj is None:
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        return Response(
            200,
            {
                "name": obj.name,
                "label": obj.label,
                "keyPrefix": obj.key_prefix,
                "createable": obj.createable,
                "updateable": obj.updateable,
                "deletable": obj.deletable,
                "fields": [f.describe() for f in obj.fields.values()],
            },
        )

    # -- SOQL ----------------------------------------------------------------------------------

    def _query(self, request: Request, version: str) -> Response:
        soql = (request.query.get("q") or [""])[0]
        if len(soql) > MAX_SOQL_LENGTH:
            return _error(400, "MALFORMED_QUERY", "Query is too long")
        if len(request.path) + len(urlencode(request.query, doseq=True)) > MAX_URI_LENGTH:
            return Response(414, "URI Too Long")
        match = _SOQL.match(soql)
        if not match:
            return _error(400, "MALFORMED_QUERY", f"unexpected token in query: {soql[:80]}")
        obj = self.objects.get(match.group("object"))
        if obj is None:
            return _error(
                400,
                "INVALID_TYPE",
                (
                    f"sObject type '{match.group('object')}' is not supported. If you are attempting "
                    "to use a custom object, be sure to append the '__c' after the entity name. "
                    "Please reference your WSDL or the describe call for the appropriate names."
                ),
            )
        selected = [name.strip() for name in match.group("fields").split(",")]
        filter_field = match.group("field")
        for name in selected + ([filter_field] if filter_field else []):
            if name not in obj.fields:
                return _error(
                    400,
                    "INVALID_FIELD",
                    (
                        f"No such column '{name}' on entity '{obj.name}'. If you are attempting to use "
                        "a custom field, be sure to append the '__c' after the custom field name. "
                        "Please reference your WSDL or the describe call for the appropriate names."
                    ),
                )
        rows = list(self._store[obj.name].values())
        if filter_field:
            described = obj.fields[filter_field]
            try:
                literals = _soql_literals(match.group("values"))
            except ValueError as exc:
                return _error(400, "MALFORMED_QUERY", str(exc))
            wanted = set()
            for quoted, literal in literals:
                # Text is quoted; numbers, booleans, dates and datetimes are not.
                text_field = described.type in _TEXT_TYPES
                if quoted != text_field:
                    sf_type = "string" if text_field else described.type
                    how = (
                        "should be enclosed in quotes"
                        if text_field
                        else "should not be enclosed in quotes"
                    )
                    return _error(
                        400,
                        "INVALID_QUERY_FILTER_OPERATOR",
                        (
                            f"value of filter criterion for field '{filter_field}' must be of type "
                            f"{sf_type} and {how}"
                        ),
                    )
                wanted.add(_comparable(literal, described))
            rows = [r for r in rows if _comparable(r.get(filter_field), described) in wanted]
        if match.group("limit"):
            rows = rows[: int(match.group("limit"))]
        results = [
            {
                "attributes": {
                    "type": obj.name,
                    "url": f"/services/data/{version}/sobjects/{obj.name}/{r['Id']}",
                },
                **{name: r.get(name) for name in selected},
            }
            for r in rows
        ]
        return self._page(version, results, len(results))

    def _page(self, version: str, rows: list[dict[str, Any]], total: int) -> Response:
        page, rest = rows[: self.query_page_size], rows[self.query_page_size :]
        body: dict[str, Any] = {"totalSize": total, "done": not rest, "records": page}
        if rest:
            locator = f"01gFAKE{next(self._ids):09d}-{total - len(rest)}"
            self._cursors[locator] = rest
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}"
        return Response(200, body)

    def _query_page(self, version: str, locator: str) -> Response:
        rows = self._cursors.pop(locator, None)
        if rows is None:
            return _error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        total = int(locator.rsplit("-", 1)[1]) + len(rows)
        return self._page(version, rows, total)

    # -- sObject Collections -------------------------------------------------------------------

    def _collections(self, request: Request, tail: list[str]) -> Response:
        if request.method == "DELETE" and not tail:
            return self._delete_collection(request)
        if request.method not in ("POST", "PATCH") or len(tail) not in (0, 2):
            return _error(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed.")
        upsert_object: FakeObject | None = None
        upsert_field: str | None = None
        if tail:
            if request.method != "PATCH":
                return _error(
                    405, "METHOD_NOT_ALLOWED", "HTTP Method 'POST' not allowed. Allowed are PATCH"
                )
            upsert_object = self.objects.get(tail[0])
            if upsert_object is None:
                return _error(404, "NOT_FOUND", "The requested resource does not exist")
            upsert_field = tail[1]
            described = upsert_object.fields.get(upsert_field)
            if described is None or not described.external_id:
                return _error(
                    404,
                    "NOT_FOUND",
                    (
                        f"Provided external ID field does not exist or is not accessible: {upsert_field}"
                    ),
                )
        try:
            body = json.loads(request.body or b"null")
        except ValueError as exc:
            return _error(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}")
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            return _error(
                400,
                "JSON_PARSER_ERROR",
                "Cannot deserialize instance of SObject[] at [line:1, column:1]",
            )
        records = body["records"]
        if len(records) > COLLECTION_LIMIT:
            return _error(
                400,
                "EXCEEDED_ID_LIMIT",
                ("record limit reached. cannot submit more than 200 records into this call"),
            )
        text = request.body.decode()
        parsed: list[tuple[FakeObject | None, dict[str, Any], dict[str, Any] | None]] = []
        try:
            for raw in records:
                parsed.append(self._parse_json_record(raw, text))
        except _ParserError as exc:
            return _error(400, "JSON_PARSER_ERROR", str(exc))
        except _InvalidField as exc:
            return _error(400, "INVALID_FIELD", str(exc))

        operation = "upsert" if tail else ("insert" if request.method == "POST" else "update")
        snapshot = (copy.deepcopy(self._store), set(self._deleted))
        results = []
        for obj, values, type_error in parsed:
            if type_error is not None:
                results.append({"success": False, "errors": [type_error]})
                continue
            assert obj is not None
            if upsert_object is not None and obj.name != upsert_object.name:
                results.append(
                    {
                        "success": False,
                        "errors": [
                            _record_error(
                                "INVALID_TYPE", f"Records must be of type {upsert_object.name}"
                            )
                        ],
                    }
                )
                continue
            results.append(self._save(obj, operation, values, upsert_field))
        if body.get("allOrNone") is True and any(not r["success"] for r in results):
            self._store, self._deleted = snapshot
            rolled_back = _record_error(
                "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "Record rolled back because not all records were valid and the request was "
                "using AllOrNone header",
            )
            results = [
                r if not r["success"] else {"success": False, "errors": [rolled_back]}
                for r in results
            ]
        return Response(200, [_collection_answer(r, operation) for r in results])

    def _parse_json_record(
        self, raw: Any, text: str
    ) -> tuple[FakeObject | None, dict[str, Any], dict[str, Any] | None]:
        if not isinstance(raw, dict):
            raise _ParserError("Cannot deserialize instance of SObject from VALUE_STRING")
        attributes = raw.get("attributes")
        type_name = attributes.get("type") if isinstance(attributes, dict) else None
        if not type_name:
            return None, {}, _record_error("INVALID_TYPE", "Must send a concrete entity type.")
        obj = self.objects.get(type_name)
        if obj is None:
            return (
                None,
                {},
                _record_error("INVALID_TYPE", f"sObject type '{type_name}' is not supported."),
            )
        values = {}
        for name, value in raw.items():
            if name == "attributes":
                continue
            described = obj.fields.get(name)
            if described is None:
                raise _InvalidField(f"No such column '{name}' on sobject of type {obj.name}")
            values[name] = _from_json(described, value, text)
        return obj, values, None

    def _delete_collection(self, request: Request) -> Response:
        ids = [i for i in (request.query.get("ids") or [""])[0].split(",") if i]
        if not ids:
            return _error(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(ids) > COLLECTION_LIMIT:
            return _error(
                400,
                "EXCEEDED_ID_LIMIT",
                ("record limit reached. cannot submit more than 200 records into this call"),
            )
        return Response(200, [self._delete(record_id) for record_id in ids])

    # -- saving --------------------------------------------------------------------------------

    def _find_by(self, obj: FakeObject, field_name: str, value: Any) -> list[dict[str, Any]]:
        described = obj.fields[field_name]
        wanted = _comparable(value, described)
        return [
            r
            for r in self._store[obj.name].values()
            if _comparable(r.get(field_name), described) == wanted
        ]

    def _rejection(self, obj: FakeObject, values: dict[str, Any]) -> dict[str, Any] | None:
        for name, described in obj.fields.items():
            if described.external_id or name == "Id":
                rejection = self._rejections.get(str(values.get(name)))
                if values.get(name) is not None and rejection is not None:
                    return _record_error(rejection.status_code, rejection.message, rejection.fields)
        return None

    def _save(
        self,
        obj: FakeObject,
        operation: str,
        values: dict[str, Any],
        upsert_field: str | None = None,
    ) -> dict[str, Any]:
        """Insert, update or upsert one record; answer `{"id", "success", "errors", "created"}`."""
        existing: dict[str, Any] | None = None
        if operation == "insert" and "Id" in values:
            return _failed(
                "INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call", ["Id"]
            )
        if operation == "update":
            record_id = values.get("Id")
            if not record_id:
                return _failed("MISSING_ARGUMENT", "Id not specified in an update call")
            if record_id in self._deleted:
                return _failed("ENTITY_IS_DELETED", "entity is deleted")
            existing = self._store[obj.name].get(str(record_id))
            if existing is None:
                return _failed("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        if operation == "upsert":
            assert upsert_field is not None
            key = values.get(upsert_field)
            if key is None or key == "":
                return _failed("MISSING_ARGUMENT", f"{upsert_field} not specified")
            matches = self._find_by(obj, upsert_field, key)
            if len(matches) > 1:
                ids = ", ".join(m["Id"] for m in matches)
                return _failed(
                    "DUPLICATE_EXTERNAL_ID",
                    (
                        f"{obj.fields[upsert_field].label}: more than one record found for external id field: [{ids}]"
                    ),
                    [upsert_field],
                )
            existing = matches[0] if matches else None
        creating = existing is None
        merged = {**(existing or {}), **values}
        rejection = self._rejection(obj, merged)
        if rejection is not None:
            return {"success": False, "errors": [rejection]}
        problem = self._field_problem(obj, values, merged, creating, existing)
        if problem is not None:
            return {"success": False, "errors": [problem]}
        if creating:
            record_id = self._create(obj, {k: v for k, v in values.items() if k != "Id"})
            return {"id": record_id, "success": True, "errors": [], "created": True}
        assert existing is not None
        existing.update({k: v for k, v in values.items() if k != "Id"})
        return {"id": existing["Id"], "success": True, "errors": [], "created": False}

    def _field_problem(
        self,
        obj: FakeObject,
        values: dict[str, Any],
        merged: dict[str, Any],
        creating: bool,
        existing: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        for name, value in values.items():
            if name == "Id":
                continue
            described = obj.fields[name]
            writable = described.createable if creating else described.updateable
            if not writable:
                return _record_error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    (
                        f"Unable to create/update fields: {name}. Please check the security settings "
                        "of this field and verify that it is read/write for your profile or permission set."
                    ),
                    [name],
                )
            if value is None:
                if not described.nillable and not creating:
                    return _record_error(
                        "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]", [name]
                    )
                continue
            if described.type in _TEXT_TYPES and len(str(value)) > described.length:
                return _record_error(
                    "STRING_TOO_LONG",
                    (
                        f"{described.label}: data value too large: {str(value)[:40]} "
                        f"(max length={described.length})"
                    ),
                    [name],
                )
            if described.type == "email" and not _EMAIL.match(str(value)):
                return _record_error(
                    "INVALID_EMAIL_ADDRESS",
                    f"{described.label}: invalid email address: {value}",
                    [name],
                )
            if described.unique:
                others = [
                    r
                    for r in self._find_by(obj, name, value)
                    if existing is None or r["Id"] != existing["Id"]
                ]
                if others:
                    return _record_error(
                        "DUPLICATE_VALUE",
                        (
                            f"duplicate value found: {name} duplicates value on record with id: {others[0]['Id']}"
                        ),
                        [name],
                    )
        if creating:
            missing = [
                f.name for f in obj.fields.values() if f.required and merged.get(f.name) is None
            ]
            if missing:
                return _record_error(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]",
                    missing,
                )
        return None

    def _create(self, obj: FakeObject, values: dict[str, Any]) -> str:
        record_id = f"{obj.key_prefix}{next(self._ids):012d}AAA"
        record: dict[str, Any] = {"Id": record_id, "CreatedDate": _now()}
        if "OwnerId" in obj.fields:
            record["OwnerId"] = "005000000000001AAA"
        if "Active__c" in obj.fields:
            record["Active__c"] = False
        record.update(values)
        self._store[obj.name][record_id] = record
        return record_id

    def _delete(self, record_id: str) -> dict[str, Any]:
        for obj in self.objects.values():
            record = self._store[obj.name].get(record_id)
            if record is None:
                continue
            rejection = self._rejection(obj, record)
            if rejection is not None:
                return {"id": record_id, "success": False, "errors": [rejection]}
            del self._store[obj.name][record_id]
            self._deleted.add(record_id)
            return {"id": record_id, "success": True, "errors": []}
        if record_id in self._deleted:
            return {
                "id": record_id,
                "success": False,
                "errors": [_record_error("ENTITY_IS_DELETED", "entity is deleted")],
            }
        return {
            "id": record_id,
            "success": False,
            "errors": [_record_error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")],
        }

    # -- Bulk API 2.0 ingest -------------------------------------------------------------------

    def _ingest(self, request: Request, version: str, tail: list[str]) -> Response:
        if not tail:
            if request.method != "POST":
                return _error(
                    405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed."
                )
            return self._create_job(request, version)
        job = self.jobs.get(tail[0])
        if job is None:
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        action = tail[1] if len(tail) > 1 else ""
        if action == "batches" and request.method == "PUT":
            if job.state != "Open":
                return _error(409, "INVALIDJOBSTATE", f"Job {job.id} is not in state Open")
            if not request.headers.get("content-type", "").startswith("text/csv"):
                return _error(400, "INVALIDJOB", "Content-Type must be text/csv")
            job.data += request.body
            return Response(201)
        if not action and request.method == "PATCH":
            return self._change_job_state(request, version, job)
        if not action and request.method == "GET":
            self._advance(job)
            return Response(200, job.info(version))
        if action in ("successfulResults", "failedResults") and request.method == "GET":
            if job.state not in ("JobComplete", "Failed"):
                return _error(409, "INVALIDJOBSTATE", f"Job {job.id} has not finished")
            first = "sf__Created" if action == "successfulResults" else "sf__Error"
            rows = job.successful if action == "successfulResults" else job.failed
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
            writer.writerow(["sf__Id", first, *job.columns])
            writer.writerows(rows)
            return Response(200, buffer.getvalue(), {"Content-Type": "text/csv"})
        return _error(404, "NOT_FOUND", "The requested resource does not exist")

    def _create_job(self, request: Request, version: str) -> Response:
        try:
            spec = request.json()
        except ValueError:
            return _error(400, "JSON_PARSER_ERROR", "Unexpected character in job definition")
        if not isinstance(spec, dict):
            return _error(400, "JSON_PARSER_ERROR", "Cannot deserialize job definition")
        obj = self.objects.get(str(spec.get("object")))
        if obj is None:
            return _error(400, "INVALIDJOB", f"InvalidJob : Invalid object : {spec.get('object')}")
        operation = spec.get("operation")
        if operation not in ("insert", "update", "upsert", "delete", "hardDelete"):
            return _error(400, "INVALIDJOB", f"InvalidJob : Invalid operation : {operation}")
        if (
            spec.get("contentType", "CSV") != "CSV"
            or spec.get("columnDelimiter", "COMMA") != "COMMA"
        ):
            return _error(
                400, "INVALIDJOB", "InvalidJob : only CSV with COMMA delimiters is supported here"
            )
        external_id_field = spec.get("externalIdFieldName")
        if operation == "upsert":
            if not external_id_field:
                return _error(
                    400,
                    "INVALIDJOB",
                    (
                        f"InvalidJob : External ID was blank for {obj.name}. An External ID must be "
                        "specified for upsert."
                    ),
                )
            described = obj.fields.get(external_id_field)
            if described is None or not (described.external_id or external_id_field == "Id"):
                return _error(
                    400,
                    "INVALIDJOB",
                    (
                        f"InvalidJob : Field name provided, {external_id_field} is not an External ID "
                        f"or indexed field for {obj.name}"
                    ),
                )
        job = _Job(
            id=f"750FAKE{next(self._ids):08d}AAA",
            object=obj.name,
            operation=operation,
            external_id_field=external_id_field if operation == "upsert" else None,
            line_ending=str(spec.get("lineEnding") or "LF"),
            created=_now(),
        )
        self.jobs[job.id] = job
        return Response(200, job.info(version))

    def _change_job_state(self, request: Request, version: str, job: _Job) -> Response:
        try:
            state = (request.json() or {}).get("state")
        except (ValueError, AttributeError):
            return _error(400, "JSON_PARSER_ERROR", "Cannot deserialize job state")
        if state == "Aborted":
            if job.state in ("JobComplete", "Failed"):
                return _error(409, "INVALIDJOBSTATE", f"Job {job.id} has already finished")
            job.state = "Aborted"
        elif state == "UploadComplete":
            if job.state != "Open":
                return _error(409, "INVALIDJOBSTATE", f"Job {job.id} is not in state Open")
            job.state = "UploadComplete"
            job.polls_left = self.bulk_polls_before_complete
        else:
            return _error(400, "INVALIDJOBSTATE", f"Invalid state: {state}")
        return Response(200, job.info(version))

    def _advance(self, job: _Job) -> None:
        if job.state not in ("UploadComplete", "InProgress"):
            return
        if self.hold_bulk_jobs or job.polls_left > 0:
            job.polls_left = max(0, job.polls_left - 1)
            job.state = "InProgress"
            return
        self._process(job)

    def _process(self, job: _Job) -> None:
        obj = self.objects[job.object]
        text = job.data.decode("utf-8-sig")
        header_end = text.find("\n")
        if job.line_ending == "LF" and header_end > 0 and text[header_end - 1] == "\r":
            return self._fail(
                job,
                (
                    "ClientInputError : LineEnding is invalid on user data. Current LineEnding "
                    "setting is LF"
                ),
            )
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return self._fail(job, "InvalidBatch : Records not processed: no data uploaded")
        job.columns = rows[0]
        for name in job.columns:
            if name not in obj.fields:
                return self._fail(job, f"InvalidBatch : Field name not found : {name}")
        needed = {
            "update": "Id",
            "delete": "Id",
            "hardDelete": "Id",
            "upsert": job.external_id_field,
        }
        column = needed.get(job.operation)
        if column is not None and column not in job.columns:
            return self._fail(job, f"InvalidBatch : Field name not found : {column}")
        for cells in rows[1:]:
            if not cells:
                continue
            job.processed += 1
            if len(cells) != len(job.columns):
                job.failed.append(
                    ["", "INVALID_FIELD:Wrong number of columns in the row:--", *cells]
                )
                continue
            outcome = self._process_row(obj, job, dict(zip(job.columns, cells, strict=True)))
            if outcome["success"]:
                created = "true" if outcome.get("created") else "false"
                job.successful.append([outcome["id"], created, *cells])
            else:
                error = outcome["errors"][0]
                fields = ",".join(error["fields"])
                cell = (
                    f"{error['statusCode']}:{error['message']}:{fields} --"
                    if fields
                    else (f"{error['statusCode']}:{error['message']}:--")
                )
                job.failed.append([outcome.get("id") or "", cell, *cells])
        job.state = "JobComplete"

    def _process_row(self, obj: FakeObject, job: _Job, cells: dict[str, str]) -> dict[str, Any]:
        if job.operation in ("delete", "hardDelete"):
            result = self._delete(cells["Id"])
            return {**result, "id": result.get("id") if result["success"] else ""}
        values: dict[str, Any] = {}
        for name, cell in cells.items():
            if cell == "":
                continue  # an empty cell leaves the field as it is
            if cell == BULK_NULL:
                values[name] = None
                continue
            described = obj.fields[name]
            try:
                values[name] = _from_csv(described, cell)
            except ValueError:
                return _failed(
                    "INVALID_TYPE_ON_FIELD_IN_RECORD",
                    (f"{described.label}: value not of required type: {cell}"),
                    [name],
                )
        return self._save(obj, job.operation, values, job.external_id_field)

    def _fail(self, job: _Job, message: str) -> None:
        job.state = "Failed"
        job.error_message = message


class _InvalidField(Exception):
    """A record names a field the object does not have."""


def _failed(code: str, message: str, fields: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    return {"success": False, "errors": [_record_error(code, message, fields)]}


def _collection_answer(result: dict[str, Any], operation: str) -> dict[str, Any]:
    answer = {
        "id": result.get("id"),
        "success": result["success"],
        "errors": result.get("errors", []),
    }
    if operation == "upsert":
        answer["created"] = bool(result.get("created")) if result["success"] else False
    return answer


def _json_token(value: Any) -> str:
    if isinstance(value, bool):
        return "VALUE_TRUE" if value else "VALUE_FALSE"
    if isinstance(value, int):
        return "VALUE_NUMBER_INT"
    if isinstance(value, float):
        return "VALUE_NUMBER_FLOAT"
    if isinstance(value, dict):
        return "START_OBJECT"
    if isinstance(value, list):
        return "START_ARRAY"
    return "VALUE_STRING"


def _from_json(described: FakeField, value: Any, text: str) -> Any:
    """A JSON value as the field's type would take it, or the parser error Salesforce gives."""
    if value is None:
        return None
    try:
        return _typed(described, value)
    except (ValueError, TypeError, decimal.InvalidOperation):
        column = text.find(json.dumps(value)) + 1
        raise _ParserError(
            f"Cannot deserialize instance of {described.type} from {_json_token(value)} value "
            f"{value} or request may be missing a required field at [line:1, column:{column}]"
        ) from None


def _from_csv(described: FakeField, cell: str) -> Any:
    try:
        return _typed(described, cell)
    except (TypeError, decimal.InvalidOperation) as exc:
        raise ValueError(str(exc)) from None


def _typed(described: FakeField, value: Any) -> Any:
    kind = described.type
    if isinstance(value, dict | list):
        raise TypeError(f"{kind} cannot be a {type(value).__name__}")
    if kind in _TEXT_TYPES:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if kind == "int":
        if isinstance(value, bool):
            raise TypeError("boolean is not an int")
        number = decimal.Decimal(str(value).strip())
        if number != number.to_integral_value():
            raise ValueError("not a whole number")
        return int(number)
    if kind in _NUMBER_TYPES:
        if isinstance(value, bool):
            raise TypeError("boolean is not a number")
        number = decimal.Decimal(str(value).strip())
        if not number.is_finite():
            raise ValueError("not a finite number")
        return float(number)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError("not a boolean")
    if kind == "date":
        if not isinstance(value, str) or not _DATE.match(value):
            raise ValueError("not a date")
        dt.date.fromisoformat(value)
        return value
    if kind == "datetime":
        if not isinstance(value, str) or not _DATETIME.match(value):
            raise ValueError("not a datetime")
        return value
    return value


def _comparable(value: Any, described: FakeField) -> Any:
    """A value as SOQL and external id matching compare it: text without regard to case."""
    if value is None:
        return None
    if described.type in ("int", *_NUMBER_TYPES):
        try:
            return decimal.Decimal(str(value)).normalize()
        except decimal.InvalidOperation:
            return str(value)
    if described.type == "boolean":
        return str(value).lower()
    return str(value).casefold()


def _soql_literals(text: str) -> list[tuple[bool, str]]:
    """The literals of an IN list: (quoted, value), with string escapes undone."""
    literals: list[tuple[bool, str]] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char in " \t\n,":
            position += 1
            continue
        if char == "'":
            position += 1
            value = []
            while True:
                if position >= len(text):
                    raise ValueError("unterminated string literal in IN list")
                char = text[position]
                if char == "\\":
                    escaped = text[position + 1 : position + 2]
                    if escaped not in _SOQL_UNESCAPES:
                        raise ValueError(f"Invalid string literal: illegal escape \\{escaped}")
                    value.append(_SOQL_UNESCAPES[escaped])
                    position += 2
                elif char == "'":
                    position += 1
                    break
                else:
                    value.append(char)
                    position += 1
            literals.append((True, "".join(value)))
            continue
        end = position
        while end < len(text) and text[end] not in " \t\n,":
            end += 1
        token = text[position:end]
        if token == "" or "'" in token:
            raise ValueError(f"unexpected token: {token}")
        literals.append((False, token))
        position = end
    if not literals:
        raise ValueError("IN list is empty")
    return literals
