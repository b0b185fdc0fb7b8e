"""The guard's verdict on a plan's numbers: which guard holds it, and when none does."""

from __future__ import annotations

from shared import guards
from shared.guards import PlanNumbers


def _numbers(held: int = 1000, removed: int = 0, changed: int = 0, rows: int = 1000) -> PlanNumbers:
    return PlanNumbers(held=held, removed=removed, changed=changed, source_rows=rows)


def test_mirror_and_delete_syncs_get_the_default_guard_and_others_none() -> None:
    assert guards.effective("mirror", None).max_removed_percent == 50
    assert guards.effective("delete", None).above_records == 100
    assert guards.effective("upsert", None) is None
    assert guards.effective("mirror", {}) is None  # turned off
    own = guards.effective("upsert", {"maxChangedPercent": 5})
    assert (own.max_changed_percent, own.above_records, own.is_default) == (5, 0, False)


def test_the_default_holds_more_than_half_of_more_than_100_records() -> None:
    default = guards.effective("mirror", None)
    assert guards.verdict(default, _numbers(held=100, removed=100)) is None
    assert guards.verdict(default, _numbers(held=101, removed=50)) is None
    assert "remove 51 of the 101 records" in guards.verdict(default, _numbers(held=101, removed=51))


def test_each_guard_names_itself_and_its_numbers() -> None:
    guard = guards.effective("upsert", {"maxRemovedPercent": 20, "maxChangedPercent": 50,
                                        "minSourceRows": 1})
    assert guards.verdict(guard, _numbers(removed=200, changed=500)) is None
    assert guards.verdict(guard, _numbers(removed=201)) == (
        "held by the guard maxRemovedPercent 20: the run would remove 201 of the 1000 records"
        " the destination holds (20.1%)"
    )
    assert "maxChangedPercent 50" in guards.verdict(guard, _numbers(changed=501))
    assert guards.verdict(guard, _numbers(rows=0)) == (
        "held by the guard minSourceRows 1: the source returned 0 record(s)"
    )


def test_an_empty_snapshot_crosses_no_percentage() -> None:
    guard = guards.effective("upsert", {"maxRemovedPercent": 0, "maxChangedPercent": 0})
    assert guards.verdict(guard, _numbers(held=0, removed=0, changed=0)) is None
    assert not guards.may_hold(guard, snapshot_empty=True)
    assert guards.may_hold(guards.effective("upsert", {"minSourceRows": 1}), snapshot_empty=True)
