"""Cursor pagination: pages are stable while rows are inserted or deleted between them (no row
skipped or repeated), a cursor keeps working with its filter, and the last page has no cursor."""

from __future__ import annotations

from collections.abc import Callable

from shared import ids
from shared.pagination import decode_cursor, encode_cursor
from tests.api.conftest import API, create_destination, create_sync, insert_dlq_entry, insert_run
from tests.conftest import bearer


def page_through(client, key: str, url: str, between_pages: Callable[[], None] = lambda: None) -> list[str]:
    """Every id of a listing, following cursors; `between_pages` runs after each page."""
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        separator = "&" if "?" in url else "?"
        page_url = url + (f"{separator}cursor={cursor}" if cursor else "")
        response = client.get(page_url, headers=bearer(key))
        assert response.status_code == 200, response.get_json()
        document = response.get_json()
        seen.extend(item["id"] for item in document["data"])
        cursor = document["meta"]["page"]["cursor"]
        if cursor is None:
            return seen
        between_pages()
    raise AssertionError("pagination did not end")


def test_pages_of_syncs_are_stable_while_new_syncs_arrive(client, api_key, destination, source):
    originals = [create_sync(client, api_key, destination["id"], name=f"s{i}")["id"] for i in range(7)]
    inserted: list[str] = []

    def insert_one() -> None:
        inserted.append(create_sync(client, api_key, destination["id"], name="late")["id"])

    seen = page_through(client, api_key, f"{API}/syncs?limit=2", between_pages=insert_one)

    assert len(inserted) == 3
    assert len(seen) == len(set(seen))
    assert seen == list(reversed(originals))
    everything = page_through(client, api_key, f"{API}/syncs?limit=2")
    assert sorted(everything) == sorted(originals + inserted)


def test_pages_of_syncs_are_stable_while_rows_are_deleted(client, api_key, destination, source):
    originals = [create_sync(client, api_key, destination["id"], name=f"s{i}")["id"] for i in range(6)]
    first = client.get(f"{API}/syncs?limit=2", headers=bearer(api_key)).get_json()
    # The row the cursor points after is deleted before the next page is read.
    client.delete(f"{API}/syncs/{first['data'][-1]['id']}", headers=bearer(api_key))

    second = client.get(f"{API}/syncs?limit=2&cursor={first['meta']['page']['cursor']}", headers=bearer(api_key))
    rest = [item["id"] for item in second.get_json()["data"]]
    third = client.get(f"{API}/syncs?limit=2&cursor={second.get_json()['meta']['page']['cursor']}", headers=bearer(api_key))
    rest += [item["id"] for item in third.get_json()["data"]]

    assert rest == list(reversed(originals))[2:]
    assert third.get_json()["meta"]["page"]["cursor"] is None


def test_page_meta_carries_the_limit_and_null_on_the_last_page(client, api_key, destination, source):
    for i in range(3):
        create_sync(client, api_key, destination["id"], name=f"s{i}")

    first = client.get(f"{API}/syncs?limit=2", headers=bearer(api_key)).get_json()
    second = client.get(f"{API}/syncs?limit=2&cursor={first['meta']['page']['cursor']}", headers=bearer(api_key)).get_json()
    exact = client.get(f"{API}/syncs?limit=3", headers=bearer(api_key)).get_json()
    largest = client.get(f"{API}/syncs?limit=200", headers=bearer(api_key)).get_json()

    assert first["meta"]["page"]["limit"] == 2 and isinstance(first["meta"]["page"]["cursor"], str)
    assert len(first["data"]) == 2
    assert len(second["data"]) == 1 and second["meta"]["page"] == {"limit": 2, "cursor": None}
    assert len(exact["data"]) == 3 and exact["meta"]["page"]["cursor"] is None
    assert largest["meta"]["page"] == {"limit": 200, "cursor": None}


