"""Field digests: the same in every process and whatever the order of a record's fields, and
telling apart what a preview must tell apart."""

from __future__ import annotations

import datetime as dt
import decimal
import os
import subprocess
import sys
import zlib

from connectors.casting import OutOfRangeValue
from worker.field_digests import changed_fields, field_digest, record_digests

RECORD = {
    "external_id": 7, "email": "user7@example.com", "score": 10.5, "active": True,
    "plan": None, "tags": ["b", "a"], "extra": {"z": 1, "a": [1, 2]},
}


def test_a_digest_is_crc32_of_name_nul_and_canonical_value() -> None:
    assert field_digest("email", "a@b") == zlib.crc32(b"email\0sa@b")
    assert field_digest("id", 7) == zlib.crc32(b"id\x007")
    assert field_digest("ok", False) == zlib.crc32(b"ok\0false")
    assert field_digest("x", None) == zlib.crc32(b"x\0null")
    assert field_digest("m", {"z": 1, "a": "é"}) == zlib.crc32('m\0{"a":"é","z":1}'.encode())


def test_record_digests_are_sorted_packed_and_independent_of_field_order() -> None:
    packed = record_digests(RECORD)
    assert len(packed) == 4 * len(RECORD)
    values = [int.from_bytes(packed[i:i + 4], "big") for i in range(0, len(packed), 4)]
    assert values == sorted(field_digest(name, value) for name, value in RECORD.items())
    assert record_digests(dict(reversed(list(RECORD.items())))) == packed
    assert record_digests({}) == b""


def test_digests_are_the_same_in_another_process() -> None:
    script = (
        "import sys; from worker.field_digests import record_digests;"
        f" sys.stdout.write(record_digests({RECORD!r}).hex())"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert out == record_digests(RECORD).hex()


def test_names_values_and_types_are_told_apart() -> None:
    assert field_digest("a", "b") != field_digest("b", "a")
    assert record_digests({"a": "b"}) != record_digests({"b": "a"})
    assert record_digests({"a": "x", "b": "y"}) != record_digests({"a": "y", "b": "x"})
    values = ["1", 1, 1.5, "1.5", True, "true", None, "null", "", [], {}, ["1"], [1]]
    assert len({field_digest("f", value) for value in values}) == len(values)


def test_a_value_digests_as_its_json_form() -> None:
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert field_digest("at", when) == field_digest("at", "2025-01-02T03:04:05Z")
    assert field_digest("d", dt.date(2025, 1, 2)) == field_digest("d", "2025-01-02")
    assert field_digest("n", decimal.Decimal("1.50")) == field_digest("n", 1.5)
    assert field_digest("n", decimal.Decimal("2.0")) == field_digest("n", 2)
    assert field_digest("l", [decimal.Decimal("2")]) == field_digest("l", [2])
    # A date the source holds and Python cannot: its text, never an error.
    assert field_digest("at", OutOfRangeValue("infinity")) == field_digest("at", "infinity")
    assert field_digest("odd", {1: "a", "b": 2}) == field_digest("odd", {1: "a", "b": 2})


def test_changed_fields_names_what_is_not_among_the_stored_digests() -> None:
    stored = record_digests({"id": 1, "email": "a@example.com", "name": "A"})
    assert changed_fields({"id": 1, "email": "a@example.com", "name": "A"}, stored) == []
    assert changed_fields({"name": "B", "id": 1, "email": "b@example.com"}, stored) == [
        "email", "name"
    ]
    # A field the record did not send before is new to the destination: changed.
    assert changed_fields({"id": 1, "email": "a@example.com", "name": "A", "tier": "x"},
                          stored) == ["tier"]
    # A value moved to another field is a change of both.
    assert changed_fields({"id": 1, "email": "A", "name": "a@example.com"}, stored) == [
        "email", "name"
    ]
