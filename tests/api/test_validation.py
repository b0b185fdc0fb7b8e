"""Hostile input: every case answers 400, 413 or 422 in the error envelope, with a JSON pointer
to the field at fault where there is one, and none answers 500 or stores anything."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import API, assert_error, sync_body
from tests.conftest import bearer

MB = 1024 * 1024


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def with_mapping(destination_id: str, mapping: dict[str, Any]) -> dict[str, Any]:
    return sync_body(
        destination_id,
        fieldMappings=[{"source": "account_id", "destination": "Id", "key": True}, mapping],
    )


# (case id, method, path, body builder (destination id, sync id) → JSON value, raw bytes or None,
#  expected status, expected pointer or None)
D = "{destination}"
S = "{sync}"
CASES: list[tuple[str, str, str, Any, int, str | None]] = [
    ("unknown sync mode", "post", "/syncs", lambda d, s: sync_body(d, syncMode="sideways"), 422, "/syncMode"),
    ("sync mode of wrong type", "post", "/syncs", lambda d, s: sync_body(d, syncMode=["upsert"]), 422, "/syncMode"),
    ("cron croniter rejects", "post", "/syncs",
     lambda d, s: sync_body(d, schedule={"type": "cron", "expression": "99 * * * *"}), 422, "/schedule/expression"),
    ("cron that never fires", "post", "/syncs",
     lambda d, s: sync_body(d, schedule={"type": "cron", "expression": "0 0 31 2 *"}), 422, "/schedule/expression"),
    ("cron without expression", "post", "/syncs", lambda d, s: sync_body(d, schedule={"type": "cron"}),
     422, "/schedule/expression"),
    ("unknown timezone", "post", "/syncs",
     lambda d, s: sync_body(d, schedule={"type": "cron", "expression": "0 * * * *", "timezone": "Mars/Olympus"}),
     422, "/schedule/timezone"),
    ("timezone that is a path", "post", "/syncs",
     lambda d, s: sync_body(d, schedule={"type": "cron", "expression": "0 * * * *", "timezone": "../../etc/passwd"}),
     422, "/schedule/timezone"),
    ("unknown schedule type", "post", "/syncs", lambda d, s: sync_body(d, schedule={"type": "hourly"}),
     422, "/schedule/type"),
    ("interval below minimum", "post", "/syncs",
     lambda d, s: sync_body(d, schedule={"type": "interval", "every": "5s"}), 422, "/schedule/every"),
    ("interval beyond any calendar", "post", "/syncs",
     lambda d, s: sync_body(d, schedule={"type": "interval", "every": "99999999999999999999d"}), 422, "/schedule/every"),
    ("interval without unit", "post", "/syncs",
     lambda d, s: sync_body(d, schedule={"type": "interval", "every": "15"}), 422, "/schedule/every"),
    ("mapping without destination", "post", "/syncs", lambda d, s: with_mapping(d, {"source": "name"}),
     422, "/fieldMappings/1/destination"),
    ("mapping with two values", "post", "/syncs",
     lambda d, s: with_mapping(d, {"source": "name", "static": 1, "destination": "Name"}), 422, "/fieldMappings/1/source"),
    ("mapping not an object", "post", "/syncs",
     lambda d, s: sync_body(d, fieldMappings=["account_id"]), 422, "/fieldMappings/0"),
    ("no mappings", "post", "/syncs", lambda d, s: sync_body(d, fieldMappings=[]), 422, "/fieldMappings"),
    *[
        (f"no key mapping for {mode}", "post", "/syncs",
         (lambda m: lambda d, s: sync_body(d, syncMode=m, fieldMappings=[{"source": "a", "destination": "A"}]))(mode),
         422, "/fieldMappings")
        for mode in ("upsert", "update", "delete", "mirror")
    ],
    ("two key mappings", "post", "/syncs",
     lambda d, s: sync_body(d, fieldMappings=[{"source": "a", "destination": "A", "key": True},
                                              {"source": "b", "destination": "B", "key": True}]),
     422, "/fieldMappings"),
    ("missing required fields", "post", "/syncs", lambda d, s: {"name": "x"}, 422, "/sourceQuery"),
    ("unknown body field", "post", "/syncs", lambda d, s: sync_body(d, colour="blue"), 422, "/colour"),
    ("name of wrong type", "post", "/syncs", lambda d, s: sync_body(d, name=42), 422, "/name"),
    ("enabled as a string", "post", "/syncs", lambda d, s: sync_body(d, enabled="false"), 422, "/enabled"),
    ("key as a number", "post", "/syncs",
     lambda d, s: sync_body(d, fieldMappings=[{"source": "a", "destination": "A", "key": 1}]), 422, "/fieldMappings/0/key"),
    ("field mappings as an object", "post", "/syncs",
     lambda d, s: sync_body(d, fieldMappings={"source": "a"}), 422, "/fieldMappings"),
    ("schedule as a string", "post", "/syncs", lambda d, s: sync_body(d, schedule="hourly"), 422, "/schedule"),
    ("a 1 MB name", "post", "/syncs", lambda d, s: sync_body(d, name="x" * MB), 422, "/name"),
    ("a 1 MB query", "post", "/syncs", lambda d, s: sync_body(d, sourceQuery="x" * MB), 422, "/sourceQuery"),
    ("a 1 MB id", "post", "/sync/run", lambda d, s: {"syncId": "x" * MB}, 422, "/syncId"),
    ("deep nesting in a static value", "post", "/syncs",
     lambda d, s: with_mapping(d, {"static": nested(100), "destination": "Deep"}), 422, None),
    ("nesting too deep to parse", "post", "/syncs", b"[" * 100_000 + b"]" * 100_000, 400, None),
    ("NUL in a name", "post", "/syncs", lambda d, s: sync_body(d, name="a\x00b"), 422, "/name"),
    ("NUL in a static value", "post", "/syncs",
     lambda d, s: with_mapping(d, {"static": "a\x00", "destination": "N"}), 422, "/fieldMappings/1/static"),
    ("NUL in a field name", "post", "/syncs", lambda d, s: {**sync_body(d), "na\x00me": "x"}, 422, None),
    ("NUL in an id to toggle", "post", "/sync/toggle", lambda d, s: {"syncId": "\x00", "enabled": True}, 422, "/syncId"),
    ("NUL in an update", "put", f"/syncs/{S}", lambda d, s: {"name": "\x00"}, 422, "/name"),
    ("NUL in a resolve", "post", "/dlq/resolve", lambda d, s: {"entryIds": ["\x00"], "resolution": "x"}, 422, "/entryIds/0"),
    ("NUL in a connection name", "post", "/destinations",
     lambda d, s: {"name": "\x00", "connector": "http", "config": {"url": "http://x"}}, 422, "/name"),
    ("lone surrogate", "post", "/syncs", b'{"name": "\\ud800"}', 422, "/name"),
    ("lone surrogate in a config", "post", "/destinations",
     b'{"name": "x", "connector": "http", "config": {"url": "http://x/\\udfff"}}', 422, "/config/url"),
    ("NaN", "post", "/syncs", b'{"name": NaN}', 400, None),
    ("Infinity", "post", "/sync/run", b'{"syncId": Infinity}', 400, None),
    ("an integer too long to read", "post", "/syncs", b'{"name": ' + b"9" * 5000 + b"}", 400, None),
    ("a huge integer where text belongs", "post", "/syncs",
     lambda d, s: sync_body(d, name=10**100), 422, "/name"),
    ("a huge integer for a boolean", "post", "/sync/toggle",
     lambda d, s: {"syncId": s, "enabled": 10**100}, 422, "/enabled"),
    ("body not JSON", "post", "/syncs", b"name=x&syncMode=upsert", 400, None),
    ("body not UTF-8", "post", "/syncs", b'{"name": "\xff\xfe"}', 400, None),
    ("empty body", "post", "/sync/run", b"", 400, None),
    ("JSON array body", "post", "/syncs", lambda d, s: [sync_body(d)], 400, None),
    ("JSON string body", "post", "/sync/toggle", lambda d, s: "enable it", 400, None),
    ("JSON null body", "put", f"/syncs/{S}", lambda d, s: None, 400, None),
    ("a 5 MB body", "post", "/syncs", lambda d, s: sync_body(d, sourceQuery="x" * (5 * MB)), 413, None),
    ("trigger with neither id", "post", "/sync/run", lambda d, s: {"fullRefresh": True}, 422, "/syncId"),
    ("trigger ids not a list", "post", "/sync/run", lambda d, s: {"syncIds": {"a": 1}}, 422, "/syncIds"),
    ("toggle enabled null", "post", "/sync/toggle", lambda d, s: {"syncId": s, "enabled": None}, 422, "/enabled"),
    ("connection config a list", "post", "/sources",
     lambda d, s: {"name": "x", "connector": "postgres", "config": ["url"]}, 422, "/config"),
    ("limit 0", "get", "/syncs?limit=0", None, 422, "/limit"),
    ("limit 201", "get", "/runs?limit=201", None, 422, "/limit"),
    ("limit abc", "get", "/dlq?limit=abc", None, 422, "/limit"),
    ("limit huge", "get", "/destinations?limit=99999999999999999999999999", None, 422, "/limit"),
    ("limit given twice", "get", "/syncs?limit=1&limit=2", None, 422, "/limit"),
    ("forged cursor", "get", "/syncs?cursor=cmV0bF9zeW5jX3p6eno.AAAAAAAAAAAAAAAA", None, 422, "/cursor"),
    ("cursor of garbage", "get", "/runs?cursor=%25%25%25", None, 422, "/cursor"),
    ("cursor too long", "get", "/dlq?cursor=" + "A" * 5000, None, 422, "/cursor"),
    ("NUL in a query parameter", "get", "/syncs?destination_id=a%00b", None, 422, "/destination_id"),
    ("NUL in search", "get", f"/objects?destination_id={D}&search=%00", None, 422, "/search"),
    ("unknown run status", "get", "/runs?status=exploded", None, 422, "/status"),
    ("since not a time", "get", "/dlq/stats?since=last+tuesday", None, 422, "/since"),
    ("resolved not a boolean", "get", "/dlq?resolved=2", None, 422, "/resolved"),
    ("unknown query parameter", "get", "/dlq/stats?page=2", None, 422, "/page"),
]


@pytest.fixture
def ids(client, api_key, destination, sync) -> dict[str, str]:
    return {"destination": destination["id"], "sync": sync["id"]}


@pytest.mark.parametrize(("method", "path", "payload", "status", "pointer"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_input_answers_a_client_error_never_a_500(
    client, api_key, ids, method, path, payload, status, pointer
):
    headers = {**bearer(api_key), "Content-Type": "application/json"}
    before = client.get(f"{API}/syncs", headers=bearer(api_key)).get_json()["data"]
    kwargs: dict[str, Any] = {}
    if callable(payload):
        kwargs["data"] = json.dumps(payload(ids["destination"], ids["sync"]))
    elif payload is not None:
        kwargs["data"] = payload

    response = getattr(client, method)(API + path.format(**ids), headers=headers, **kwargs)

    assert_error(response, status, pointer)
    after = client.get(f"{API}/syncs", headers=bearer(api_key)).get_json()["data"]
    assert after == before


def test_valid_unicode_is_stored_and_returned_unchanged(client, api_key, destination, source):
    name = "Küste → 東京 ✓ 🚀 \u200b"
    body = sync_body(destination["id"], name=name,
                     fieldMappings=[{"source": "id", "destination": "Ünïcode", "key": True},
                                    {"static": {"emoji": "🙂", "rtl": "שלום"}, "destination": "Meta"}])

    created = client.post(f"{API}/syncs", json=body, headers=bearer(api_key))

    assert created.status_code == 201
    stored = client.get(f"{API}/syncs/{created.get_json()['data']['id']}", headers=bearer(api_key))
    attributes = stored.get_json()["data"]["attributes"]
    assert attributes["name"] == name
    assert attributes["field_mappings"][1]["static"] == {"emoji": "🙂", "rtl": "שלום"}


def test_a_nul_in_a_path_id_answers_404(client, api_key, sync):
    for path in ("/syncs/a%00b", "/runs/a%00b", "/destinations/%00", "/sources/%00/test"):
        response = client.get(API + path, headers=bearer(api_key)) if "test" not in path else \
            client.post(API + path, headers=bearer(api_key))
        assert_error(response, 404)


def test_errors_name_every_field_at_fault(client, api_key, destination):
    body = {"name": "", "sourceQuery": 5, "destinationId": destination["id"], "objectName": "x",
            "fieldMappings": [{"source": "a"}], "syncMode": "nope"}

    response = client.post(f"{API}/syncs", json=body, headers=bearer(api_key))

    assert_error(response, 422)
    pointers = {error["source"]["pointer"] for error in response.get_json()["errors"]}
    assert {"/name", "/sourceQuery", "/fieldMappings/0/destination", "/syncMode"} <= pointers


def test_a_body_without_a_json_content_type_is_still_read(client, api_key, sync):
    response = client.post(
        f"{API}/sync/toggle", data=json.dumps({"syncId": sync["id"], "enabled": False}),
        headers={**bearer(api_key), "Content-Type": "text/plain"},
    )

    assert response.status_code == 200
    assert response.get_json()["data"]["attributes"]["enabled"] is False


def test_unknown_routes_and_methods_answer_in_the_error_envelope(client, api_key):
    assert_error(client.get(f"{API}/nothing-here", headers=bearer(api_key)), 404)
    assert_error(client.patch(f"{API}/syncs", headers=bearer(api_key)), 405)