def test_sync_cursor_works_with_its_filters(client, api_key, sink, source):
    first = create_destination(client, api_key, sink.url, name="one")
    second = create_destination(client, api_key, sink.url, name="two")
    wanted = []
    for i in range(5):
        wanted.append(create_sync(client, api_key, first["id"], name=f"a{i}", enabled=i % 2 == 0)["id"])
        create_sync(client, api_key, second["id"], name=f"b{i}")
    enabled_to_first = [sync_id for i, sync_id in enumerate(wanted) if i % 2 == 0]

    by_destination = page_through(client, api_key, f"{API}/syncs?limit=2&destination_id={first['id']}")
    by_both = page_through(client, api_key, f"{API}/syncs?limit=1&destination_id={first['id']}&enabled=true")

    assert by_destination == list(reversed(wanted))
    assert by_both == list(reversed(enabled_to_first))


def test_runs_page_through_with_and_without_filters(client, api_key, destination, source, database_url):
    first = create_sync(client, api_key, destination["id"], name="first")
    second = create_sync(client, api_key, destination["id"], name="second")
    of_first = [insert_run(database_url, first["id"], status="failed") for _ in range(5)]
    of_second = [insert_run(database_url, second["id"], status="succeeded") for _ in range(3)]
    late: list[str] = []

    all_runs = page_through(
        client, api_key, f"{API}/runs?limit=3",
        between_pages=lambda: late.append(insert_run(database_url, first["id"], status="failed")),
    )
    first_failed = page_through(client, api_key, f"{API}/runs?limit=2&sync_id={first['id']}&status=failed")
    second_only = page_through(client, api_key, f"{API}/runs?limit=2&status=succeeded")

    assert all_runs == sorted(of_first + of_second, reverse=True)
    assert first_failed == sorted(of_first + late, reverse=True)
    assert second_only == list(reversed(of_second))


def test_dlq_pages_through_open_and_resolved_entries(client, api_key, sync, database_url):
    run = insert_run(database_url, sync["id"])
    open_entries = [insert_dlq_entry(database_url, sync["id"], run, key=f"o{i}") for i in range(5)]
    closed = [insert_dlq_entry(database_url, sync["id"], run, key=f"c{i}", resolved=True) for i in range(3)]
    late: list[str] = []

    seen_open = page_through(
        client, api_key, f"{API}/dlq?limit=2&sync_id={sync['id']}",
        between_pages=lambda: late.append(insert_dlq_entry(database_url, sync["id"], run, key=f"late{len(late)}")),
    )
    seen_closed = page_through(client, api_key, f"{API}/dlq?limit=2&resolved=true")

    assert seen_open == list(reversed(open_entries))
    assert seen_closed == list(reversed(closed))


def test_connections_page_through_with_the_connector_filter(client, api_key, sink):
    destinations = [create_destination(client, api_key, sink.url, name=f"d{i}")["id"] for i in range(5)]

    all_pages = page_through(client, api_key, f"{API}/destinations?limit=2")
    filtered = page_through(client, api_key, f"{API}/destinations?limit=2&connector=http")

    assert all_pages == list(reversed(destinations))
    assert filtered == all_pages


def test_a_cursor_never_shows_another_workspaces_rows(client, api_key, other_api_key, destination, source, sink):
    for i in range(3):
        create_sync(client, api_key, destination["id"], name=f"s{i}")
    cursor = client.get(f"{API}/syncs?limit=1", headers=bearer(api_key)).get_json()["meta"]["page"]["cursor"]

    response = client.get(f"{API}/syncs?limit=1&cursor={cursor}", headers=bearer(other_api_key))

    assert response.status_code == 200
    assert response.get_json()["data"] == []


def test_every_issued_cursor_is_accepted_back():
    # The signature is binary: a cursor whose signature holds a "." byte must still decode.
    for _ in range(2000):
        last_id = ids.new_id(ids.SYNC)
        assert decode_cursor(encode_cursor(last_id)) == last_id


def test_a_cursor_with_a_changed_payload_is_refused(client, api_key, destination, source):
    for i in range(3):
        create_sync(client, api_key, destination["id"], name=f"s{i}")
    cursor = client.get(f"{API}/syncs?limit=1", headers=bearer(api_key)).get_json()["meta"]["page"]["cursor"]
    tampered = ("B" if cursor[0] != "B" else "C") + cursor[1:]

    response = client.get(f"{API}/syncs?limit=1&cursor={tampered}", headers=bearer(api_key))

    assert response.status_code == 422
    assert response.get_json()["errors"][0]["source"]["pointer"] == "/cursor"
