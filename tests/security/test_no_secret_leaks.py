"""No secret a workspace configured ever shows up again: distinctive secrets on every kind of
source and destination, every API call a user makes on them (create, get, list, update, test,
discovery, a run that fails, its DLQ), and a search of every response body and every log line
(DEBUG included, where HTTP libraries log the URLs they call) for any of the secrets."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.services import syncs
from tests.conftest import bearer
from tests.engine.conftest import SyncSetup
from tests.fakes.base import FakeServer, Request, Response
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.iterable import FakeIterable
from tests.fakes.salesforce import FakeSalesforce
from tests.security.conftest import API

SECRETS = {
    "source password": "SRC-pg-Pass-1q2w3e",
    "http header": "HTTP-hdr-Tok-3e4r5t",
    "http api key header": "HTTP-key-5t6y7u",
    "http url password": "HTTP-url-Pass-9o0p1a",
    "http url token": "HTTP-url-Tok-7u8i9o",
    "hubspot token": "HUB-pat-Tok-a1s2d3",
    "iterable key": "ITR-api-Key-d3f4g5",
    "salesforce access token": "SF-acc-Tok-g5h6j7",
    "salesforce client secret": "SF-cli-Sec-j7k8l9",
    "salesforce refresh token": "SF-ref-Tok-l9z0x1",
    "postgres destination password": "PGD-pass-x1c2v3",
}


class EchoingReceiver(FakeServer):
    """Refuses every request with 400, quoting the request line and headers it was sent, as a
    careless receiver's error page does."""

    def handle(self, request: Request) -> Response:
        sent = request.headers
        return Response(400, f"cannot take {sent.get('authorization')} {sent.get('x-api-key')}"
                             f" {request.query} {request.path}")

    def __init__(self) -> None:
        super().__init__()
        handler = self._server.RequestHandlerClass
        handler.do_OPTIONS = handler._serve  # type: ignore[attr-defined]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder:
    """The API client's answers, kept to be searched."""

    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key, self.bodies = client, key, []

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = client_call = getattr(self.client, method)(
            f"{API}{path}", json=body, headers=bearer(self.key)
        )
        self.bodies.append(client_call.get_data(as_text=True))
        return response.get_json()


@pytest.fixture
def vendors() -> Iterator[dict[str, FakeServer]]:
    """Fakes that refuse the configured credentials (they expect others)."""
    with ExitStack() as stack:
        yield {
            "http": stack.enter_context(EchoingReceiver()),
            "hubspot": stack.enter_context(FakeHubSpot(token="pat-expected-other")),
            "iterable": stack.enter_context(FakeIterable(api_key="expected-other-key")),
            "salesforce": stack.enter_context(FakeSalesforce(
                access_token="00Dexpected!other", client_secret="expected-other",
                refresh_token="expected-other-refresh")),
        }


def _destination_configs(vendors: dict[str, FakeServer], warehouse_url: str) -> dict[str, dict]:
    host = urlsplit(vendors["http"].url).netloc
    pg = urlsplit(warehouse_url)
    return {
        "http": {
            "url": f"http://svc:{SECRETS['http url password']}@{host}/in"
                   f"?token={SECRETS['http url token']}&region=eu",
            "headers": {"Authorization": f"Bearer {SECRETS['http header']}",
                        "X-Api-Key": SECRETS["http api key header"]},
            "resultsPath": "results",
        },
        "hubspot": {"accessToken": SECRETS["hubspot token"], "baseUrl": vendors["hubspot"].url},
        "iterable": {"apiKey": SECRETS["iterable key"], "baseUrl": vendors["iterable"].url},
        "salesforce": {
            "instanceUrl": vendors["salesforce"].url, "loginUrl": vendors["salesforce"].url,
            "accessToken": SECRETS["salesforce access token"], "clientId": "3MVG9fake.consumer.key",
            "clientSecret": SECRETS["salesforce client secret"],
            "refreshToken": SECRETS["salesforce refresh token"],
        },
        "postgres": {
            # A server that is not there: the run fails connecting.
            "url": f"postgresql://{pg.username}:{SECRETS['postgres destination password']}"
                   f"@127.0.0.1:{_closed_port()}/crm",
        },
    }


