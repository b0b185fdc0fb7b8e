"""Guards: how much of what the destination holds one run of a sync may remove or change before
the run is held for someone to approve, and the verdict on a plan's numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Syncs that delete (`mirror`, `delete`) without a guard of their own are held when a run would
# remove more than DEFAULT_MAX_REMOVED_PERCENT of more than DEFAULT_ABOVE_RECORDS records.
DELETING_MODES = frozenset({"mirror", "delete"})
DEFAULT_MAX_REMOVED_PERCENT = 50.0
DEFAULT_ABOVE_RECORDS = 100


@dataclass(frozen=True)
class Guard:
    max_removed_percent: float | None = None
    max_changed_percent: float | None = None
    min_source_rows: int | None = None
    # Percentages are judged only when the destination holds more records than this.
    above_records: int = 0
    is_default: bool = False


def effective(mode: str, raw: dict[str, Any] | None) -> Guard | None:
    """The guard a run of a sync obeys: its own (`{}` turns the default off), else the default
    for syncs that delete, else none."""
    if raw is not None:
        guard = Guard(
            max_removed_percent=raw.get("maxRemovedPercent"),
            max_changed_percent=raw.get("maxChangedPercent"),
            min_source_rows=raw.get("minSourceRows"),
        )
        return None if guard == Guard() else guard
    if mode in DELETING_MODES:
        return Guard(max_removed_percent=DEFAULT_MAX_REMOVED_PERCENT,
                     above_records=DEFAULT_ABOVE_RECORDS, is_default=True)
    return None


def may_hold(guard: Guard | None, *, snapshot_empty: bool) -> bool:
    """Whether a plan could cross the guard at all: against an empty snapshot nothing is removed
    or changed, so only `minSourceRows` can."""
    if guard is None:
        return False
    return not snapshot_empty or bool(guard.min_source_rows)


@dataclass(frozen=True)
class PlanNumbers:
    held: int  # records the destination holds for the sync, per the snapshot
    removed: int
    changed: int
    source_rows: int  # records of the result (distinct, non-null keys)


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def verdict(guard: Guard | None, numbers: PlanNumbers) -> str | None:
    """Why the plan must be held (which guard, and the numbers), or None when it may go."""
    if guard is None:
        return None
    if guard.min_source_rows and numbers.source_rows < guard.min_source_rows:
        return (
            f"held by the guard minSourceRows {guard.min_source_rows}: the source returned"
            f" {numbers.source_rows} record(s)"
        )
    if numbers.held <= guard.above_records:
        return None
    name = "default guard (mirror and delete syncs)" if guard.is_default else "guard"
    removed = _percent(numbers.removed, numbers.held)
    if guard.max_removed_percent is not None and removed > guard.max_removed_percent:
        return (
            f"held by the {name} maxRemovedPercent {guard.max_removed_percent:g}: the run would"
            f" remove {numbers.removed} of the {numbers.held} records the destination holds"
            f" ({removed:.1f}%)"
        )
    changed = _percent(numbers.changed, numbers.held)
    if guard.max_changed_percent is not None and changed > guard.max_changed_percent:
        return (
            f"held by the {name} maxChangedPercent {guard.max_changed_percent:g}: the run would"
            f" change {numbers.changed} of the {numbers.held} records the destination holds"
            f" ({changed:.1f}%)"
        )
    return None
