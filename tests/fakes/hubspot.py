"""A fake HubSpot CRM v3 API for tests: bearer-token auth, the batch create/update/upsert/
archive/read endpoints with HubSpot's validation and answers (400 for an invalid batch, 207
multi-status naming the failed inputs, 429 with `policyName`), the schemas and properties
discovery endpoints, and the X-HubSpot-RateLimit-* headers on every response.

It keeps records like a HubSpot account does, so tests assert what the account holds:
`fake.find("contacts", "email", "ann@example.com")`."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.base import FakeServer, Request, Response

MAX_BATCH_INPUTS = 100
PORTAL_ID = 4242
WINDOW_MILLISECONDS = 10_000
DEFINED_AT = "2024-01-15T09:30:00.000Z"

_OBJECTS_PATH = re.compile(r"^/crm/v3/objects/([^/]+)$")
_BATCH_PATH = re.compile(r"^/crm/v3/objects/([^/]+)/batch/(create|update|upsert|archive|read)$")
_PROPERTIES_PATH = re.compile(r"^/crm/v3/properties/([^/]+)$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PLAIN_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Property:
    name: str
    label: str
    type: str  # HubSpot's property types: string, number, bool, date, datetime, enumeration
    field_type: str
    unique: bool = False
    read_only: bool = False
    options: tuple[str, ...] = ()
    hubspot_defined: bool = True

    def definition(self) -> dict[str, Any]:
        """The property as GET /crm/v3/properties/{objectType} lists it."""
        options = self.options
        if self.type == "bool":
            options = ("true", "false")
        return {
            "updatedAt": DEFINED_AT,
            "createdAt": DEFINED_AT,
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "description": "",
            "groupName": "information",
            "options": [
                {
                    "label": value.replace("_", " ").title(),
                    "value": value,
                    "displayOrder": index,
                    "hidden": False,
                }
                for index, value in enumerate(options)
            ],
            "displayOrder": -1,
            "calculated": False,
            "externalOptions": False,
            "hasUniqueValue": self.unique,
            "hidden": False,
            "hubspotDefined": self.hubspot_defined,
            "modificationMetadata": {
                "archivable": not self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only,
            },
            "formField": not self.read_only,
            "dataSensitivity": "non_sensitive",
        }


def _default_properties() -> list[Property]:
    return [
        Property("hs_object_id", "Record ID", "number", "number", read_only=True),
        Property("createdate", "Create Date", "datetime", "date", read_only=True),
        Property("lastmodifieddate", "Last Modified Date", "datetime", "date", read_only=True),
    ]


@dataclass
class ObjectType:
    name: str
    type_id: str
    singular: str
    plural: str
    properties: dict[str, Property]
    # Properties HubSpot accepts as idProperty although hasUniqueValue is false (email, domain).
    identifiers: frozenset[str] = frozenset()
    fully_qualified_name: str | None = None

    @property
    def message_name(self) -> str:
        """How HubSpot names the type in messages: CONTACT, COMPANY, 2-7001."""
        return self.singular.upper() if not self.fully_qualified_name else self.type_id

    def usable_as_id(self, name: str) -> bool:
        prop = self.properties.get(name)
        return prop is not None and (prop.unique or name in self.identifiers)

    def folds(self, name: str) -> bool:
        """HubSpot stores emails and domains lower-cased and matches them so."""
        return name in self.identifiers


def _object_types() -> dict[str, ObjectType]:
    contact_properties = [
        *_default_properties(),
        Property("email", "Email", "string", "text"),
        Property("firstname", "First Name", "string", "text"),
        Property("lastname", "Last Name", "string", "text"),
        Property(
            "lifecyclestage",
            "Lifecycle Stage",
            "enumeration",
            "radio",
            options=(
                "subscriber",
                "lead",
                "marketingqualifiedlead",
                "salesqualifiedlead",
                "opportunity",
                "customer",
                "evangelist",
                "other",
            ),
        ),
        Property("lifetime_value", "Lifetime value", "number", "number", hubspot_defined=False),
        Property("renewal_date", "Renewal date", "date", "date", hubspot_defined=False),
        Property("is_vip", "VIP", "bool", "booleancheckbox", hubspot_defined=False),
        Property("last_purchase_at", "Last purchase", "datetime", "date", hubspot_defined=False),
        Property(
            "customer_id", "Customer ID", "string", "text", unique=True, hubspot_defined=False
        ),
    ]
    company_properties = [
        *_default_properties(),
        Property("domain", "Company Domain Name", "string", "text"),
        Property("name", "Name", "string", "text"),
        Property("numberofemployees", "Number of Employees", "number", "number"),
    ]
    deal_properties = [
        *_default_properties(),
        Property("dealname", "Deal Name", "string", "text"),
        Property("amount", "Amount", "number", "number"),
        Property("closedate", "Close Date", "datetime", "date"),
    ]
    car_properties = [
        *_default_properties(),
        Property("vin", "VIN", "string", "text", unique=True, hubspot_defined=False),
        Property("model", "Model", "string", "text", hubspot_defined=False),
        Property("year", "Year", "number", "number", hubspot_defined=False),
    ]
    types = [
        ObjectType(
            "contacts",
            "0-1",
            "contact",
            "Contacts",
            {p.name: p for p in contact_properties},
            frozenset({"email"}),
        ),
        ObjectType(
            "companies",
            "0-2",
            "company",
            "Companies",
            {p.name: p for p in company_properties},
            frozenset({"domain"}),
        ),
        ObjectType("deals", "0-3", "deal", "Deals", {p.name: p for p in deal_properties}),
        ObjectType(
            "cars",
            "2-7001",
            "Car",
            "Cars",
            {p.name: p for p in car_properties},
            fully_qualified_name=f"p{PORTAL_ID}_cars",
        ),
    ]
    return {object_type.name: object_type for object_type in types}


@dataclass
class StoredObject:
    id: str
    properties: dict[str, str]
    created_at: str
    updated_at: str
    archived: bool = False

    def as_json(self, names: list[str] | None = None, new: bool | None = None) -> dict[str, Any]:
        values = {
            **self.properties,
            "hs_object_id": self.id,
            "createdate": self.created_at,
            "lastmodifieddate": self.updated_at,
        }
        if names is not None:
            wanted = set(names) | {"hs_object_id", "createdate", "lastmodifieddate"}
            values = {name: value for name, value in values.items() if name in wanted}
        answer: dict[str, Any] = {
            "id": self.id,
            "properties": values,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": self.archived,
        }
        if new is not None:
            answer["new"] = new
        return answer


@dataclass
class _Rejection:
    category: str
    message: str


@dataclass
class _Invalid:
    """One invalid property value, as HubSpot lists it in "Property values were not valid"."""

    name: str
    code: str
    message: str
    value: Any = None
    has_value: bool = True

    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "isValid": False,
            "message": self.message,
            "error": self.code,
            "name": self.name,
            "localizedErrorMessage": self.message,
        }
        if self.has_value:
            entry["propertyValue"] = str(self.value)
        entry["portalId"] = PORTAL_ID
        return entry


class _RequestRejected(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class _Outcome:
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


class FakeHubSpot(FakeServer):
    """`FakeHubSpot(token=...)`; tests point the connector's baseUrl at `fake.url`.

    Rate limits: every authenticated request spends one call of the ten-secondly window
    (`ten_secondly_limit`, default 100) and of the day (`daily_limit`); a spent window answers
    429 TEN_SECONDLY_ROLLING until `reset_window()`, a spent day 429 DAILY."""

    def __init__(self, token: str = "pat-na1-test-token") -> None:
        super().__init__()
        self.token = token
        self.types = _object_types()
        self.store: dict[str, dict[str, StoredObject]] = {name: {} for name in self.types}
        self.ten_secondly_limit = 100
        self.daily_limit = 250_000
        self.window_used = 0
        self.daily_used = 0
        self._rejections: dict[str, _Rejection] = {}
        self._next_id = 1001
        self._state = threading.Lock()

    # --- what tests arrange and inspect -------------------------------------------------

    def seed(self, object_type: str, properties: dict[str, Any]) -> str:
        """Store a record as if it already existed in the account; returns its id."""
        with self._state:
            kind = self.types[object_type]
            values = {
                name: self._stored_text(kind, name, value) for name, value in properties.items()
            }
            return self._create(kind, values).id

    def find(self, object_type: str, name: str, value: str) -> dict[str, str] | None:
        """The properties (with hs_object_id) of the live record whose `name` is `value`."""
        with self._state:
            kind = self.types[object_type]
            found = self._lookup(kind, name, value)
            return found.as_json()["properties"] if found else None

    def get(self, object_type: str, object_id: str) -> dict[str, str] | None:
        with self._state:
            found = self.store[object_type].get(object_id)
            return found.as_json()["properties"] if found and not found.archived else None

    def objects(self, object_type: str) -> list[dict[str, str]]:
        with self._state:
            return [
                o.as_json()["properties"]
                for o in self.store[object_type].values()
                if not o.archived
            ]

    def reject(
        self,
        key: str,
        message: str = "This record was rejected.",
        category: str = "VALIDATION_ERROR",
    ) -> None:
        """Fail the input whose id (or, for creates, any property value) is `key`."""
        with self._state:
            self._rejections[key] = _Rejection(category, message)

    def clear_rejections(self) -> None:
        """Stop failing the inputs `reject()` named."""
        with self._state:
            self._rejections.clear()

    def reset_window(self) -> None:
        """A new ten-second window begins."""
        with self._state:
            self.window_used = 0

    def batch_requests(self, operation: str) -> list[Request]:
        return [
            r
            for r in self.requests
            if r.method == "POST" and r.path.endswith(f"/batch/{operation}")
        ]

    # --- HTTP -----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        with self._state:
            response = self._authorised(request)
            response.headers.update(self._rate_headers())
            return response

    def _authorised(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(
                401,
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and "
                "you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                "INVALID_AUTHENTICATION",
            )
        if self.daily_used >= self.daily_limit:
            return Response(
                429,
                {
                    "status": "error",
                    "message": "You have reached your daily limit.",
                    "errorType": "RATE_LIMIT",
                    "correlationId": str(uuid.uuid4()),
                    "policyName": "DAILY",
                },
            )
        if self.window_used >= self.ten_secondly_limit:
            return Response(
                429,
                {
                    "status": "error",
                    "message": "You have reached your ten_secondly_rolling limit.",
                    "errorType": "RATE_LIMIT",
                    "correlationId": str(uuid.uuid4()),
                    "policyName": "TEN_SECONDLY_ROLLING",
                },
            )
        self.window_used += 1
        self.daily_used += 1
        try:
            return self._route(request)
        except _RequestRejected as rejected:
            return rejected.response

    def _rate_headers(self) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(WINDOW_MILLISECONDS),
            "X-HubSpot-RateLimit-Max": str(self.ten_secondly_limit),
            "X-HubSpot-RateLimit-Remaining": str(
                max(0, self.ten_secondly_limit - self.window_used)
            ),
            "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self.daily_used)),
        }

    def _route(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/crm/v3/schemas":
            return Response(
                200,
                {
                    "results": [
                        self._schema(t) for t in self.types.values() if t.fully_qualified_name
                    ]
                },
            )
        match = _PROPERTIES_PATH.match(request.path)
        if request.method == "GET" and match:
            kind = self._type(match.group(1))
            return Response(200, {"results": [p.definition() for p in kind.properties.values()]})
        match = _OBJECTS_PATH.match(request.path)
        if request.method == "GET" and match:
            kind = self._type(match.group(1))
            limit = int((request.query.get("limit") or ["10"])[0])
            if not 1 <= limit <= 100:
                return _error(
                    400, f"limit must be between 1 and 100, was {limit}", "VALIDATION_ERROR"
                )
            live = [o for o in self.store[kind.name].values() if not o.archived]
            return Response(200, {"results": [o.as_json([]) for o in live[:limit]]})
        match = _BATCH_PATH.match(request.path)
        if request.method == "POST" and match:
            kind = self._type(match.group(1))
            body = _json_body(request)
            inputs = body["inputs"]
            if len(inputs) > MAX_BATCH_INPUTS:
                return _error(
                    400,
                    f"The maximum number of inputs supported in a batch is {MAX_BATCH_INPUTS}. "
                    "Please reduce the number of items and try again",
                    "VALIDATION_ERROR",
                )
            operation = match.group(2)
            if operation == "archive":
                return self._archive(kind, inputs)
            if operation == "read":
                return self._read(kind, body, inputs)
            handler = {
                "create": self._batch_create,
                "update": self._batch_update,
                "upsert": self._batch_upsert,
            }
            return handler[operation](kind, inputs)
        return _error(404, f"Unable to route {request.method} {request.path}", "OBJECT_NOT_FOUND")

    def _type(self, name: str) -> ObjectType:
        for kind in self.types.values():
            if name in (kind.name, kind.type_id, kind.fully_qualified_name):
                return kind
        raise _RequestRejected(
            _error(400, f"Unable to infer object type from: {name}", "VALIDATION_ERROR")
        )

    @staticmethod
    def _schema(kind: ObjectType) -> dict[str, Any]:
        return {
            "id": kind.type_id.split("-")[1],
            "name": kind.name,
            "labels": {"singular": kind.singular, "plural": kind.plural},
            "objectTypeId": kind.type_id,
            "fullyQualifiedName": kind.fully_qualified_name,
            "primaryDisplayProperty": "model",
            "requiredProperties": ["vin"],
            "searchableProperties": ["vin", "model"],
            "properties": [p.definition() for p in kind.properties.values()],
            "associations": [],
            "archived": False,
            "createdAt": DEFINED_AT,
            "updatedAt": DEFINED_AT,
        }

    # --- batch endpoints ------------------------------------------------------------------

    def _batch_create(self, kind: ObjectType, inputs: list[dict[str, Any]]) -> Response:
        # Per-input answers only when every input carries an objectWriteTraceId; otherwise one
        # bad input fails the whole batch, as HubSpot documents for multi-status errors.
        traced = bool(inputs) and all(item.get("objectWriteTraceId") is not None for item in inputs)
        outcome = _Outcome()
        batch_invalid: list[_Invalid] = []
        planned: list[dict[str, str]] = []
        taken: set[tuple[str, str]] = set()
        for item in inputs:
            properties = _properties_of(item)
            values, invalid = self._validated(kind, properties)
            failure: dict[str, Any] | None = None
            if invalid:
                failure = _invalid_error(invalid)
            else:
                failure = self._conflict(kind, values, taken) or self._rejected_create(properties)
            if failure is None:
                planned.append(values)
                taken.update(
                    (name, _folded(kind, name, value))
                    for name, value in values.items()
                    if value and kind.usable_as_id(name)
                )
                continue
            if not traced:
                if invalid:
                    batch_invalid.extend(invalid)
                    continue
                status = 409 if failure["category"] == "CONFLICT" else 400
                return _error(status, failure["message"], failure["category"])
            failure["context"] = {
                **failure.get("context", {}),
                "objectWriteTraceId": [str(item["objectWriteTraceId"])],
            }
            outcome.errors.append(failure)
        if batch_invalid:
            return _invalid_response(batch_invalid)
        for values in planned:
            outcome.results.append(self._create(kind, values).as_json())
        return _batch_response(outcome)

    def _batch_update(self, kind: ObjectType, inputs: list[dict[str, Any]]) -> Response:
        targets: list[StoredObject | None] = []
        batch_invalid: list[_Invalid] = []
        for item in inputs:
            if item.get("id") is None:
                raise _RequestRejected(
                    _error(400, "Invalid input JSON: every input needs an id", "VALIDATION_ERROR")
                )
            id_property = item.get("idProperty")
            if id_property is not None:
                self._require_identifier(kind, str(id_property))
                targets.append(self._lookup(kind, str(id_property), str(item["id"])))
            else:
                found = self.store[kind.name].get(str(item["id"]))
                targets.append(found if found and not found.archived else None)
            batch_invalid.extend(self._validated(kind, _properties_of(item))[1])
        if batch_invalid:
            return _invalid_response(batch_invalid)
        outcome = _Outcome()
        missing: list[str] = []
        missing_traces: list[str] = []
        for item, target in zip(inputs, targets, strict=True):
            key = str(item["id"])
            rejection = self._rejections.get(key)
            if rejection:
                outcome.errors.append(_rejection_error(rejection, key, item))
            elif target is None:
                missing.append(key)
                if item.get("objectWriteTraceId") is not None:
                    missing_traces.append(str(item["objectWriteTraceId"]))
            else:
                target.properties.update(self._validated(kind, _properties_of(item))[0])
                target.updated_at = _now()
                outcome.results.append(target.as_json())
        if missing:
            context: dict[str, list[str]] = {"ids": missing}
            if missing_traces:
                context["objectWriteTraceId"] = missing_traces
            outcome.errors.append(
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": f"Could not get some {kind.message_name} objects, they may be deleted or not exist. "
                    "Check that ids are valid.",
                    "context": context,
                }
            )
        return _batch_response(outcome)

    def _batch_upsert(self, kind: ObjectType, inputs: list[dict[str, Any]]) -> Response:
        batch_invalid: list[_Invalid] = []
        seen: dict[str, int] = {}
        for item in inputs:
            if item.get("id") is None or item.get("idProperty") is None:
                raise _RequestRejected(
                    _error(
                        400,
                        "Invalid input JSON: every upsert input needs an id and an idProperty",
                        "VALIDATION_ERROR",
                    )
                )
            id_property = str(item["idProperty"])
            self._require_identifier(kind, id_property)
            folded = _folded(kind, id_property, str(item["id"]))
            seen[folded] = seen.get(folded, 0) + 1
            batch_invalid.extend(self._validated(kind, _properties_of(item))[1])
        duplicates = [key for key, count in seen.items() if count > 1]
        if duplicates:
            return _error(
                400,
                f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]. IDs must be unique",
                "VALIDATION_ERROR",
            )
        if batch_invalid:
            return _invalid_response(batch_invalid)
        outcome = _Outcome()
        for item in inputs:
            key, id_property = str(item["id"]), str(item["idProperty"])
            rejection = self._rejections.get(key)
            if rejection:
                outcome.errors.append(_rejection_error(rejection, key, item))
                continue
            values = self._validated(kind, _properties_of(item))[0]
            target = self._lookup(kind, id_property, key)
            if target is None:
                values[id_property] = self._stored_text(kind, id_property, key)
                outcome.results.append(self._create(kind, values).as_json(new=True))
            else:
                target.properties.update(values)
                target.updated_at = _now()
                outcome.results.append(target.as_json(new=False))
        return _batch_response(outcome)

    def _archive(self, kind: ObjectType, inputs: list[dict[str, Any]]) -> Response:
        for item in inputs:
            found = self.store[kind.name].get(str(item.get("id")))
            if found is not None:
                found.archived = True
        # 204 whatever the records' state: active, already archived or unknown.
        return Response(204)

    def _read(
        self, kind: ObjectType, body: dict[str, Any], inputs: list[dict[str, Any]]
    ) -> Response:
        id_property = body.get("idProperty")
        if id_property is not None:
            self._require_identifier(kind, str(id_property))
        names = [str(name) for name in body.get("properties") or []]
        outcome = _Outcome()
        missing: list[str] = []
        for item in inputs:
            key = str(item.get("id"))
            if id_property is not None:
                found = self._lookup(kind, str(id_property), key)
            else:
                found = self.store[kind.name].get(key)
                found = found if found and not found.archived else None
            if found is None:
                missing.append(key)
            else:
                outcome.results.append(found.as_json(names))
        if missing:
            outcome.errors.append(
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": f"Could not get some {kind.message_name} objects, they may be deleted or not exist. "
                    "Check that ids are valid.",
                    "context": {"ids": missing},
                }
            )
        return _batch_response(outcome)

    # --- records and validation -----------------------------------------------------------

    def _create(self, kind: ObjectType, values: dict[str, str]) -> StoredObject:
        now = _now()
        record = StoredObject(str(self._next_id), dict(values), now, now)
        self._next_id += 1
        self.store[kind.name][record.id] = record
        return record

    def _lookup(self, kind: ObjectType, name: str, value: str) -> StoredObject | None:
        if name == "hs_object_id":
            found = self.store[kind.name].get(value)
            return found if found and not found.archived else None
        wanted = _folded(kind, name, value)
        for record in self.store[kind.name].values():
            stored = record.properties.get(name)
            if not record.archived and stored is not None and _folded(kind, name, stored) == wanted:
                return record
        return None

    def _require_identifier(self, kind: ObjectType, name: str) -> None:
        if not kind.usable_as_id(name):
            raise _RequestRejected(
                _error(
                    400,
                    f"Unable to perform update/upsert by non-unique {kind.type_id} property {name} in portal ID {PORTAL_ID}",
                    "VALIDATION_ERROR",
                )
            )

    def _conflict(
        self, kind: ObjectType, values: dict[str, str], taken: set[tuple[str, str]]
    ) -> dict[str, Any] | None:
        for name, value in values.items():
            if not value or not kind.usable_as_id(name):
                continue
            if (name, _folded(kind, name, value)) in taken:
                message = f"Duplicate value {value} for unique property {name} in batch input"
                return {"status": "error", "category": "CONFLICT", "message": message}
            existing = self._lookup(kind, name, value)
            if existing is None:
                continue
            if kind.name == "contacts" and name == "email":
                message = f"Contact already exists. Existing ID: {existing.id}"
            else:
                message = f"A {kind.singular} with {name} {value} already exists. Existing ID: {existing.id}"
            return {
                "status": "error",
                "category": "CONFLICT",
                "message": message,
                "context": {"existingId": [existing.id]},
            }
        return None

    def _rejected_create(self, properties: dict[str, Any]) -> dict[str, Any] | None:
        for value in properties.values():
            rejection = self._rejections.get(str(value))
            if rejection:
                return {
                    "status": "error",
                    "category": rejection.category,
                    "message": rejection.message,
                    "context": {},
                }
        return None

    def _validated(
        self, kind: ObjectType, properties: dict[str, Any]
    ) -> tuple[dict[str, str], list[_Invalid]]:
        values: dict[str, str] = {}
        invalid: list[_Invalid] = []
        for name, raw in properties.items():
            prop = kind.properties.get(name)
            if prop is None:
                message = f'Property "{name}" does not exist'
                invalid.append(_Invalid(name, "PROPERTY_DOESNT_EXIST", message, has_value=False))
                continue
            if isinstance(raw, dict | list):
                raise _RequestRejected(
                    _error(
                        400,
                        "Invalid input JSON on line 1: Cannot deserialize value of type `java.lang.String` "
                        f"from {'Object' if isinstance(raw, dict) else 'Array'} value (property {name})",
                        "VALIDATION_ERROR",
                    )
                )
            problem = _value_problem(kind, prop, raw)
            if problem:
                invalid.append(_Invalid(name, problem[0], problem[1], raw))
            else:
                values[name] = self._stored_text(kind, name, raw)
        return values, invalid

    def _stored_text(self, kind: ObjectType, name: str, raw: Any) -> str:
        """The value as HubSpot keeps and returns it: text, emails and domains lower-cased,
        dates as YYYY-MM-DD, datetimes as ISO 8601 UTC, booleans as true/false."""
        if raw is None or raw == "":
            return ""
        prop = kind.properties.get(name)
        kind_of_value = prop.type if prop else "string"
        if kind_of_value == "bool":
            return "true" if raw is True or str(raw).lower() == "true" else "false"
        if kind_of_value == "number":
            return _plain(decimal.Decimal(str(raw)))
        if kind_of_value == "date":
            return _parse_date(raw).isoformat()
        if kind_of_value == "datetime":
            moment = _parse_datetime(raw)
            return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        text = str(raw)
        return text.lower() if kind.folds(name) else text


# --- validation and answer shapes ----------------------------------------------------------


def _now() -> str:
    moment = dt.datetime.now(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _error(status: int, message: str, category: str, **extra: Any) -> Response:
    return Response(
        status,
        {
            "status": "error",
            "message": message,
            "correlationId": str(uuid.uuid4()),
            "category": category,
            **extra,
        },
    )


def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except ValueError as exc:
        raise _RequestRejected(
            _error(400, f"Invalid input JSON on line 1, column 1: {exc}", "VALIDATION_ERROR")
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise _RequestRejected(
            _error(
                400,
                "Invalid input JSON on line 1, column 1: Some required fields were not set: [inputs]",
                "VALIDATION_ERROR",
            )
        )
    if not all(isinstance(item, dict) for item in body["inputs"]):
        raise _RequestRejected(
            _error(400, "Invalid input JSON: inputs must be objects", "VALIDATION_ERROR")
        )
    return body


def _properties_of(item: dict[str, Any]) -> dict[str, Any]:
    properties = item.get("properties")
    if properties is None:
        return {}
    if not isinstance(properties, dict):
        raise _RequestRejected(
            _error(400, "Invalid input JSON: properties must be an object", "VALIDATION_ERROR")
        )
    return properties


def _folded(kind: ObjectType, name: str, value: str) -> str:
    return value.strip().lower() if kind.folds(name) else value


def _value_problem(kind: ObjectType, prop: Property, raw: Any) -> tuple[str, str] | None:
    """(error code, message) when HubSpot would refuse `raw` for `prop`."""
    if raw is None or raw == "":
        return None
    text = str(raw)
    if prop.type == "number":
        if isinstance(raw, bool) or not (isinstance(raw, int | float) or _PLAIN_NUMBER.match(text)):
            return "INVALID_INTEGER", f"{text} was not a valid number."
        if isinstance(raw, float) and (
            "e" in repr(raw).lower() or raw != raw or raw in (float("inf"), float("-inf"))
        ):
            return "INVALID_INTEGER", f"{text} was not a valid number."
    elif prop.type == "bool":
        if not (isinstance(raw, bool) or text.lower() in ("true", "false")):
            return "INVALID_OPTION", f"{text} was not one of the allowed options: [true, false]"
    elif prop.type == "enumeration":
        for option in text.split(";"):
            if option not in prop.options:
                return (
                    "INVALID_OPTION",
                    f"{option} was not one of the allowed options: [{', '.join(prop.options)}]",
                )
    elif prop.type == "date":
        try:
            moment = _parse_date_moment(raw)
        except ValueError:
            return "INVALID_DATE", f"{text} was not a valid date."
        if moment.time() != dt.time(0):
            return (
                "INVALID_DATE",
                f"{text} is at {moment.hour}:{moment.minute}:{moment.second}.{moment.microsecond // 1000} UTC, "
                "not midnight!",
            )
    elif prop.type == "datetime":
        try:
            _parse_datetime(raw)
        except ValueError:
            return "INVALID_DATETIME", f"{text} was not a valid datetime."
    elif kind.name == "contacts" and prop.name == "email" and not _EMAIL.match(text):
        return "INVALID_EMAIL", f"Email address {text} is invalid"
    return None


def _epoch_millis(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw.strip())
    return None


def _parse_date_moment(raw: Any) -> dt.datetime:
    millis = _epoch_millis(raw)
    if millis is not None:
        return dt.datetime.fromtimestamp(millis / 1000, dt.UTC)
    text = str(raw).strip()
    if not _ISO_DATE.match(text):
        raise ValueError(text)
    day = dt.date.fromisoformat(text)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _parse_date(raw: Any) -> dt.date:
    return _parse_date_moment(raw).date()


def _parse_datetime(raw: Any) -> dt.datetime:
    millis = _epoch_millis(raw)
    if millis is not None:
        return dt.datetime.fromtimestamp(millis / 1000, dt.UTC)
    text = str(raw).strip()
    if "T" not in text:
        raise ValueError(text)
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(text)
    return moment.astimezone(dt.UTC)


def _plain(number: decimal.Decimal) -> str:
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _invalid_error(invalid: list[_Invalid]) -> dict[str, Any]:
    return {
        "status": "error",
        "category": "VALIDATION_ERROR",
        "message": "Property values were not valid: "
        + json.dumps([item.entry() for item in invalid]),
    }


def _invalid_response(invalid: list[_Invalid]) -> Response:
    """HubSpot's 400 for a batch with invalid values: nothing in the batch is written."""
    return _error(
        400,
        "Property values were not valid: " + json.dumps([item.entry() for item in invalid]),
        "VALIDATION_ERROR",
        errors=[
            {"message": item.message, "code": item.code, "context": {"propertyName": [item.name]}}
            for item in invalid
        ],
    )


def _rejection_error(rejection: _Rejection, key: str, item: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, list[str]] = {"ids": [key]}
    if item.get("objectWriteTraceId") is not None:
        context["objectWriteTraceId"] = [str(item["objectWriteTraceId"])]
    return {
        "status": "error",
        "category": rejection.category,
        "message": rejection.message,
        "context": context,
    }


def _batch_response(outcome: _Outcome) -> Response:
    now = _now()
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": outcome.results,
        "startedAt": now,
        "completedAt": now,
    }
    if outcome.errors:
        body["numErrors"] = len(outcome.errors)
        body["errors"] = outcome.errors
        return Response(207, body)
    return Response(200, body)
