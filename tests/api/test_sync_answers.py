"""Sync reads answered from the answer kept for the workspace's syncs_version: a repeated read
reads no rows, and every change — through the API or not, in this process or another — shows in
the very next read. Keys, workspaces and errors are checked as on any request."""

from __future__ import annotations

import psycopg

from api import answers
from shared.services import auth
from shared.services import syncs as sync_service
from tests.api.conftest import API, create_sync
from tests.conftest import bearer


def _list(client, key):
    response = client.get(f"{API}/syncs", headers=bearer(key))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def _count_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    for name in ("list_page", "get"):
        original = getattr(sync_service, name)

        def _counted(*args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(sync_service, name, _counted)
    return reads


def test_a_repeated_read_is_answered_without_reading_the_rows(client, api_key, sync, monkeypatch):
    listed = _list(client, api_key)
    got = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).get_json()
    reads = _count_reads(monkeypatch)

    assert _list(client, api_key) == listed
    again = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key))
    assert again.status_code == 200 and again.get_json() == got
    assert again.headers["Content-Type"] == "application/json"
    assert reads == []
    # Another query string is another answer: it is read.
    assert client.get(f"{API}/syncs?limit=1", headers=bearer(api_key)).status_code == 200
    assert reads == ["list_page"]


def test_every_change_through_the_api_shows_in_the_next_read(client, api_key, sync, destination):
    assert [s["attributes"]["name"] for s in _list(client, api_key)] == [sync["attributes"]["name"]]

    renamed = client.put(f"{API}/syncs/{sync['id']}", json={"name": "renamed"}, headers=bearer(api_key))
    assert renamed.status_code == 200
    assert [s["attributes"]["name"] for s in _list(client, api_key)] == ["renamed"]
    got = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).get_json()
    assert got["data"]["attributes"]["name"] == "renamed"

    client.post(f"{API}/sync/toggle", json={"syncId": sync["id"], "enabled": False}, headers=bearer(api_key))
    assert [s["attributes"]["enabled"] for s in _list(client, api_key)] == [False]

    second = create_sync(client, api_key, destination["id"], name="second")
    assert {s["id"] for s in _list(client, api_key)} == {sync["id"], second["id"]}

    assert client.delete(f"{API}/syncs/{second['id']}", headers=bearer(api_key)).status_code == 200
    assert [s["id"] for s in _list(client, api_key)] == [sync["id"]]
    assert client.get(f"{API}/syncs/{second['id']}", headers=bearer(api_key)).status_code == 404


def test_a_change_made_elsewhere_shows_in_the_next_read(client, api_key, sync, database_url):
    """The scheduler (another process) moves a next run time; an operator edits a row."""
    _list(client, api_key)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE syncs SET next_run_at = '2030-01-02T03:04:05Z' WHERE id = %s", (sync["id"],))
    assert _list(client, api_key)[0]["attributes"]["next_run_at"] == "2030-01-02T03:04:05Z"
    got = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).get_json()
    assert got["data"]["attributes"]["next_run_at"] == "2030-01-02T03:04:05Z"

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE syncs SET name = 'edited' WHERE id = %s", (sync["id"],))
    assert _list(client, api_key)[0]["attributes"]["name"] == "edited"


def test_a_workspace_never_gets_another_workspaces_answer(client, api_key, other_api_key, sync):
    assert len(_list(client, api_key)) == 1
    assert _list(client, other_api_key) == []
    response = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(other_api_key))
    assert response.status_code == 404


def test_a_revoked_key_is_refused_though_its_answer_is_kept(client, api_key, sync):
    second = auth.create_api_key("acme")  # the same workspace as api_key
    assert len(_list(client, second.key)) == 1

    auth.revoke_api_key(second.workspace_id, second.key_id)
    assert client.get(f"{API}/syncs", headers=bearer(second.key)).status_code == 401
    assert len(_list(client, api_key)) == 1


def test_one_statement_moves_the_version_once(api_key, client, sync, destination, database_url):
    create_sync(client, api_key, destination["id"], name="another")
    with psycopg.connect(database_url, autocommit=True) as conn:
        (workspace_id, before), = conn.execute(
            "SELECT id, syncs_version FROM workspaces WHERE id = (SELECT workspace_id FROM syncs"
            " WHERE id = %s)", (sync["id"],)
        ).fetchall()
        conn.execute("UPDATE syncs SET enabled = false WHERE workspace_id = %s", (workspace_id,))
        after = conn.execute("SELECT syncs_version FROM workspaces WHERE id = %s",
                             (workspace_id,)).fetchone()[0]
    assert after == before + 1


def test_kept_answers_stay_within_their_bytes():
    cache = answers.AnswerCache(max_bytes=1000)
    for n in range(30):
        cache.put(("w", f"/syncs/{n}", b""), 1, b"x" * 90, 200)
    assert cache.get(("w", "/syncs/0", b""), 1) is None  # the least recently used went first
    assert cache.get(("w", "/syncs/29", b""), 1) == (b"x" * 90, 200)
    assert cache.get(("w", "/syncs/29", b""), 2) is None  # another version: not this answer
    assert cache._bytes <= 1000
    cache.put(("w", "/big", b""), 1, b"x" * 101, 200)  # over a tenth of the budget: not kept
    assert cache.get(("w", "/big", b""), 1) is None


def test_a_budget_of_zero_keeps_nothing():
    cache = answers.AnswerCache(max_bytes=0)
    cache.put(("w", "/syncs", b""), 1, b"{}", 200)
    assert cache.get(("w", "/syncs", b""), 1) is None
