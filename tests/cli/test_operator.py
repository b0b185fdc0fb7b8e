"""The operator commands against a running API server (and, for runs, a running worker): what
they print, their JSON, their exit codes, and API errors as one line on stderr."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from shared.services import connections, runs, syncs
from shared.services.auth import create_api_key
from tests.cli.conftest import free_port, retl
from tests.fakes.http_sink import FakeHttpSink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PEOPLE = 30
REFUSED = {"7", "19"}


@pytest.fixture
def sink() -> Iterator[FakeHttpSink]:
    with FakeHttpSink() as fake:
        yield fake


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute(
            "CREATE TABLE people AS SELECT i AS id, 'user' || i || '@example.com' AS email"
            f" FROM range(1, {PEOPLE + 1}) AS t(i)"
        )
    return path


class Setup:
    def __init__(self, warehouse: Path, sink_url: str, **destination_config: Any) -> None:
        issued = create_api_key("ops")
        self.key = issued.key
        source = connections.create(issued.workspace_id, "source", "warehouse", "duckdb",
                                    {"path": str(warehouse)})
        destination = connections.create(
            issued.workspace_id, "destination", "receiver", "http",
            {"url": sink_url, "resultsPath": "results", "fields": ["id", "email"],
             **destination_config},
        )
        self.destination_id = destination.record.id
        self.workspace_id = issued.workspace_id
        self.sync_id = syncs.create(issued.workspace_id, {
            "name": "people to receiver", "sourceId": source.record.id,
            "destinationId": destination.record.id, "objectName": "records",
            "sourceQuery": "SELECT id, email FROM people", "syncMode": "upsert",
            "fieldMappings": [{"source": "id", "destination": "id", "key": True},
                              {"source": "email", "destination": "email"}],
        }).id


def _json(result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_syncs_list_show_pause_and_resume(api_url, warehouse, sink):
    setup = Setup(warehouse, sink.url)

    listed = retl("syncs", "list", url=api_url, key=setup.key)
    assert listed.exit_code == 0, listed.output
    assert setup.sync_id in listed.stdout and "people to receiver" in listed.stdout

    as_json = _json(retl("syncs", "list", "--json", url=api_url, key=setup.key))
    assert [item["id"] for item in as_json["data"]] == [setup.sync_id]
    assert as_json["meta"]["page"] == {"limit": 50, "cursor": None}

    paused = _json(retl("syncs", "pause", setup.sync_id, "--json", url=api_url, key=setup.key))
    assert paused["data"]["attributes"]["enabled"] is False
    shown = retl("syncs", "show", setup.sync_id, url=api_url, key=setup.key)
    assert shown.exit_code == 0 and "SELECT id, email FROM people" in shown.stdout
    assert any(line.split()[:2] == ["enabled", "no"] for line in shown.stdout.splitlines())

    resumed = _json(retl("syncs", "resume", setup.sync_id, "--json", url=api_url, key=setup.key))
    assert resumed["data"]["attributes"]["enabled"] is True


def test_run_wait_follows_the_run_and_the_refused_records_are_in_the_dlq(
    api_url, worker, warehouse, sink
):
    setup = Setup(warehouse, sink.url)
    sink.reject_keys(REFUSED, "email is on a blocklist")

    waited = retl("syncs", "run", setup.sync_id, "--wait", url=api_url, key=setup.key)

    assert waited.exit_code == 0, waited.output
    assert any(line.split() == ["status", "succeeded"] for line in waited.stdout.splitlines())
    assert "written 28 · failed 2" in waited.stderr  # the bar's last state
    assert len(sink.store) == PEOPLE - len(REFUSED)

    run_id = re.search(r"retl_run_\w+", waited.stdout).group()
    listed_runs = retl("runs", "list", "--sync", setup.sync_id, "--status", "succeeded",
                       url=api_url, key=setup.key)
    assert run_id in listed_runs.stdout
    shown = _json(retl("runs", "show", run_id, "--json", url=api_url, key=setup.key))
    assert shown["data"]["attributes"]["rows_written"] == PEOPLE - len(REFUSED)

    entries = _json(retl("dlq", "list", "--sync", setup.sync_id, "--json", url=api_url, key=setup.key))
    refused = {str(e["attributes"]["record_keys"]["id"]): e["id"] for e in entries["data"]}
    assert set(refused) == REFUSED
    table = retl("dlq", "list", url=api_url, key=setup.key)
    assert all(entry_id in table.stdout for entry_id in refused.values())
    assert "email is on a blocklist" in table.stdout

    stats = retl("dlq", "stats", url=api_url, key=setup.key)
    assert stats.stdout.split()[-3:] == ["2", "0", "2"]  # open, resolved, DESTINATION_VALIDATION

    resolved = retl("dlq", "resolve", *refused.values(), "--resolution", "skipped",
                    url=api_url, key=setup.key)
    assert resolved.exit_code == 0 and "resolved 2 entries" in resolved.stdout
    after = _json(retl("dlq", "stats", "--json", url=api_url, key=setup.key))["data"]["attributes"]
    assert (after["open_count"], after["resolved_count"]) == (0, 2)


def test_run_wait_exits_non_zero_when_the_run_fails(api_url, worker, warehouse):
    with FakeHttpSink(required_headers={"Authorization": "Bearer right"}) as sink:
        setup = Setup(warehouse, sink.url, headers={"Authorization": "Bearer wrong"})
        waited = retl("syncs", "run", setup.sync_id, "--wait", "--json", url=api_url, key=setup.key)

    assert waited.exit_code == 1, waited.output
    run = json.loads(waited.stdout)["data"]["attributes"]
    assert run["status"] == "failed" and run["error"]
    assert sink.store == {}


def test_destinations_test_objects_and_fields(api_url, warehouse, sink):
    setup = Setup(warehouse, sink.url)
    unreachable = connections.create(setup.workspace_id, "destination", "nobody home", "http",
                                     {"url": f"http://127.0.0.1:{free_port()}/"}).record.id

    listed = retl("destinations", "list", url=api_url, key=setup.key)
    assert setup.destination_id in listed.stdout and unreachable in listed.stdout

    tested = retl("destinations", "test", setup.destination_id, url=api_url, key=setup.key)
    assert tested.exit_code == 0 and f"{setup.destination_id}: connected" in tested.stdout
    failed = retl("destinations", "test", unreachable, url=api_url, key=setup.key)
    assert failed.exit_code == 1 and "cannot reach" in failed.stdout

    objects = _json(retl("objects", setup.destination_id, "--json", url=api_url, key=setup.key))
    assert [item["id"] for item in objects["data"]] == ["records"]
    table = retl("objects", setup.destination_id, url=api_url, key=setup.key)
    assert table.stdout.splitlines()[1].split()[:2] == ["records", "records"]
    fields = _json(retl("fields", setup.destination_id, "records", "--json", url=api_url, key=setup.key))
    assert [field["id"] for field in fields["data"]] == ["id", "email"]


def test_a_queued_run_is_cancelled(api_url, warehouse, sink):
    setup = Setup(warehouse, sink.url)
    (queued,) = runs.trigger(setup.workspace_id, [setup.sync_id], full_refresh=False)

    cancelled = retl("runs", "cancel", queued.id, "--json", url=api_url, key=setup.key)

    assert _json(cancelled)["data"]["attributes"]["status"] == "cancelled"
    again = retl("runs", "cancel", queued.id, url=api_url, key=setup.key)
    assert again.exit_code == 1 and again.stderr.startswith("Error: 409 ")


def test_api_errors_are_one_line_on_stderr(api_url, warehouse, sink, monkeypatch):
    monkeypatch.delenv("RETL_API_KEY", raising=False)
    setup = Setup(warehouse, sink.url)
    cases = {
        ("syncs", "show", "retl_sync_nope"): "Error: 404 not_found: no sync retl_sync_nope",
        ("dlq", "resolve", "retl_dlq_nope", "--resolution", ""): "Error: 422 validation_error",
    }
    for args, start in cases.items():
        result = retl(*args, url=api_url, key=setup.key)
        assert result.exit_code != 0, args
        assert result.stdout == "" and result.stderr.startswith(start), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1

    unauthorized = retl("syncs", "list", url=api_url, key=None)
    assert unauthorized.exit_code == 1
    assert unauthorized.stderr.strip().splitlines() == [
        "Error: 401 unauthorized: send Authorization: Bearer <API key>"
        " (set RETL_API_KEY or pass --api-key)"
    ]
    refused = retl("syncs", "list", url=f"http://127.0.0.1:{free_port()}", key=setup.key)
    assert refused.exit_code == 1
    assert len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("Error: cannot reach the retl API at http://127.0.0.1:")


def test_preview_shows_the_plan_and_a_held_run_is_approved(api_url, worker, warehouse, sink):
    setup = Setup(warehouse, sink.url)
    syncs.update(setup.workspace_id, setup.sync_id,
                 {"syncMode": "mirror", "guard": {"maxRemovedPercent": 10}})
    first = retl("syncs", "run", setup.sync_id, "--wait", "--json", url=api_url, key=setup.key)
    assert _json(first)["data"]["attributes"]["status"] == "succeeded"
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute("DELETE FROM people WHERE id > 10")  # two thirds of the result gone

    preview = _json(retl("syncs", "preview", setup.sync_id, "--sample", "2", "--json",
                         url=api_url, key=setup.key))["data"]["attributes"]
    assert preview["counts"]["removed"] == PEOPLE - 10
    assert len(preview["samples"]["removed"]) == 2
    table = retl("syncs", "preview", setup.sync_id, url=api_url, key=setup.key)
    assert table.exit_code == 0 and "removed" in table.stdout

    held = retl("syncs", "run", setup.sync_id, "--wait", "--json", url=api_url, key=setup.key)
    assert held.exit_code == 1, held.output
    run = json.loads(held.stdout)["data"]
    assert run["attributes"]["status"] == "held" and "maxRemovedPercent" in run["attributes"]["error"]
    assert len(sink.store) == PEOPLE  # nothing was removed

    approved = _json(retl("runs", "approve", run["id"], "--json", url=api_url, key=setup.key))
    assert approved["data"]["attributes"]["status"] != "held"
