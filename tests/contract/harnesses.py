"""What the destination contract suite needs to know about each destination: how to start its
fake, its config, the object, key and mappings a sync uses, what the fake holds afterwards, what
its write requests carried, and how to script the fake's throttling, outages, per-record
refusals and rejected credentials."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qs

import psycopg
import requests

from connectors import pii
from connectors.registry import destination_class
from tests.e2e.conftest import seed
from tests.engine.conftest import Warehouse
from tests.fakes.base import Request
from tests.fakes.google_ads import MAX_OPERATIONS, FakeGoogleAds, quota_exhausted
from tests.fakes.http_sink import FakeHttpSink
from tests.fakes.hubspot import MAX_BATCH_INPUTS, FakeHubSpot
from tests.fakes.iterable import FakeIterable
from tests.fakes.meta import MAX_ROWS, FakeMeta, graph_error, throttled
from tests.fakes.salesforce import COLLECTION_LIMIT, FakeSalesforce


def phone_of(row_id: int) -> str:
    """A phone number of its own for every row (a phone may identify a person)."""
    return f"+1 (212) {5_000_000 + row_id}"


def seed_people(table: Warehouse, count: int, start: int = 1) -> None:
    """Rows start..start+count-1 as tests.e2e.conftest.seed makes them, with phone_of(i), a
    device id ending in i, and no CRM id."""
    seed(table, count, start)
    table.execute(
        "UPDATE warehouse.people SET phone = '+1 (212) ' || (5000000 + id),"
        " device = 'aece52e7-03ee-455a-b3c4-' || lpad(id::text, 12, '0')"
        " WHERE id BETWEEN %s AND %s",
        (start, start + count - 1),
    )


class DestinationHarness(ABC):
    """One destination as the contract suite drives it. A subclass sets the class attributes
    and answers the methods for its connector and fake."""

    connector: ClassVar[str]
    object_name: ClassVar[str]
    mappings: ClassVar[list[dict[str, Any]]]
    query: ClassVar[str] = "SELECT * FROM warehouse.people"
    # Discovery: attributes each object must show (a subset), and whether no other object may.
    objects: ClassVar[dict[str, dict[str, Any]]]
    only_these_objects: ClassVar[bool] = False
    # Attributes fields of `object_name` must show (a subset of each).
    fields: ClassVar[dict[str, dict[str, Any]]]
    # What a run's error says when the vendor rejects the credentials.
    auth_error: ClassVar[tuple[str, ...]]

    def __repr__(self) -> str:
        return self.connector

    # -- the fake and the destination's config ------------------------------------------------

    @abstractmethod
    def running(self, database_url: str) -> AbstractContextManager[Any]:
        """The destination's fake, started; stopped and emptied at the end."""

    @abstractmethod
    def config(self, fake: Any) -> dict[str, Any]: ...

    @abstractmethod
    def rejected_credentials(self, fake: Any) -> dict[str, Any]:
        """Config entries the vendor refuses as credentials."""

    # -- records ------------------------------------------------------------------------------

    def key(self, row_id: int) -> str:
        """The record key retl keeps (and the DLQ shows) for warehouse row `row_id`."""
        return str(row_id)

    def tracked(self, name: str, phone: str) -> Any:
        """What `held` shows for a row with this name and phone."""
        return name

    @abstractmethod
    def held(self, fake: Any) -> dict[str, Any]:
        """What the destination holds: record key → the tracked value."""

    @abstractmethod
    def preload(self, fake: Any, row_ids: list[int]) -> None:
        """Records already in the destination for these rows (with another tracked value)."""

    @abstractmethod
    def sent(self, fake: Any, operation: str) -> list[list[str]]:
        """The record keys of each `operation` (upsert, or insert where declared) write request
        the destination was sent, refused ones included."""

    def forget_requests(self, fake: Any) -> None:
        fake.requests.clear()

    def secret_values(self, config: dict[str, Any]) -> list[str]:
        """The config's secrets, as the text a leak would show."""
        values: list[str] = []
        for name in destination_class(self.connector).secret_fields():
            value = config.get(name)
            if isinstance(value, dict):  # headers: each value may hold a credential
                values.extend(str(v) for v in value.values())
            elif value:
                values.append(str(value))
        return values

    # -- per-record refusals ------------------------------------------------------------------

    @abstractmethod
    def refuse(self, fake: Any, table: Warehouse, row_ids: list[int]) -> dict[int, str]:
        """Make the vendor refuse these rows' records; the message it gives each."""

    @abstractmethod
    def accept(self, fake: Any, table: Warehouse, row_ids: list[int]) -> None:
        """Undo `refuse`, in the fake or in the warehouse, so the records are accepted."""

    def refusal_matches(self, expected: str, message: str) -> bool:
        return message == expected

    def not_found_message(self, key: str) -> str | None:
        """What an update of a record the vendor does not hold says; None: not checked."""
        return None


