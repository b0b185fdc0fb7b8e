"""Operations endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import psycopg
import pytest
from openapi_spec_validator import validate

from shared.settings import get_settings
from tests.api.conftest import API, assert_error, insert_dlq_entry, insert_run
from tests.conftest import bearer

METRICS_TOKEN = "scrape-token-Do-Not-Leak-8K"


@pytest.fixture
def metrics_token(monkeypatch):
    monkeypatch.setenv("RETL_METRICS_TOKEN", METRICS_TOKEN)
    get_settings.cache_clear()
    yield METRICS_TOKEN
    monkeypatch.delenv("RETL_METRICS_TOKEN")
    get_settings.cache_clear()

SEED_OPERATIONS = [
    ("get", "/syncs"), ("post", "/syncs"), ("get", "/syncs/{id}"), ("put", "/syncs/{id}"),
    ("delete", "/syncs/{id}"), ("post", "/sync/run"), ("post", "/sync/toggle"), ("get", "/destinations"),
    ("get", "/objects"), ("get", "/fields"), ("get", "/runs"), ("get", "/dlq"), ("get", "/dlq/stats"),
    ("post", "/dlq/resolve"),
]


def test_healthz_answers_ok(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_checks_postgres_and_redis(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}


def test_ops_endpoints_answer_under_v1_too(client):
    assert client.get("/v1/healthz").get_json() == {"status": "ok"}
    assert client.get("/v1/api/openapi.json").get_json() == client.get("/api/openapi.json").get_json()


def test_metrics_count_requests_and_show_runs_and_open_dlq_entries(client, api_key, sync, database_url, metrics_token):
    run = insert_run(database_url, sync["id"], status="failed")
    insert_dlq_entry(database_url, sync["id"], run, key="a", error_code="RATE_LIMIT")
    insert_dlq_entry(database_url, sync["id"], run, key="b", error_code="RATE_LIMIT")
    client.get(f"{API}/syncs", headers=bearer(api_key))
    client.get(f"{API}/syncs", headers=bearer(api_key))

    response = client.get("/metrics", headers=bearer(metrics_token))

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    lines = response.get_data(as_text=True).splitlines()
    requests = [line for line in lines if line.startswith("retl_http_requests_total{")
                and 'endpoint="syncs.list_syncs"' in line and 'status="200"' in line]
    assert requests and float(requests[0].rsplit(" ", 1)[1]) >= 2
    assert 'retl_runs{status="failed"} 1.0' in lines
    assert 'retl_dlq_open_entries{error_code="RATE_LIMIT"} 2.0' in lines
    assert any(line.startswith("retl_http_request_seconds_bucket{") for line in lines)


def test_metrics_never_show_secrets_keys_or_workspaces(client, api_key, sync, database_url, metrics_token):
    run = insert_run(database_url, sync["id"], status="failed")
    insert_dlq_entry(database_url, sync["id"], run, key="a")
    client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key))
    client.get(f"{API}/syncs/{sync['id']}x", headers=bearer(api_key))

    text = client.get("/metrics", headers=bearer(metrics_token)).get_data(as_text=True)

    assert "retl_http_requests_total{" in text
    assert api_key not in text and METRICS_TOKEN not in text
    assert "sink-token" not in text
    with psycopg.connect(database_url) as conn:
        workspace_id, name = conn.execute("SELECT id, name FROM workspaces WHERE name = 'acme'").fetchone()
    for secret in (workspace_id, name, sync["id"], run, sync["attributes"]["name"]):
        assert secret not in text


def test_metrics_are_off_without_a_token_setting(client):
    error = assert_error(client.get("/metrics"), 404)

    assert "RETL_METRICS_TOKEN" in error["detail"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {METRICS_TOKEN}", METRICS_TOKEN])
def test_metrics_need_the_token_as_a_bearer(client, metrics_token, authorization):
    headers = {"Authorization": authorization} if authorization else {}

    assert_error(client.get("/metrics", headers=headers), 401)
    assert client.get("/metrics", headers=bearer(metrics_token)).status_code == 200


def test_openapi_document_lists_every_seed_endpoint_with_its_parameters(client):
    response = client.get("/api/openapi.json")

    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for method, path in SEED_OPERATIONS:
        assert method in paths.get(API + path, {}), (method, path)
    list_syncs = {p["name"]: p for p in paths[f"{API}/syncs"]["get"]["parameters"]}
    assert {"destination_id", "enabled", "limit", "cursor"} <= set(list_syncs)
    assert list_syncs["limit"]["schema"]["default"] == 50
    dlq = {p["name"]: p for p in paths[f"{API}/dlq"]["get"]["parameters"]}
    assert dlq["resolved"]["schema"]["default"] is False
    create = paths[f"{API}/syncs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = document["components"]["schemas"][create["$ref"].rsplit("/", 1)[1]]
    assert {"name", "sourceQuery", "destinationId", "objectName", "fieldMappings", "syncMode"} <= set(body["required"])
    assert body["properties"]["syncMode"]["enum"] == ["upsert", "insert", "update", "delete", "mirror"]


def test_openapi_document_is_valid_openapi_3(client):
    document = client.get("/api/openapi.json").get_json()

    validate(document)  # raises on any violation of the OpenAPI 3 schema


def test_openapi_document_tells_what_the_server_answers(client):
    paths = client.get("/api/openapi.json").get_json()["paths"]
    document = client.get("/api/openapi.json").get_json()

    update = paths[f"{API}/syncs/{{id}}"]["put"]["requestBody"]["content"]["application/json"]["schema"]
    update_schema = document["components"]["schemas"][update["$ref"].rsplit("/", 1)[1]]
    assert "required" not in update_schema and "fieldMappings" in update_schema["properties"]
    trigger = paths[f"{API}/sync/run"]["post"]["responses"]
    assert set(trigger) >= {"202", "400", "401", "404", "413", "422", "503"} and "200" not in trigger
    shapes = trigger["202"]["content"]["application/json"]["schema"]["oneOf"]
    assert [s["properties"]["data"]["type"] for s in shapes] == ["object", "array"]
    for path in ("/syncs", "/destinations", "/sources", "/api-keys"):
        assert set(paths[API + path]["post"]["responses"]) & {"200", "201", "202"} == {"201"}, path
    assert "202" in paths[f"{API}/runs/{{id}}/cancel"]["post"]["responses"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"401", "503"} <= statuses and "default" not in statuses, (method, path)
            error = operation["responses"]["401"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/Errors"}


def test_a_partial_update_and_a_list_trigger_answer_as_documented(client, api_key, sync):
    updated = client.put(f"{API}/syncs/{sync['id']}", json={"name": "renamed"}, headers=bearer(api_key))
    triggered = client.post(f"{API}/sync/run", json={"syncIds": [sync["id"]]}, headers=bearer(api_key))

    assert updated.status_code == 200 and updated.get_json()["data"]["attributes"]["name"] == "renamed"
    assert triggered.status_code == 202 and isinstance(triggered.get_json()["data"], list)