OBJECTS = {"http": "records", "hubspot": "contacts", "iterable": "users", "salesforce": "Account",
           "postgres": "contacts"}
KEYS = {"http": "id", "hubspot": "email", "iterable": "email", "salesforce": "External_Id__c",
        "postgres": "id"}


def test_no_configured_secret_appears_in_any_response_or_log_line(
    client, account, driver, warehouse, warehouse_url, reader_url, vendors, caplog
):
    caplog.set_level(logging.DEBUG)
    warehouse.insert(3)
    api = Recorder(client, account.key)
    source_url = reader_url.replace("@", f":{SECRETS['source password']}@", 1)

    source = api.call("post", "/sources", {"name": "warehouse", "connector": "postgres",
                                           "config": {"url": source_url}})["data"]
    api.call("get", f"/sources/{source['id']}")
    api.call("get", "/sources")
    api.call("put", f"/sources/{source['id']}", {"name": "warehouse (renamed)"})
    api.call("post", f"/sources/{source['id']}/test")

    runs = []
    for connector, config in _destination_configs(vendors, warehouse_url).items():
        created = api.call("post", "/destinations", {"name": connector, "connector": connector,
                                                     "config": config})
        destination = created["data"]
        api.call("get", f"/destinations/{destination['id']}")
        api.call("get", f"/destinations?connector={connector}")
        api.call("put", f"/destinations/{destination['id']}", {"config": {"rateLimitPerSecond": 50}})
        api.call("post", f"/destinations/{destination['id']}/test")
        api.call("get", f"/objects?destination_id={destination['id']}")
        api.call("get", f"/fields?destination_id={destination['id']}&object_name={OBJECTS[connector]}")
        sync = syncs.create(account.workspace_id, {
            "name": f"to {connector}", "sourceId": source["id"], "destinationId": destination["id"],
            "objectName": OBJECTS[connector], "sourceQuery": "SELECT * FROM warehouse.people",
            "fieldMappings": [{"source": "email" if KEYS[connector] == "email" else "id",
                               "destination": KEYS[connector], "key": True}],
            "syncMode": "upsert",
        })
        run = driver.run(SyncSetup(account.workspace_id, sync.id, source["id"], destination["id"]))
        runs.append((run, sync.id))
        api.call("get", f"/runs/{run.id}")
        api.call("get", f"/dlq?sync_id={sync.id}")
        api.call("get", f"/destinations/{destination['id']}")

    # A source query that fails, and a source that cannot be reached.
    broken = syncs.create(account.workspace_id, {
        "name": "broken", "sourceId": source["id"], "destinationId": destination["id"],
        "objectName": "contacts", "sourceQuery": "SELECT * FROM warehouse.nothing_here",
        "fieldMappings": [{"source": "id", "destination": "id", "key": True}],
        "syncMode": "upsert",
    })
    runs.append((driver.run(SyncSetup(account.workspace_id, broken.id, source["id"],
                                      destination["id"])), broken.id))
    api.call("get", "/runs?limit=100")
    api.call("get", "/destinations?limit=100")

    # Every run failed, or refused every record (the echoing receiver's 400s).
    assert all(run.status == "failed" or run.rows_failed == run.rows_read for run, _ in runs), [
        (run.status, run.error) for run, _ in runs]
    assert any(vendor.requests for vendor in vendors.values())
    texts = api.bodies + [run.error or "" for run, _ in runs] + [caplog.text] + [
        record.getMessage() for record in caplog.records
    ]
    leaks = {name for name, secret in SECRETS.items() for text in texts if secret in text}
    assert leaks == set()