class HttpApiHarness(DestinationHarness):
    """A destination behind an HTTP API, whose fake scripts throttling and outages."""

    # Records the vendor takes in one write request: a larger run is split into requests of at
    # most this many.
    batch_limit: ClassVar[int]

    def write_attempts(self, fake: Any) -> int:
        """Upsert calls made (answered or refused): what a scripted fault counts."""
        return len(self.sent(fake, "upsert"))

    @abstractmethod
    def send_oversize(self, fake: Any) -> requests.Response:
        """Send the fake one write request past the vendor's limit (of records, or of bytes
        where the vendor counts those), as a client that ignores the limit would."""

    @abstractmethod
    def rate_limited(self) -> tuple[int, Any, dict[str, str] | None]:
        """The vendor's answer when throttling: status, body and headers (the advised wait)."""

    @abstractmethod
    def server_error(self) -> tuple[int, Any]: ...


def _keys_of(requests: list[Request], field: str, records: str) -> list[list[str]]:
    return [[str(r[field]) for r in request.json()[records]] for request in requests]


class HttpHarness(HttpApiHarness):
    connector = "http"
    object_name = "people"
    token = "Bearer receiver-token"
    batch_limit = 50  # the receiver answers 413 to a larger request; the config says 50
    declared_fields: ClassVar[list[dict[str, Any]]] = [
        {"name": "external_id", "type": "string", "externalId": True},
        {"name": "email", "type": "string"},
        {"name": "full_name", "type": "string", "required": True},
        {"name": "score", "type": "number"},
    ]
    mappings = [
        {"source": "id", "destination": "external_id", "key": True},
        {"source": "email", "destination": "email"},
        {"source": "name", "destination": "full_name"},
        {"source": "score", "destination": "score"},
    ]
    objects = {"people": {"writable": True}}
    only_these_objects = True
    fields = {
        "external_id": {"external_id": True},
        "full_name": {"required": True, "data_type": "string"},
        "score": {"data_type": "number"},
    }
    auth_error = ("fix the headers in the destination's config",)

    @contextmanager
    def running(self, database_url: str) -> Iterator[FakeHttpSink]:
        with FakeHttpSink(required_headers={"Authorization": self.token},
                          max_batch=self.batch_limit) as fake:
            yield fake

    def config(self, fake: FakeHttpSink) -> dict[str, Any]:
        return {
            "url": f"{fake.url}/people", "headers": {"Authorization": self.token},
            "batchSize": self.batch_limit, "format": "json_object", "resultsPath": "results",
            "fields": self.declared_fields, "objectName": "people", "rateLimitPerSecond": 1000,
        }

    def rejected_credentials(self, fake: FakeHttpSink) -> dict[str, Any]:
        return {"headers": {"Authorization": "Bearer stale-receiver-token"}}

    def held(self, fake: FakeHttpSink) -> dict[str, Any]:
        return {key: record.get("full_name") for key, record in fake.store.items()}

    def preload(self, fake: FakeHttpSink, row_ids: list[int]) -> None:
        for i in row_ids:
            fake.store[str(i)] = {"external_id": str(i), "full_name": "Old"}

    def sent(self, fake: FakeHttpSink, operation: str) -> list[list[str]]:
        return [[str(r["external_id"]) for r in request.json()["records"]]
                for request in fake.requests
                if request.headers.get("x-retl-operation") == operation]


    def send_oversize(self, fake: FakeHttpSink) -> requests.Response:
        records = [{"external_id": str(i)} for i in range(self.batch_limit + 1)]
        return requests.post(f"{fake.url}/people", json={"records": records}, timeout=30,
                             headers={"Authorization": self.token, "X-Retl-Operation": "upsert",
                                      "X-Retl-Key-Field": "external_id"})

    def rate_limited(self) -> tuple[int, Any, dict[str, str] | None]:
        return 429, {"error": "HTTP 429"}, {"Retry-After": "2"}

    def server_error(self) -> tuple[int, Any]:
        return 503, {"error": "HTTP 503"}

    def refuse(self, fake: FakeHttpSink, table: Warehouse, row_ids: list[int]) -> dict[int, str]:
        fake.reject_keys({str(i) for i in row_ids}, "email domain is blocked")
        return dict.fromkeys(row_ids, "email domain is blocked")

    def accept(self, fake: FakeHttpSink, table: Warehouse, row_ids: list[int]) -> None:
        fake.clear_rejections()

    def not_found_message(self, key: str) -> str | None:
        return f"external_id {key} not found"


