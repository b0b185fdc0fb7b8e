"""The contract every destination and its fake pass, through the engine in this process:
discovery, each sync mode the destination declares, batch limits, throttling and outages retried
until written, per-record refusals in the DLQ, rejected credentials, and secrets never echoed.
A destination joins by adding its harness to tests/contract/harnesses.py's HARNESSES."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from connectors.registry import destination_class, destinations
from shared.errors import Invalid
from tests.conftest import bearer
from tests.contract.harnesses import (
    HARNESSES,
    DestinationHarness,
    HttpApiHarness,
    phone_of,
    seed_people,
)
from tests.e2e.conftest import (
    API,
    destination_status,
    discovered_fields,
    discovered_objects,
    dlq_entries,
    make_sync,
    resolutions,
    run_with_faults_on_writes,
)
from tests.engine.conftest import EngineDriver, SyncSetup, Warehouse

MODES = ("upsert", "insert", "update", "delete", "mirror")


def declared_modes(harness: DestinationHarness) -> frozenset[str]:
    return destination_class(harness.connector).supported_modes_for(harness.object_name)


def declaring(mode: str) -> list[DestinationHarness]:
    return [h for h in HARNESSES if mode in declared_modes(h)]


HTTP_APIS = [h for h in HARNESSES if isinstance(h, HttpApiHarness)]
UNDECLARED = [(h, mode) for h in HARNESSES for mode in MODES if mode not in declared_modes(h)]


def every(harnesses: list[DestinationHarness]) -> Any:
    return pytest.mark.parametrize("harness", harnesses, ids=repr)


def _sync(harness: DestinationHarness, fake: Any, account: Any, table: Warehouse, *,
          mode: str = "upsert", config: dict[str, Any] | None = None) -> SyncSetup:
    return make_sync(account, table, harness.connector, {**harness.config(fake), **(config or {})},
                     object_name=harness.object_name, mappings=harness.mappings, mode=mode,
                     query=harness.query)


def _as_seeded(harness: DestinationHarness, *row_ids: int) -> dict[str, Any]:
    """What the destination holds for these rows as seed_people made them."""
    return {harness.key(i): harness.tracked(f"User {i}", phone_of(i)) for i in row_ids}


def _renamed(harness: DestinationHarness, table: Warehouse, *row_ids: int) -> dict[str, Any]:
    """Rename these rows and give them other phones (each its own: a phone may identify a
    person); what the destination holds for them afterwards."""
    table.execute("UPDATE warehouse.people SET name = 'Renamed',"
                  " phone = '+1 (212) 555-9' || lpad(id::text, 3, '0') WHERE id = ANY(%s)",
                  (list(row_ids),))
    return {harness.key(i): harness.tracked("Renamed", f"+1 (212) 555-9{i:03d}") for i in row_ids}


def _sent_keys(harness: DestinationHarness, fake: Any, operation: str = "upsert") -> list[str]:
    return sorted(key for batch in harness.sent(fake, operation) for key in batch)


def _keys(harness: DestinationHarness, *row_ids: int) -> list[str]:
    return sorted(harness.key(i) for i in row_ids)


def _key_field(harness: DestinationHarness) -> str:
    return next(m["destination"] for m in harness.mappings if m.get("key"))


# -- the suite covers every destination --------------------------------------------------------


def test_every_registered_destination_has_a_harness() -> None:
    assert sorted(h.connector for h in HARNESSES) == sorted(destinations())


@every(HARNESSES)
def test_every_mode_a_destination_declares_is_one_the_suite_drives(
    harness: DestinationHarness,
) -> None:
    assert declared_modes(harness) and declared_modes(harness) <= set(MODES)


# -- discovery ---------------------------------------------------------------------------------


@every(HARNESSES)
def test_discovery_answers_the_objects_and_their_typed_fields(
    harness: DestinationHarness, fake: Any, account: Any, table: Warehouse, client: FlaskClient,
) -> None:
    setup = _sync(harness, fake, account, table)
    objects = discovered_objects(client, account.key, setup)
    if harness.only_these_objects:
        assert set(objects) == set(harness.objects)
    for name, expected in harness.objects.items():
        assert name in objects, f"{name} is not discovered"
        assert {k: objects[name][k] for k in expected} == expected, name
    fields = discovered_fields(client, account.key, setup, harness.object_name)
    for name, expected in harness.fields.items():
        assert name in fields, f"{name} is not discovered"
        assert {k: fields[name][k] for k in expected} == expected, name
    assert fields[_key_field(harness)]["external_id"] is True


@pytest.mark.parametrize(("harness", "mode"), UNDECLARED,
                         ids=[f"{h!r}-{mode}" for h, mode in UNDECLARED])
def test_a_mode_the_destination_does_not_declare_is_refused_when_the_sync_is_created(
    harness: DestinationHarness, mode: str, fake: Any, account: Any, table: Warehouse,
) -> None:
    supported = ", ".join(sorted(declared_modes(harness)))
    with pytest.raises(Invalid, match=f"does not support sync mode .{mode}.; it supports "
                                      f"{supported}"):
        _sync(harness, fake, account, table, mode=mode)


# -- each mode ---------------------------------------------------------------------------------


@every(declaring("upsert"))
def test_upsert_writes_every_row_then_only_the_changed_ones(
    harness: DestinationHarness, fake: Any, driver: EngineDriver, account: Any,
    table: Warehouse, client: FlaskClient,
) -> None:
    seed_people(table, 6)
    setup = _sync(harness, fake, account, table)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_read, run.rows_added, run.rows_written, run.rows_failed) == (6, 6, 6, 0)
    assert harness.held(fake) == _as_seeded(harness, 1, 2, 3, 4, 5, 6)
    assert destination_status(client, account.key, setup)["status"] == "connected"

    harness.forget_requests(fake)
    renamed = _renamed(harness, table, 2, 5)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_changed, run.rows_unchanged, run.rows_written) == (2, 4, 2)
    assert _sent_keys(harness, fake) == _keys(harness, 2, 5)
    assert harness.held(fake) == {**_as_seeded(harness, 1, 3, 4, 6), **renamed}


@every(declaring("insert"))
def test_insert_sends_only_rows_new_to_the_source(
    harness: DestinationHarness, fake: Any, driver: EngineDriver, account: Any, table: Warehouse,
) -> None:
    seed_people(table, 3)
    setup = _sync(harness, fake, account, table, mode="insert")
    assert driver.run(setup).rows_written == 3
    _renamed(harness, table, 1)
    seed_people(table, 2, start=4)
    harness.forget_requests(fake)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert run.rows_written == 2
    assert _sent_keys(harness, fake, "insert") == _keys(harness, 4, 5)
    assert harness.held(fake) == _as_seeded(harness, 1, 2, 3, 4, 5)


@every(declaring("update"))
def test_update_changes_held_records_and_a_missing_one_is_not_found_in_the_dlq(
    harness: DestinationHarness, fake: Any, driver: EngineDriver, account: Any,
    table: Warehouse, client: FlaskClient,
) -> None:
    harness.preload(fake, [1, 2])
    seed_people(table, 3)
    setup = _sync(harness, fake, account, table, mode="update")
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_written, run.rows_failed) == (2, 1)
    assert harness.held(fake) == _as_seeded(harness, 1, 2)
    entries = dlq_entries(client, account.key, setup)
    assert list(entries) == [harness.key(3)]
    assert entries[harness.key(3)]["error_code"] == "NOT_FOUND"
    expected = harness.not_found_message(harness.key(3))
    if expected is not None:
        assert entries[harness.key(3)]["message"] == expected


@every(declaring("delete"))
def test_delete_removes_the_records_of_the_result(
    harness: DestinationHarness, fake: Any, driver: EngineDriver, account: Any, table: Warehouse,
) -> None:
    harness.preload(fake, [1, 2, 3, 9])
    seed_people(table, 3)
    run = driver.run(_sync(harness, fake, account, table, mode="delete"))
    assert run.status == "succeeded", run.error
    assert (run.rows_written, run.rows_failed) == (3, 0)
    assert list(harness.held(fake)) == [harness.key(9)]


@every(declaring("mirror"))
def test_mirror_removes_records_whose_rows_left_the_source(
    harness: DestinationHarness, fake: Any, driver: EngineDriver, account: Any, table: Warehouse,
) -> None:
    seed_people(table, 5)
    setup = _sync(harness, fake, account, table, mode="mirror")
    assert driver.run(setup).rows_written == 5
    table.execute("DELETE FROM warehouse.people WHERE id IN (2, 5)")
    renamed = _renamed(harness, table, 3)
    harness.forget_requests(fake)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_removed, run.rows_changed, run.rows_failed) == (2, 1, 0)
    assert _sent_keys(harness, fake) == _keys(harness, 3)
    assert harness.held(fake) == {**_as_seeded(harness, 1, 4), **renamed}


# -- batch limits ------------------------------------------------------------------------------


@every(HTTP_APIS)
def test_a_run_larger_than_the_batch_limit_is_split_into_requests_the_vendor_takes(
    harness: HttpApiHarness, fake: Any, driver: EngineDriver, account: Any, table: Warehouse,
) -> None:
    count = harness.batch_limit + 3
    seed_people(table, count)
    run = driver.run(_sync(harness, fake, account, table))
    assert run.status == "succeeded", run.error
    assert (run.rows_written, run.rows_failed) == (count, 0)
    assert sorted(len(batch) for batch in harness.sent(fake, "upsert")) == [
        3, harness.batch_limit,
    ]
    assert len(harness.held(fake)) == count


@every(HTTP_APIS)
def test_the_fake_refuses_a_request_past_the_vendor_limit(
    harness: HttpApiHarness, fake: Any,
) -> None:
    response = harness.send_oversize(fake)
    assert response.status_code in (400, 413), response.text
    assert harness.held(fake) == {}


# -- throttling and outages --------------------------------------------------------------------


@every(HTTP_APIS)
def test_throttling_with_an_advised_wait_is_retried_until_the_records_are_written(
    harness: HttpApiHarness, fake: Any, driver: EngineDriver, account: Any, table: Warehouse,
    client: FlaskClient,
) -> None:
    seed_people(table, 5)
    setup = _sync(harness, fake, account, table)
    status, body, headers = harness.rate_limited()
    run = run_with_faults_on_writes(driver, setup, fake, status, body, headers, 2)
    assert run.status == "succeeded", run.error
    assert (run.rows_written, run.rows_failed) == (5, 0)
    assert harness.held(fake) == _as_seeded(harness, 1, 2, 3, 4, 5)
    assert harness.write_attempts(fake) == 3  # two refused, one accepted
    assert dlq_entries(client, account.key, setup) == {}


@every(HTTP_APIS)
def test_a_storm_of_5xx_is_retried_until_the_records_are_written(
    harness: HttpApiHarness, fake: Any, driver: EngineDriver, account: Any, table: Warehouse,
    client: FlaskClient,
) -> None:
    seed_people(table, 5)
    setup = _sync(harness, fake, account, table)
    status, body = harness.server_error()
    run = run_with_faults_on_writes(driver, setup, fake, status, body, None, 4)
    assert run.status == "succeeded", run.error
    assert (run.rows_written, run.rows_failed) == (5, 0)
    assert harness.held(fake) == _as_seeded(harness, 1, 2, 3, 4, 5)
    assert dlq_entries(client, account.key, setup) == {}


# -- refusals and credentials ------------------------------------------------------------------


@every(HARNESSES)
def test_refused_records_land_in_the_dlq_with_the_vendor_message_and_resolve_once_accepted(
    harness: DestinationHarness, fake: Any, driver: EngineDriver, account: Any,
    table: Warehouse, client: FlaskClient,
) -> None:
    seed_people(table, 5)
    said = harness.refuse(fake, table, [2, 4])
    setup = _sync(harness, fake, account, table)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_written, run.rows_failed) == (3, 2)
    assert harness.held(fake) == _as_seeded(harness, 1, 3, 5)
    entries = dlq_entries(client, account.key, setup)
    assert sorted(entries) == _keys(harness, 2, 4)
    for row_id, message in said.items():
        entry = entries[harness.key(row_id)]
        assert entry["error_code"] == "DESTINATION_VALIDATION"
        assert harness.refusal_matches(message, entry["message"]), entry["message"]

    harness.accept(fake, table, [2, 4])
    harness.forget_requests(fake)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_written, run.rows_failed) == (2, 0)
    assert _sent_keys(harness, fake) == _keys(harness, 2, 4)
    assert sorted(harness.held(fake)) == _keys(harness, 1, 2, 3, 4, 5)
    assert dlq_entries(client, account.key, setup) == {}
    assert resolutions(client, account.key, setup) == {
        harness.key(2): "auto_resolved", harness.key(4): "auto_resolved",
    }


@every(HARNESSES)
def test_rejected_credentials_fail_the_run_and_mark_the_destination(
    harness: DestinationHarness, fake: Any, driver: EngineDriver, account: Any,
    table: Warehouse, client: FlaskClient,
) -> None:
    seed_people(table, 3)
    setup = _sync(harness, fake, account, table, config=harness.rejected_credentials(fake))
    run = driver.run(setup)
    assert run.status == "failed"
    for said in harness.auth_error:
        assert said in (run.error or ""), run.error
    assert harness.held(fake) == {}
    assert destination_status(client, account.key, setup)["status"] == "auth_failed"


@every(HARNESSES)
def test_secrets_are_never_echoed_in_the_api_run_errors_or_the_dlq(
    harness: DestinationHarness, fake: Any, driver: EngineDriver, account: Any,
    table: Warehouse, client: FlaskClient,
) -> None:
    seed_people(table, 5)
    harness.refuse(fake, table, [2, 4])
    good = _sync(harness, fake, account, table)
    stale = harness.rejected_credentials(fake)
    bad = _sync(harness, fake, account, table, config=stale)
    runs = [driver.run(good), driver.run(bad)]
    assert [run.status for run in runs] == ["succeeded", "failed"]
    assert dlq_entries(client, account.key, good)

    seen = [run.error or "" for run in runs]
    headers = bearer(account.key)
    for path in (f"/destinations/{good.destination_id}", f"/destinations/{bad.destination_id}",
                 "/destinations?limit=100", f"/dlq?sync_id={good.sync_id}&limit=100",
                 *(f"/runs/{run.id}" for run in runs)):
        response = client.get(f"{API}{path}", headers=headers)
        assert response.status_code == 200, path
        seen.append(response.get_data(as_text=True))
    tested = client.post(f"{API}/destinations/{bad.destination_id}/test", headers=headers)
    seen.append(tested.get_data(as_text=True))
    seen.append(json.dumps(dlq_entries(client, account.key, good)))
    secrets = harness.secret_values(harness.config(fake)) + harness.secret_values(
        {**harness.config(fake), **stale})
    assert secrets
    for secret in secrets:
        for text in seen:
            assert secret not in text, f"a secret of {harness!r} was echoed"
