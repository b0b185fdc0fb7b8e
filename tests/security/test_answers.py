"""Answers stay where they belong: what an internal service answers does not come back to the
workspace that pointed a destination at it, and a connection test does not tell one closed or
foreign port from another."""

from __future__ import annotations

import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shared.services import connections, syncs
from tests.conftest import bearer
from tests.engine.conftest import SyncSetup
from tests.fakes.internal import SECRET_ACCESS_KEY, FakeInternalService
from tests.security.conftest import API


def _internal_sync(account, url: str, **config) -> SyncSetup:
    source = connections.create(account.workspace_id, "source", "memory", "duckdb", {"path": ":memory:"})
    destination = connections.create(account.workspace_id, "destination", "internal", "http",
                                     {"url": url, **config})
    sync = syncs.create(account.workspace_id, {
        "name": "probe", "sourceId": source.record.id, "destinationId": destination.record.id,
        "objectName": "records",
        "sourceQuery": "SELECT i AS id, 'n' || i AS name FROM range(3) t(i)",
        "fieldMappings": [{"source": "id", "destination": "id", "key": True},
                          {"source": "name", "destination": "name"}],
        "syncMode": "upsert",
    })
    return SyncSetup(account.workspace_id, sync.id, source.record.id, destination.record.id)


def _dlq_messages(client, key: str, sync_id: str) -> list[str]:
    response = client.get(f"{API}/dlq?sync_id={sync_id}&limit=100", headers=bearer(key))
    return [item["attributes"]["message"] for item in response.get_json()["data"]]


def test_an_internal_service_answer_does_not_come_back_through_the_dlq(
    client, account, driver, internal: FakeInternalService
):
    setup = _internal_sync(
        account, f"{internal.url}/latest/api/token", method="PUT", resultsPath="results",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
    )

    run = driver.run(setup)

    messages = _dlq_messages(client, account.key, setup.sync_id)
    assert run.rows_failed == 3 and len(messages) == 3
    for message in messages:
        assert SECRET_ACCESS_KEY not in message
        assert message.startswith("HTTP 200: ")
        assert len(message) <= 300


def test_a_refusal_page_is_quoted_with_its_status_and_at_most_200_characters(
    client, account, driver
):
    with FakeInternalService(status=404) as internal:
        setup = _internal_sync(account, f"{internal.url}/admin")
        run = driver.run(setup)

    (message, *_) = _dlq_messages(client, account.key, setup.sync_id)
    assert run.rows_failed == 3
    assert message.startswith("HTTP 404: ")
    assert len(message) <= len("HTTP 404: ") + 200
    assert SECRET_ACCESS_KEY not in message


@contextmanager
def _tcp_server(answer: bytes | None) -> Iterator[int]:
    """A TCP service on loopback that is not HTTP: it sends `answer` (or nothing) and closes."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            if answer:
                self.request.sendall(answer)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _test_outcome(client, key: str, kind: str, connector: str, config: dict) -> tuple[str, str]:
    body = {"name": "probe", "connector": connector, "config": config}
    created = client.post(f"{API}/{kind}s", json=body, headers=bearer(key)).get_json()["data"]
    attributes = client.post(f"{API}/{kind}s/{created['id']}/test", headers=bearer(key)).get_json()["data"]["attributes"]
    return attributes["status"], re.sub(r":\d+", ":PORT", attributes["status_message"] or "")


@pytest.mark.parametrize(("kind", "connector", "config"), [
    ("destination", "http", lambda port: {"url": f"http://127.0.0.1:{port}/in"}),
    ("destination", "hubspot", lambda port: {"accessToken": "pat-1", "baseUrl": f"http://127.0.0.1:{port}"}),
    ("source", "postgres", lambda port: {"url": f"postgresql://u@127.0.0.1:{port}/db"}),
])
def test_a_connection_test_does_not_tell_closed_ports_from_foreign_services(
    client, api_key, kind, connector, config
):
    outcomes = set()
    with _tcp_server(b"SSH-2.0-OpenSSH_9.6\r\n") as ssh, _tcp_server(None) as silent:
        for port in (_closed_port(), ssh, silent):
            outcomes.add(_test_outcome(client, api_key, kind, connector, config(port)))

    assert len(outcomes) == 1, outcomes
    ((status, message),) = outcomes
    assert status == "error" and "cannot reach" in message