class HubSpotHarness(HttpApiHarness):
    connector = "hubspot"
    object_name = "contacts"
    batch_limit = MAX_BATCH_INPUTS
    mappings = [
        {"source": "id", "destination": "customer_id", "key": True},
        {"source": "email", "destination": "email"},
        {"source": "name", "destination": "firstname"},
        {"source": "score", "destination": "lifetime_value"},
    ]
    objects = {
        "contacts": {"supports_upsert": True, "writable": True},
        "companies": {}, "deals": {}, "2-7001": {"label": "Cars"},
    }
    fields = {
        "customer_id": {"external_id": True},
        "email": {"external_id": True},
        "lifetime_value": {"data_type": "number"},
        "is_vip": {"data_type": "boolean"},
        "last_purchase_at": {"data_type": "datetime"},
        "renewal_date": {"data_type": "date"},
        "firstname": {"data_type": "string"},
        "hs_object_id": {"updateable": False},
    }
    auth_error = ("fix the accessToken", "INVALID_AUTHENTICATION")

    @contextmanager
    def running(self, database_url: str) -> Iterator[FakeHubSpot]:
        with FakeHubSpot() as fake:
            yield fake  # type: ignore[misc]

    def config(self, fake: FakeHubSpot) -> dict[str, Any]:
        return {"accessToken": fake.token, "baseUrl": fake.url, "rateLimitPerSecond": 1000}

    def rejected_credentials(self, fake: FakeHubSpot) -> dict[str, Any]:
        return {"accessToken": "pat-na1-revoked"}

    def held(self, fake: FakeHubSpot) -> dict[str, Any]:
        return {c["customer_id"]: c.get("firstname") for c in fake.objects("contacts")}

    def preload(self, fake: FakeHubSpot, row_ids: list[int]) -> None:
        for i in row_ids:
            fake.seed("contacts", {"customer_id": str(i), "firstname": "Old"})

    def sent(self, fake: FakeHubSpot, operation: str) -> list[list[str]]:
        if operation == "insert":
            return [[i["properties"]["customer_id"] for i in r.json()["inputs"]]
                    for r in fake.batch_requests("create")]
        return [[i["id"] for i in r.json()["inputs"]] for r in fake.batch_requests(operation)]


    def send_oversize(self, fake: FakeHubSpot) -> requests.Response:
        inputs = [{"id": str(i), "idProperty": "customer_id", "properties": {"firstname": "A"}}
                  for i in range(self.batch_limit + 1)]
        return requests.post(f"{fake.url}/crm/v3/objects/contacts/batch/upsert", timeout=30,
                             json={"inputs": inputs},
                             headers={"Authorization": f"Bearer {fake.token}"})

    def rate_limited(self) -> tuple[int, Any, dict[str, str] | None]:
        return 429, {
            "status": "error", "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT", "correlationId": "3d6f4a52-1f2e-4b7a-9c51-7d1c2b9e0a11",
            "policyName": "TEN_SECONDLY_ROLLING",
        }, {"Retry-After": "2"}

    def server_error(self) -> tuple[int, Any]:
        return 502, {"status": "error", "message": "internal error", "category": "INTERNAL_ERROR"}

    def refuse(self, fake: FakeHubSpot, table: Warehouse, row_ids: list[int]) -> dict[int, str]:
        said = {}
        for n, i in enumerate(row_ids):
            message = ("Contact is on the blocklist", "Property values were not valid")[n % 2]
            fake.reject(str(i), message)
            said[i] = f"VALIDATION_ERROR: {message}"
        return said

    def not_found_message(self, key: str) -> str | None:
        return ("OBJECT_NOT_FOUND: Could not get some CONTACT objects, they may be deleted or not"
                " exist. Check that ids are valid.")

    def accept(self, fake: FakeHubSpot, table: Warehouse, row_ids: list[int]) -> None:
        fake.clear_rejections()


