"""Field mappings: which source columns a sync reads and hashes, and how a source row becomes a
destination record (column, static value or sandboxed Jinja2 template; cast to the field type)."""

from __future__ import annotations

import hashlib
import json
import logging
import operator
from dataclasses import dataclass
from typing import Any

from connectors.casting import CastError, cast_value
from connectors.destinations.base import Destination, DestinationField
from connectors.json_forms import json_value
from shared.templates import compile_template, render

log = logging.getLogger(__name__)

class MappingError(Exception):
    """The sync's mappings do not fit the query: the run fails before anything is written."""


class RecordMappingError(Exception):
    """One row could not be turned into a record (a template or a cast failed)."""


@dataclass(frozen=True)
class Mapping:
    destination: str
    source: str | None = None
    static: Any = None
    template: str | None = None
    key: bool = False


def parse_mappings(raw: list[dict[str, Any]]) -> list[Mapping]:
    mappings = []
    for entry in raw:
        mappings.append(Mapping(
            destination=str(entry["destination"]),
            source=entry.get("source"),
            static=entry.get("static"),
            template=entry.get("template"),
            key=bool(entry.get("key")),
        ))
    return mappings


@dataclass
class Plan:
    """What the mappings need from the source, derived once per run."""

    mappings: list[Mapping]
    key_column: str | None  # None: no key mapping (insert), the content hash is the key
    key_field: str  # the destination field that identifies a record
    read_columns: list[str]  # columns read for records and hashed, in a stable order
    fingerprint: str  # changes whenever the mapping definition changes


def plan_for(raw: list[dict[str, Any]], columns: list[str], *, object_name: str, mode: str) -> Plan:
    """Check the mappings against the query's columns; name a missing column."""
    mappings = parse_mappings(raw)
    available = set(columns)
    for mapping in mappings:
        if mapping.source is not None and mapping.source not in available:
            raise MappingError(
                f"mapping to {mapping.destination!r} names column {mapping.source!r},"
                f" which the query does not return (it returns: {', '.join(columns)})"
            )
    keys = [m for m in mappings if m.key]
    if len(keys) > 1:
        raise MappingError("more than one mapping is marked as the key")
    key = keys[0] if keys else None
    if key is not None and key.source is None:
        raise MappingError("the key mapping must name a source column")
    if key is None and mode != "insert":
        raise MappingError(f"sync mode {mode} needs a key mapping")
    if any(m.template is not None for m in mappings):
        # A template may read any column, so every column counts for change detection.
        read = list(columns)
    else:
        read = list(dict.fromkeys(m.source for m in mappings if m.source is not None))
    definition = {
        "mappings": raw,
        "object": object_name,
        # A delete-mode snapshot records deletions; switching modes must not reuse it.
        "deletes": mode == "delete",
    }
    fingerprint = hashlib.md5(
        json.dumps(definition, sort_keys=True, default=str).encode()
    ).hexdigest()
    return Plan(
        mappings=mappings,
        key_column=key.source if key else None,
        key_field=key.destination if key else "",
        read_columns=read,
        fingerprint=fingerprint,
    )


# Values JSON holds as they are (lists and dicts may hold others: the destination's encoder
# gives those their JSON form when it meets them).
_JSON_TYPES = frozenset({str, int, float, bool, type(None), list, dict})


class RecordBuilder:
    """Turns source rows (key text, *read_columns) into destination field dicts.

    Everything that does not depend on the row is decided once: which steps cast, render or
    copy. When every field is a plain column copy, a record is one `dict(zip(...))`."""

    def __init__(
        self, plan: Plan, destination: Destination,
        fields: dict[str, DestinationField] | None, *, offset: int = 1,
    ) -> None:
        self._plan = plan
        self._destination = destination
        self._fields = fields
        self._offset = offset
        index = {column: i + offset for i, column in enumerate(plan.read_columns)}
        self._steps: list[tuple[str, str, Any, DestinationField | None]] = []
        for mapping in plan.mappings:
            field = (fields or {}).get(mapping.destination)
            if mapping.source is not None:
                self._steps.append(("column", mapping.destination, index[mapping.source], field))
            elif mapping.template is not None:
                compiled = compile_template(mapping.template)
                self._steps.append(("template", mapping.destination, compiled, field))
            else:
                self._steps.append(("static", mapping.destination, mapping.static, field))
        self._columns = plan.read_columns
        self._needs_row_dict = any(kind == "template" for kind, *_ in self._steps)
        self._format = destination.format_value
        self._json_form = destination.json_form
        plain = all(kind == "column" and field is None for kind, _, _, field in self._steps)
        names = [name for _, name, _, _ in self._steps]
        if plain and len(set(names)) == len(names) and len(names) > 1:
            self._names: list[str] | None = names
            self._pick = operator.itemgetter(*(how for _, _, how, _ in self._steps))
            if self._json_form is None:
                self.build = self._build_plain  # type: ignore[method-assign]
            else:
                self.build = self._build_plain_json  # type: ignore[method-assign]
        else:
            self._names = None

    @property
    def takes_json_forms(self) -> bool:
        """Whether rows may come with values already in their JSON form (`Source.reads_json_
        forms`): every field is a plain column copy, with no cast or template that needs the
        typed value, for a destination that sends the usual JSON forms."""
        return self._names is not None and self._json_form is json_value

    def for_offset(self, offset: int) -> RecordBuilder:
        """The same builder for rows whose first column is at `offset` (what precedes it: the
        key, and a content hash in a one-pass read)."""
        return RecordBuilder(self._plan, self._destination, self._fields, offset=offset)

    def _build_plain(self, row: tuple) -> dict[str, Any]:
        return dict(zip(self._names, self._pick(row), strict=True))  # type: ignore[arg-type]

    def _build_plain_json(self, row: tuple) -> dict[str, Any]:
        form = self._json_form
        try:
            values = [v if type(v) in _JSON_TYPES else form(v) for v in self._pick(row)]  # type: ignore[misc]
        except CastError as exc:
            raise RecordMappingError(str(exc)) from None
        return dict(zip(self._names, values, strict=True))  # type: ignore[arg-type]

    def build(self, row: tuple) -> dict[str, Any]:
        record: dict[str, Any] = {}
        context = (
            dict(zip(self._columns, row[self._offset:], strict=True))
            if self._needs_row_dict else None
        )
        for kind, name, how, field in self._steps:
            if kind == "column":
                value = row[how]
            elif kind == "template":
                try:
                    value = render(how, context)
                except Exception as exc:  # a template's failure is its row's, never the run's
                    raise RecordMappingError(f"template for {name!r} failed: {exc}") from None
            else:
                value = how
            if field is not None and value is not None:
                try:
                    value = self._format(cast_value(value, field.data_type), field)
                except CastError as exc:
                    raise RecordMappingError(f"field {name!r}: {exc}") from None
            if self._json_form is not None and type(value) not in _JSON_TYPES:
                try:
                    value = self._json_form(value)
                except CastError as exc:
                    raise RecordMappingError(f"field {name!r}: {exc}") from None
            record[name] = value
        return record
