"""The egress policy: what a workspace's sources and destinations may connect to.

A fake internal service on loopback plays the metadata endpoint and the services a workspace
must not reach; the tests allow loopback (tests/conftest.py), so the "closed by default" cases
clear RETL_EGRESS_ALLOW for themselves."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest

from connectors.sources.postgres import PostgresSource
from shared.services import connections, syncs
from tests.api.conftest import assert_error
from tests.conftest import bearer
from tests.fakes.http_sink import FakeHttpSink
from tests.fakes.internal import FakeInternalService
from tests.security.conftest import API, own_database


def _create(client, key: str, kind: str, connector: str, config: dict):
    body = {"name": "probe", "connector": connector, "config": config}
    return client.post(f"{API}/{kind}s", json=body, headers=bearer(key))


def _created(client, key: str, kind: str, connector: str, config: dict) -> dict:
    response = _create(client, key, kind, connector, config)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["data"]


def _tested(client, key: str, kind: str, connection_id: str) -> dict:
    response = client.post(f"{API}/{kind}s/{connection_id}/test", headers=bearer(key))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]["attributes"]


METADATA_CONFIGS = [
    ("http", {"url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}, "/config/url"),
    ("http", {"url": "http://[fd00:ec2::254]/latest/api/token", "method": "PUT"}, "/config/url"),
    ("http", {"url": "http://metadata.google.internal/computeMetadata/v1/"}, "/config/url"),
    ("http", {"url": "http://169.254.170.2/v2/credentials"}, "/config/url"),
    ("http", {"url": "http://[::ffff:169.254.169.254]/"}, "/config/url"),
    ("hubspot", {"accessToken": "pat-x", "baseUrl": "http://169.254.169.254"}, "/config/baseUrl"),
    ("iterable", {"apiKey": "k-1234", "baseUrl": "http://metadata.google.internal"}, "/config/baseUrl"),
    ("salesforce", {"instanceUrl": "http://169.254.169.254", "accessToken": "00D!x"}, "/config/instanceUrl"),
    ("salesforce", {"instanceUrl": "https://acme.my.salesforce.com", "clientId": "c",
                    "refreshToken": "r-123", "loginUrl": "http://169.254.169.254"}, "/config/loginUrl"),
]


@pytest.mark.parametrize(("connector", "config", "pointer"), METADATA_CONFIGS)
def test_metadata_and_link_local_addresses_are_refused_when_a_destination_is_saved(
    client, api_key, connector, config, pointer
):
    assert_error(_create(client, api_key, "destination", connector, config), 422, pointer)


def test_link_local_stays_refused_whatever_RETL_EGRESS_ALLOW_opens(client, api_key, egress):
    egress(allow="169.254.0.0/16,0.0.0.0/0,::/0,metadata.google.internal")

    for connector, config, pointer in METADATA_CONFIGS:
        assert_error(_create(client, api_key, "destination", connector, config), 422, pointer)


def test_loopback_is_closed_by_default_at_save_and_when_a_name_resolves_to_it(
    client, api_key, egress, internal: FakeInternalService
):
    egress(allow=None)
    port = urlsplit(internal.url).port
    literal = {"url": f"http://127.0.0.1:{port}/latest/api/token", "method": "PUT"}
    assert_error(_create(client, api_key, "destination", "http", literal), 422, "/config/url")

    # A name (or a number the resolver reads as an address) is only known to be loopback once
    # it resolves: refused when it connects.
    for host in ("localhost", "2130706433", "0x7f.1", "127.1"):
        by_name = {"url": f"http://{host}:{port}/latest/api/token", "method": "PUT",
                   "headers": {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}}
        destination = _created(client, api_key, "destination", "http", by_name)
        attributes = _tested(client, api_key, "destination", destination["id"])

        assert attributes["status"] == "error", host
        assert "refused" in attributes["status_message"], host
    assert internal.requests == []


def test_a_run_never_reaches_a_closed_address(account, driver, egress, internal: FakeInternalService):
    egress(allow=None)
    port = urlsplit(internal.url).port
    source = connections.create(account.workspace_id, "source", "memory", "duckdb", {"path": ":memory:"})
    destination = connections.create(
        account.workspace_id, "destination", "internal", "http",
        {"url": f"http://localhost:{port}/latest/api/token", "method": "PUT"},
    )
    sync = syncs.create(account.workspace_id, {
        "name": "probe", "sourceId": source.record.id, "destinationId": destination.record.id,
        "objectName": "records", "sourceQuery": "SELECT 1 AS id, 'a' AS name",
        "fieldMappings": [{"source": "id", "destination": "id", "key": True},
                          {"source": "name", "destination": "name"}],
        "syncMode": "upsert",
    })
    from tests.engine.conftest import SyncSetup

    run = driver.run(SyncSetup(account.workspace_id, sync.id, source.record.id, destination.record.id))

    assert run.status == "failed"
    assert "refused" in (run.error or "")
    assert internal.requests == []


def test_RETL_EGRESS_ALLOW_opens_hosts_by_name_and_by_cidr(client, api_key, egress):
    with FakeHttpSink() as sink:
        port = urlsplit(sink.url).port
        egress(allow="localhost")
        by_name = _created(client, api_key, "destination", "http", {"url": f"http://localhost:{port}"})
        assert _tested(client, api_key, "destination", by_name["id"])["status"] == "connected"

        egress(allow="127.0.0.0/8")
        by_cidr = _created(client, api_key, "destination", "http", {"url": sink.url})
        assert _tested(client, api_key, "destination", by_cidr["id"])["status"] == "connected"


def test_private_ranges_are_open_unless_RETL_EGRESS_DENY_closes_them(client, api_key, egress):
    config = {"url": "http://10.20.30.40:8080/in"}
    assert _create(client, api_key, "destination", "http", config).status_code == 201

    egress(deny="10.0.0.0/8,172.16.0.0/12,192.168.0.0/16")

    assert_error(_create(client, api_key, "destination", "http", config), 422, "/config/url")


def _own_database_urls() -> tuple[list[str], list[str]]:
    """retl's own database spelled as a workspace might: (refused when saved, refused when
    connecting)."""
    host, port, name = own_database()
    at_save = [
        f"postgresql://postgres@127.0.0.1:{port}/{name}",
        f"postgresql://postgres@127.0.0.2:{port}/{name}",
        f"postgresql://postgres@[::ffff:127.0.0.1]:{port}/{name}",
        f"postgresql://postgres@/{name}?host=127.0.0.1&port={port}",
        f"postgresql://postgres@localhost:{port}/{name}?hostaddr=127.0.0.1",
        f"postgresql://postgres@/{name}?host=/var/run/postgresql",
        f"postgresql://postgres@/{name}?host=/tmp&port={port}",
        f"postgresql://postgres@localhost:{port}/{name}?service=retl",
        f"postgresql://postgres@localhost:{port}/{name}?passfile=/root/.pgpass",
        f"postgresql://postgres@localhost:{port}/{name}?sslkey=/etc/ssl/private/key.pem",
        f"postgresql://localhost:{port}/{name}",  # no user: libpq would take the worker's
    ]
    at_connect = [
        f"postgresql://postgres@localhost:{port}/{name}",
        f"postgresql://postgres@LOCALHOST.:{port}/{name}",
    ]
    return at_save, at_connect


@pytest.mark.parametrize("kind", ["source", "destination"])
def test_retl_own_database_is_refused_however_it_is_spelled(client, api_key, kind):
    at_save, at_connect = _own_database_urls()
    for url in at_save:
        assert_error(_create(client, api_key, kind, "postgres", {"url": url}), 422, "/config/url")
    for url in at_connect:
        connection = _created(client, api_key, kind, "postgres", {"url": url})
        attributes = _tested(client, api_key, kind, connection["id"])
        assert attributes["status"] == "error", url
        assert "reserved for retl" in attributes["status_message"], url


def test_another_database_on_retl_own_server_is_allowed(client, api_key, reader_url):
    source = _created(client, api_key, "source", "postgres", {"url": reader_url})

    assert _tested(client, api_key, "source", source["id"])["status"] == "connected"


def test_a_sync_reading_retl_own_tables_fails_and_sends_nothing(account, driver, warehouse):
    _, port, name = own_database()
    with FakeHttpSink() as sink:
        source = connections.create(
            account.workspace_id, "source", "retl", "postgres",
            {"url": f"postgresql://postgres@localhost:{port}/{name}"},
        )
        destination = connections.create(
            account.workspace_id, "destination", "receiver", "http", {"url": sink.url},
        )
        sync = syncs.create(account.workspace_id, {
            "name": "takeover", "sourceId": source.record.id,
            "destinationId": destination.record.id, "objectName": "records",
            "sourceQuery": "SELECT id, name FROM workspaces",
            "fieldMappings": [{"source": "id", "destination": "id", "key": True},
                              {"source": "name", "destination": "name"}],
            "syncMode": "upsert",
        })
        from tests.engine.conftest import SyncSetup

        run = driver.run(SyncSetup(account.workspace_id, sync.id, source.record.id,
                                   destination.record.id))

        assert run.status == "failed"
        assert "reserved for retl" in (run.error or "")
        assert sink.received == []


def test_retl_own_redis_is_refused(client, api_key):
    port = urlsplit(os.environ["RETL_REDIS_URL"]).port or 6379
    literal = {"url": f"http://127.0.0.1:{port}/"}
    assert_error(_create(client, api_key, "destination", "http", literal), 422, "/config/url")

    destination = _created(client, api_key, "destination", "http", {"url": f"http://localhost:{port}/"})
    attributes = _tested(client, api_key, "destination", destination["id"])

    assert attributes["status"] == "error"
    assert "reserved for retl" in attributes["status_message"]


def test_the_workers_own_PG_environment_never_reaches_a_workspace_connection(
    monkeypatch, tmp_path
):
    _, port, name = own_database()
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[retl]\ndbname={name}\nhost=127.0.0.1\nport={port}\n")
    monkeypatch.setenv("PGDATABASE", name)
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("PGSERVICE", "retl")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=retl_private")
    # No database in the URL: libpq would take PGDATABASE (or the service's), retl's own.
    # The role is the server's superuser here, so that it may connect to its own database.
    source = PostgresSource({"url": f"postgresql://postgres@localhost:{port}"},
                            allow_privileged=True)
    try:
        (rows,) = list(source.stream("SELECT current_database(), current_setting('search_path')"))
    finally:
        source.close()

    assert rows == [("postgres", '"$user", public')]


def test_a_redirect_to_another_host_is_not_followed(client, api_key, internal: FakeInternalService):
    with FakeInternalService(redirect_to=f"{internal.url}/latest/meta-data/") as redirector:
        destination = _created(client, api_key, "destination", "iterable",
                               {"apiKey": "iterable-key-Never-Elsewhere", "baseUrl": redirector.url})
        attributes = _tested(client, api_key, "destination", destination["id"])

        assert attributes["status"] == "error"
        assert len(redirector.requests) == 1
    # The API key stayed with the host it was given for.
    assert internal.requests == []


@pytest.mark.parametrize("path", [
    "https://example.com/warehouse.duckdb", "s3://bucket/warehouse.duckdb", "md:warehouse",
    "hf://datasets/org/data/warehouse.duckdb",
])
def test_a_duckdb_path_that_is_a_url_is_refused_before_it_is_opened(client, api_key, path):
    assert_error(_create(client, api_key, "source", "duckdb", {"path": path}), 422, "/config/path")