class IterableHarness(HttpApiHarness):
    connector = "iterable"
    object_name = "users"
    schema: ClassVar[dict[str, str]] = {
        "score": "double", "vip": "boolean", "lastSeen": "date", "bornOn": "date",
    }
    api_key = "server-key"
    # Iterable limits a bulkUpdate body to 4 MB, not to a number of users; the connector sends
    # 1000 users a request and packs them under the byte limit (tests/connectors cover that).
    batch_limit = 1000
    mappings = [
        {"source": "id", "destination": "userId", "key": True},
        {"source": "email", "destination": "email"},
        {"source": "name", "destination": "firstName"},
        {"source": "score", "destination": "score"},
    ]
    objects = {"users": {"supports_upsert": True}, "events": {"supports_upsert": False}}
    only_these_objects = True
    fields = {
        "email": {"external_id": True}, "userId": {"external_id": True},
        "score": {"data_type": "number"}, "vip": {"data_type": "boolean"},
        "lastSeen": {"data_type": "datetime"}, "bornOn": {"data_type": "datetime"},
    }
    auth_error = ("fix apiKey in the destination's config", "BadApiKey")

    @contextmanager
    def running(self, database_url: str) -> Iterator[FakeIterable]:
        with FakeIterable(api_key=self.api_key, user_fields=self.schema) as fake:
            yield fake

    def config(self, fake: FakeIterable) -> dict[str, Any]:
        return {"apiKey": self.api_key, "baseUrl": fake.url, "rateLimitPerSecond": 1000}

    def rejected_credentials(self, fake: FakeIterable) -> dict[str, Any]:
        return {"apiKey": "revoked-key"}

    def held(self, fake: FakeIterable) -> dict[str, Any]:
        return {u["userId"]: u["dataFields"].get("firstName") for u in fake.users.values()}

    def preload(self, fake: FakeIterable, row_ids: list[int]) -> None:
        for i in row_ids:
            fake.add_user(f"old{i}@example.com", {"firstName": "Old"}, user_id=str(i))

    def sent(self, fake: FakeIterable, operation: str) -> list[list[str]]:
        assert operation == "upsert", "Iterable users are only upserted"
        return _keys_of([r for r in fake.requests
                         if (r.method, r.path) == ("POST", "/api/users/bulkUpdate")],
                        "userId", "users")

    def send_oversize(self, fake: FakeIterable) -> requests.Response:
        """Iterable counts bytes: a body past 4 MB."""
        users = [{"userId": str(i), "dataFields": {"firstName": "x" * 5000}}
                 for i in range(1000)]
        return requests.post(f"{fake.url}/api/users/bulkUpdate", json={"users": users},
                             headers={"Api-Key": self.api_key}, timeout=30)

    def rate_limited(self) -> tuple[int, Any, dict[str, str] | None]:
        return 429, {"msg": "Rate limit exceeded", "code": "RateLimitExceeded", "params": None}, {
            "Retry-After": "2"}

    def server_error(self) -> tuple[int, Any]:
        return 503, {"msg": "Internal server error", "code": "GenericError", "params": None}

    def refuse(self, fake: FakeIterable, table: Warehouse, row_ids: list[int]) -> dict[int, str]:
        table.execute("UPDATE warehouse.people SET email = 'user' || id || '@'"
                      " WHERE id = ANY(%s)", (row_ids,))
        return {i: f"malformed email address (Iterable invalidEmails: {i})" for i in row_ids}

    def accept(self, fake: FakeIterable, table: Warehouse, row_ids: list[int]) -> None:
        table.execute("UPDATE warehouse.people SET email = 'fixed' || id || '@example.com'"
                      " WHERE id = ANY(%s)", (row_ids,))


