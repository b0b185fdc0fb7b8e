"""RecordBuilder: the values a batch carries, for destinations that speak JSON and those that
do not."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

from connectors.destinations.base import DestinationField
from connectors.destinations.http import HttpDestination
from connectors.destinations.postgres import PostgresDestination
from worker import mapping

COLUMNS = ["id", "score", "seen_at", "tags", "ref"]
ROW = (
    "7",  # the key text comes first
    7, decimal.Decimal("1.25"), dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    [decimal.Decimal("2")], uuid.UUID("12345678-1234-5678-1234-567812345678"),
)


def builder(destination, raw: list[dict]) -> mapping.RecordBuilder:
    plan = mapping.plan_for(raw, COLUMNS, object_name="records", mode="upsert")
    return mapping.RecordBuilder(plan, destination, None)


COLUMN_MAPPINGS = [
    {"source": "id", "destination": "id", "key": True},
    {"source": "score", "destination": "score"},
    {"source": "seen_at", "destination": "seen_at"},
    {"source": "tags", "destination": "tags"},
    {"source": "ref", "destination": "ref"},
]


def test_a_json_destination_gets_json_forms_while_mapping():
    built = builder(HttpDestination({"url": "http://127.0.0.1:9"}), COLUMN_MAPPINGS).build(ROW)
    assert built == {
        "id": 7, "score": 1.25, "seen_at": "2025-01-02T03:04:05Z",
        # Inside a list a value stays as it is: the destination's encoder meets it there.
        "tags": [decimal.Decimal("2")], "ref": "12345678-1234-5678-1234-567812345678",
    }


def test_json_forms_also_apply_to_statics_and_templates():
    raw = [
        {"source": "id", "destination": "id", "key": True},
        {"static": 3, "destination": "static"},
        {"template": "{{ score }}!", "destination": "label"},
        {"source": "seen_at", "destination": "seen_at"},
    ]
    built = builder(HttpDestination({"url": "http://127.0.0.1:9"}), raw).build(ROW)
    assert built == {"id": 7, "static": 3, "label": "1.25!", "seen_at": "2025-01-02T03:04:05Z"}


def test_a_destination_without_json_forms_gets_the_values_as_they_are():
    destination = PostgresDestination({"url": "postgresql://u@127.0.0.1:9/none"})
    built = builder(destination, COLUMN_MAPPINGS).build(ROW)
    assert built == dict(zip(COLUMNS, ROW[1:], strict=True))
    assert type(built["score"]) is decimal.Decimal and type(built["seen_at"]) is dt.datetime


def test_rows_may_come_in_json_form_only_for_plain_copies_to_a_json_destination():
    """A source may give values already in their JSON form (`reads_json_forms`) only when
    nothing between it and the destination needs the typed value."""
    http = HttpDestination({"url": "http://127.0.0.1:9"})
    assert builder(http, COLUMN_MAPPINGS).takes_json_forms is True
    templated = [*COLUMN_MAPPINGS[:2], {"template": "{{ seen_at }}", "destination": "when"}]
    assert builder(http, templated).takes_json_forms is False
    static = [*COLUMN_MAPPINGS[:2], {"static": 1, "destination": "one"}]
    assert builder(http, static).takes_json_forms is False
    postgres = PostgresDestination({"url": "postgresql://u@127.0.0.1:9/none"})
    assert builder(postgres, COLUMN_MAPPINGS).takes_json_forms is False
    plan = mapping.plan_for(COLUMN_MAPPINGS, COLUMNS, object_name="records", mode="upsert")
    cast = {"seen_at": DestinationField("seen_at", "seen_at", "datetime")}
    assert mapping.RecordBuilder(plan, http, cast).takes_json_forms is False