@dataclass
class CrmSchema:
    """The Postgres destination's side: schema crm of the test database."""

    conn: psycopg.Connection
    url: str

    def execute(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        cursor = self.conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


class PostgresHarness(DestinationHarness):
    """The destination is a schema of the test database; a trigger logs every write to it."""

    connector = "postgres"
    object_name = "contacts"
    mappings = [
        {"source": "id", "destination": "external_id", "key": True},
        {"source": "email", "destination": "email"},
        {"source": "name", "destination": "full_name"},
        {"source": "score", "destination": "score"},
    ]
    objects = {"contacts": {"writable": True}}
    fields = {
        "external_id": {"external_id": True, "data_type": "integer"},
        "email": {"external_id": True},  # a unique index marks a key
        "full_name": {"required": True},
        "score": {"data_type": "number"}, "active": {"data_type": "boolean"},
        "last_seen_at": {"data_type": "datetime"}, "born_on": {"data_type": "date"},
    }
    auth_error = ("fix the user and password in url",)

    @contextmanager
    def running(self, database_url: str) -> Iterator[CrmSchema]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS crm CASCADE")
            conn.execute("""
                CREATE SCHEMA crm;
                CREATE TABLE crm.contacts (
                    external_id integer PRIMARY KEY, email text UNIQUE,
                    full_name varchar(20) NOT NULL,
                    score numeric(6, 2) CONSTRAINT score_not_negative CHECK (score >= 0),
                    active boolean, last_seen_at timestamptz, born_on date);
                CREATE TABLE crm.writes (external_id integer, operation text);
                CREATE FUNCTION crm.log_write() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO crm.writes VALUES (
                        CASE WHEN TG_OP = 'DELETE' THEN OLD.external_id ELSE NEW.external_id END,
                        TG_OP);
                    RETURN NULL;
                END $$;
                CREATE TRIGGER log_write AFTER INSERT OR UPDATE OR DELETE ON crm.contacts
                    FOR EACH ROW EXECUTE FUNCTION crm.log_write();
            """)
            yield CrmSchema(conn, database_url)
            conn.execute("DROP SCHEMA crm CASCADE")

    def config(self, fake: CrmSchema) -> dict[str, Any]:
        # Trust authentication ignores the password; it is there to be kept secret.
        info = psycopg.conninfo.conninfo_to_dict(fake.url)
        url = psycopg.conninfo.make_conninfo(**{**info, "password": "crm-db-password"})
        return {"url": url, "schema": "crm", "rateLimitPerSecond": 1000}

    def rejected_credentials(self, fake: CrmSchema) -> dict[str, Any]:
        info = psycopg.conninfo.conninfo_to_dict(fake.url)
        return {"url": psycopg.conninfo.make_conninfo(
            **{**info, "user": "retl_no_such_role", "password": "stale-db-password"})}

    def held(self, fake: CrmSchema) -> dict[str, Any]:
        rows = fake.execute("SELECT external_id, full_name FROM crm.contacts")
        return {str(key): name for key, name in rows}

    def preload(self, fake: CrmSchema, row_ids: list[int]) -> None:
        for i in row_ids:
            fake.execute("INSERT INTO crm.contacts (external_id, full_name) VALUES (%s, 'Old')",
                         (i,))

    def sent(self, fake: CrmSchema, operation: str) -> list[list[str]]:
        """Postgres has no requests: the rows written since `forget_requests`, as one. An
        upsert inserts or updates a row; an insert only inserts."""
        kinds = ["INSERT"] if operation == "insert" else ["INSERT", "UPDATE"]
        rows = fake.execute("SELECT external_id FROM crm.writes WHERE operation = ANY(%s)",
                            (kinds,))
        return [[str(key) for (key,) in rows]]

    def forget_requests(self, fake: CrmSchema) -> None:
        fake.execute("TRUNCATE crm.writes")

    def secret_values(self, config: dict[str, Any]) -> list[str]:
        password = psycopg.conninfo.conninfo_to_dict(config["url"])["password"]
        return [*super().secret_values(config), str(password)]

    def refuse(self, fake: CrmSchema, table: Warehouse,
               row_ids: list[int]) -> dict[int, str]:
        table.execute("UPDATE warehouse.people SET score = -1 WHERE id = ANY(%s)", (row_ids,))
        return dict.fromkeys(row_ids, 'violates check constraint "score_not_negative"')

    def refusal_matches(self, expected: str, message: str) -> bool:
        return expected in message  # Postgres adds the failing row's details

    def accept(self, fake: CrmSchema, table: Warehouse, row_ids: list[int]) -> None:
        fake.execute("ALTER TABLE crm.contacts DROP CONSTRAINT score_not_negative")

    def not_found_message(self, key: str) -> str | None:
        return "no row with this key"


class SalesforceHarness(HttpApiHarness):
    connector = "salesforce"
    object_name = "Account"
    batch_limit = COLLECTION_LIMIT
    upsert_path = "/services/data/v62.0/composite/sobjects/Account/External_Id__c"
    mappings = [
        {"source": "id", "destination": "External_Id__c", "key": True},
        {"source": "name", "destination": "Name"},
        {"source": "score", "destination": "AnnualRevenue"},
    ]
    objects = {
        "Account": {"writable": True, "supports_upsert": True},
        "Contact": {}, "AccountHistory": {"writable": False},
    }
    only_these_objects = True
    fields = {
        "External_Id__c": {"external_id": True},
        "Name": {"required": True, "label": "Account Name"},
        "AnnualRevenue": {"data_type": "number"}, "NumberOfEmployees": {"data_type": "integer"},
        "Active__c": {"data_type": "boolean"}, "Last_Activity__c": {"data_type": "datetime"},
        "Founded__c": {"data_type": "date"}, "CreatedDate": {"updateable": False},
    }
    auth_error = ("fix the destination's credentials", "INVALID_SESSION_ID")

    @contextmanager
    def running(self, database_url: str) -> Iterator[FakeSalesforce]:
        with FakeSalesforce() as fake:
            yield fake  # type: ignore[misc]

    def config(self, fake: FakeSalesforce) -> dict[str, Any]:
        return {"instanceUrl": fake.url, "accessToken": fake.access_token,
                "rateLimitPerSecond": 1000}

    def rejected_credentials(self, fake: FakeSalesforce) -> dict[str, Any]:
        return {"accessToken": "00Dfake!revoked"}

    def held(self, fake: FakeSalesforce) -> dict[str, Any]:
        return {a["External_Id__c"]: a.get("Name") for a in fake.records("Account")}

    def preload(self, fake: FakeSalesforce, row_ids: list[int]) -> None:
        for i in row_ids:
            fake.add("Account", Name="Old", External_Id__c=str(i))

    def sent(self, fake: FakeSalesforce, operation: str) -> list[list[str]]:
        method, path = {"upsert": ("PATCH", self.upsert_path),
                        "insert": ("POST", "/services/data/v62.0/composite/sobjects")}[operation]
        return _keys_of([r for r in fake.requests if r.method == method and r.path == path],
                        "External_Id__c", "records")


    def send_oversize(self, fake: FakeSalesforce) -> requests.Response:
        records = [{"attributes": {"type": "Account"}, "External_Id__c": str(i), "Name": "A"}
                   for i in range(self.batch_limit + 1)]
        return requests.patch(f"{fake.url}{self.upsert_path}", timeout=30,
                              json={"allOrNone": False, "records": records},
                              headers={"Authorization": f"Bearer {fake.access_token}"})

    def rate_limited(self) -> tuple[int, Any, dict[str, str] | None]:
        return 429, [{"message": "TotalRequests Limit exceeded.",
                      "errorCode": "REQUEST_LIMIT_EXCEEDED"}], {"Retry-After": "3"}

    def server_error(self) -> tuple[int, Any]:
        return 503, [{"message": "Service Unavailable", "errorCode": "SERVER_UNAVAILABLE"}]

    def refuse(self, fake: FakeSalesforce, table: Warehouse,
               row_ids: list[int]) -> dict[int, str]:
        said = {}
        for n, i in enumerate(row_ids):
            if n % 2 == 0:
                fake.reject(str(i), "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                            "Revenue must be positive", ("AnnualRevenue",))
                said[i] = ("FIELD_CUSTOM_VALIDATION_EXCEPTION: Revenue must be positive"
                           " (fields: AnnualRevenue)")
            else:
                fake.reject(str(i), "DUPLICATE_VALUE", "duplicate value found: Name")
                said[i] = "DUPLICATE_VALUE: duplicate value found: Name"
        return said

    def accept(self, fake: FakeSalesforce, table: Warehouse, row_ids: list[int]) -> None:
        fake.clear_rejections()

    def not_found_message(self, key: str) -> str | None:
        return f"no Account has External_Id__c = '{key}'"


class MetaAudiencesHarness(HttpApiHarness):
    """An audience holds people, not records with fields: the tracked value is the hashed
    first name Meta was given, and a person is known by the EXTERN_ID key."""

    connector = "meta_audiences"
    audience = "23850000000000042"
    object_name = audience
    token = "system-user-token"
    batch_limit = MAX_ROWS
    mappings = [
        {"source": "id", "destination": "EXTERN_ID", "key": True},
        {"source": "email", "destination": "EMAIL"},
        {"source": "name", "destination": "FN"},
        {"source": "device", "destination": "MADID"},
    ]
    objects = {audience: {"label": "High value customers"}}
    fields = {name: {} for name in ("EMAIL", "PHONE", "FN", "LN", "EXTERN_ID", "MADID")}
    auth_error = ("Meta rejected the access token", "code 190")

    @contextmanager
    def running(self, database_url: str) -> Iterator[FakeMeta]:
        with FakeMeta(token=self.token, ad_account="1234") as fake:
            fake.add_audience(self.audience, "High value customers")
            yield fake

    def config(self, fake: FakeMeta) -> dict[str, Any]:
        return {"accessToken": self.token, "adAccountId": "1234", "baseUrl": fake.url,
                "rateLimitPerSecond": 1000}

    def rejected_credentials(self, fake: FakeMeta) -> dict[str, Any]:
        return {"accessToken": "expired-token"}

    def tracked(self, name: str, phone: str) -> Any:
        return pii.normalize(pii.META_RULES, "FN", name)

    def held(self, fake: FakeMeta) -> dict[str, Any]:
        return {m["EXTERN_ID"]: m.get("FN") for m in fake.audiences[self.audience].members}

    def preload(self, fake: FakeMeta, row_ids: list[int]) -> None:
        fake.add_members(self.audience, [
            {"EXTERN_ID": str(i), "FN": pii.sha256_hex("old")} for i in row_ids
        ])

    def _payloads(self, fake: FakeMeta) -> list[dict[str, Any]]:
        payloads = []
        for request in fake.requests:
            if request.method == "POST" and request.path.endswith(f"/{self.audience}/users"):
                form = parse_qs(request.body.decode())
                payloads.append(json.loads(form["payload"][0]))
        return payloads

    def sent(self, fake: FakeMeta, operation: str) -> list[list[str]]:
        assert operation == "upsert", "an audience only adds and removes people"
        batches = []
        for payload in self._payloads(fake):
            column = payload["schema"].index("EXTERN_ID")
            batches.append([row[column] for row in payload["data"]])
        return batches


    def send_oversize(self, fake: FakeMeta) -> requests.Response:
        payload = {"schema": ["EXTERN_ID"], "data": [[str(i)] for i in range(self.batch_limit + 1)]}
        return requests.post(f"{fake.url}/v23.0/{self.audience}/users", timeout=30,
                             data={"payload": json.dumps(payload), "access_token": self.token})

    def rate_limited(self) -> tuple[int, Any, dict[str, str] | None]:
        body, headers = throttled(minutes=1)
        return 400, body, headers

    def server_error(self) -> tuple[int, Any]:
        return 500, graph_error("An unknown error occurred", 1, "OAuthException")

    def refuse(self, fake: FakeMeta, table: Warehouse, row_ids: list[int]) -> dict[int, str]:
        table.execute("UPDATE warehouse.people SET device = 'bad-device-' || id"
                      " WHERE id = ANY(%s)", (row_ids,))
        return dict.fromkeys(
            row_ids, "Meta counted this row among the invalid entries: Invalid MADID format")

    def accept(self, fake: FakeMeta, table: Warehouse, row_ids: list[int]) -> None:
        table.execute("UPDATE warehouse.people"
                      " SET device = 'aece52e7-03ee-455a-b3c4-' || lpad(id::text, 12, '0')"
                      " WHERE id = ANY(%s)", (row_ids,))


class GoogleAdsCustomerMatchHarness(HttpApiHarness):
    """A Customer Match list holds people: the key is the email hashed in the warehouse (so
    retl's records and the DLQ hold a hash, never an email) and the tracked value the hashed
    phone number Google was given."""

    connector = "google_ads_customer_match"
    customer = "1234567890"
    object_name = f"customers/{customer}/userLists/555"
    batch_limit = 10_000  # the connector's; the fake refuses more than 100,000 per request
    query = (
        "SELECT id, encode(sha256(convert_to(lower(trim(email)), 'UTF8')), 'hex')"
        " AS email_sha256, name, phone, crm_id FROM warehouse.people"
    )
    mappings = [
        {"source": "email_sha256", "destination": "hashedEmail", "key": True},
        {"source": "phone", "destination": "hashedPhoneNumber"},
        {"source": "crm_id", "destination": "thirdPartyUserId"},
    ]
    objects = {object_name: {"label": "Lapsed buyers (CONTACT_INFO)"}}
    fields = {"hashedEmail": {"external_id": True}, "hashedPhoneNumber": {},
              "addressInfo.hashedFirstName": {}, "thirdPartyUserId": {}}
    auth_error = ("invalid_grant",)

    @contextmanager
    def running(self, database_url: str) -> Iterator[FakeGoogleAds]:
        with FakeGoogleAds(customer_id=self.customer, job_polls=1) as fake:
            fake.add_user_list("555", "Lapsed buyers")
            yield fake

    def config(self, fake: FakeGoogleAds) -> dict[str, Any]:
        return {
            "customerId": self.customer, "developerToken": "dev-token", "clientId": "client-id",
            "clientSecret": "client-secret", "refreshToken": "refresh-token",
            "baseUrl": fake.url, "tokenUrl": fake.token_url, "rateLimitPerSecond": 1000,
            "consentAdUserData": "GRANTED", "consentAdPersonalization": "GRANTED",
        }

    def rejected_credentials(self, fake: FakeGoogleAds) -> dict[str, Any]:
        return {"refreshToken": "revoked-refresh-token"}

    def key(self, row_id: int) -> str:
        return pii.sha256_hex(f"user{row_id}@example.com")

    def tracked(self, name: str, phone: str) -> Any:
        return pii.normalize(pii.GOOGLE_RULES, "hashedPhoneNumber", phone)

    def held(self, fake: FakeGoogleAds) -> dict[str, Any]:
        return {m["hashedEmail"]: m.get("hashedPhoneNumber")
                for m in fake.user_lists[self.object_name].members}

    def preload(self, fake: FakeGoogleAds, row_ids: list[int]) -> None:
        fake.user_lists[self.object_name].apply([
            {"create": {"userIdentifiers": [
                {"hashedEmail": self.key(i)}, {"hashedPhoneNumber": pii.sha256_hex("+10")},
            ]}} for i in row_ids
        ])

    def sent(self, fake: FakeGoogleAds, operation: str) -> list[list[str]]:
        assert operation == "upsert", "a user list only adds and removes people"
        batches = []
        for request in fake.requests:
            if request.path.endswith(":addOperations"):
                operations = request.json()["operations"]
                batches.append([
                    identifier["hashedEmail"]
                    for op in operations if "create" in op
                    for identifier in op["create"]["userIdentifiers"] if "hashedEmail" in identifier
                ])
        return batches

    def write_attempts(self, fake: FakeGoogleAds) -> int:
        """Each write begins by exchanging the refresh token for an access token (planning
        makes no call to Google, and a refused exchange leaves none to reuse)."""
        return len([r for r in fake.requests if r.path == "/token"])


    def send_oversize(self, fake: FakeGoogleAds) -> requests.Response:
        """Past the 100,000 operations an addOperations request may carry."""
        token = requests.post(fake.token_url, timeout=30, data={
            "grant_type": "refresh_token", "client_id": "client-id",
            "client_secret": "client-secret", "refresh_token": "refresh-token",
        }).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "developer-token": "dev-token"}
        job = requests.post(
            f"{fake.url}/v21/customers/{self.customer}/offlineUserDataJobs:create", timeout=30,
            headers=headers, json={"job": {"type": "CUSTOMER_MATCH_USER_LIST",
                                           "customerMatchUserListMetadata": {
                                               "userList": self.object_name}}},
        ).json()["resourceName"]
        operations = [{"create": {"userIdentifiers": [{"hashedEmail": f"{i:064x}"}]}}
                      for i in range(MAX_OPERATIONS + 1)]
        return requests.post(f"{fake.url}/v21/{job}:addOperations", headers=headers,
                             json={"operations": operations}, timeout=60)

    def rate_limited(self) -> tuple[int, Any, dict[str, str] | None]:
        return 429, quota_exhausted(1), None

    def server_error(self) -> tuple[int, Any]:
        return 503, {"error": {"code": 503, "status": "UNAVAILABLE",
                               "message": "The service is currently unavailable."}}

    def refuse(self, fake: FakeGoogleAds, table: Warehouse,
               row_ids: list[int]) -> dict[int, str]:
        # A CRM id on a contact-info list: Google refuses those operations, and only those.
        table.execute("UPDATE warehouse.people SET crm_id = 'crm-' || id WHERE id = ANY(%s)",
                      (row_ids,))
        return dict.fromkeys(row_ids, (
            "INCOMPATIBLE_UPLOAD_KEY_TYPE: Upload data is not compatible with the upload key type"
            " of the list."
        ))

    def accept(self, fake: FakeGoogleAds, table: Warehouse, row_ids: list[int]) -> None:
        table.execute("UPDATE warehouse.people SET crm_id = NULL WHERE id = ANY(%s)", (row_ids,))


# Every destination connector, as the contract suite drives it: a new destination adds its line.
HARNESSES: list[DestinationHarness] = [
    HttpHarness(),
    HubSpotHarness(),
    IterableHarness(),
    PostgresHarness(),
    SalesforceHarness(),
    MetaAudiencesHarness(),
    GoogleAdsCustomerMatchHarness(),
]
