"""A fake HTTP receiver for the generic HTTP destination: it records every batch and keeps the
records it was sent by key, applying each batch's `X-Retl-Operation` as a real receiver would.

It speaks the wire contract documented in connectors/destinations/http.py: a JSON array, a
`{"records": [...]}` object or NDJSON body; `X-Retl-Operation`, `X-Retl-Key-Field` and
`Idempotency-Key` headers; per-record results under `results_path` in request order. It is cheap
per request, so throughput benchmarks measure the sender, not the fake."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from tests.fakes.base import FakeServer, Request, Response

OPERATIONS = ("upsert", "insert", "update", "delete")


@dataclass
class Batch:
    """One request the sink accepted for processing."""

    method: str
    path: str
    headers: dict[str, str]
    records: list[dict[str, Any]]
    operation: str
    key_field: str
    idempotency_key: str | None


class FakeHttpSink(FakeServer):
    """Use as `with FakeHttpSink() as sink:` and point the destination at `sink.url`.

    results_path: where per-record results go in the answer (`{"results": [{"ok": true}, …]}`
        by default, nested for a dotted path); None answers `{"received": n}` and refuses a
        batch with any rejected record as a whole, with 422.
    required_headers: headers every write must carry (e.g. Authorization) or get 401.
    max_batch: more records than this in one request → 413.
    records_key: the key holding the list in a JSON object body.
    replay_idempotent: answer a repeated `Idempotency-Key` from memory without applying the
        batch again, as a receiver that dedupes retries does (`replayed` counts them). Off by
        default: the key is derived from content, so a later run that sends the same content
        after other changes is a new write, and a real receiver dedupes only within minutes.
    """

    def __init__(
        self,
        *,
        results_path: str | None = "results",
        required_headers: dict[str, str] | None = None,
        max_batch: int = 10_000,
        records_key: str = "records",
        methods: tuple[str, ...] = ("POST", "PUT", "PATCH"),
        replay_idempotent: bool = False,
    ) -> None:
        super().__init__()
        handler = self._server.RequestHandlerClass
        # The base serves the write verbs only; the destination's connection test sends OPTIONS.
        handler.do_OPTIONS = handler._serve  # type: ignore[attr-defined]
        self.results_path = results_path
        self.required_headers = {k.lower(): v for k, v in (required_headers or {}).items()}
        self.max_batch = max_batch
        self.records_key = records_key
        self.methods = methods
        self.replay_idempotent = replay_idempotent
        self.received: list[Batch] = []
        self.store: dict[str, dict[str, Any]] = {}
        self.replayed = 0  # batches answered from the idempotency cache, not applied again
        self._rejected: dict[str, str] = {}
        self._answers_by_idempotency_key: dict[str, Response] = {}
        self._state_lock = threading.Lock()

    # -- test controls -------------------------------------------------------------------------

    def reject_keys(
        self, keys: set[str] | list[str], message: str = "rejected by receiver"
    ) -> None:
        """Refuse the records with these keys (as text) with `message`, in every later batch."""
        with self._state_lock:
            for key in keys:
                self._rejected[str(key)] = message

    def clear_rejections(self) -> None:
        with self._state_lock:
            self._rejected.clear()

    @property
    def record_count(self) -> int:
        return sum(len(batch.records) for batch in self.received)

    # -- protocol ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(204, None, {"Allow": ", ".join(("OPTIONS", *self.methods))})
        if request.method not in self.methods:
            return Response(405, {"error": f"method {request.method} not allowed"})
        for name, expected in self.required_headers.items():
            if request.headers.get(name) != expected:
                return Response(401, {"error": f"missing or wrong {name} header"})
        operation = request.headers.get("x-retl-operation", "")
        key_field = request.headers.get("x-retl-key-field", "")
        if operation not in OPERATIONS:
            return Response(400, {"error": f"X-Retl-Operation must be one of {OPERATIONS}"})
        if not key_field and operation != "insert":
            return Response(400, {"error": "X-Retl-Key-Field header is required"})
        try:
            records = self._parse_records(request)
        except ValueError as exc:
            return Response(400, {"error": f"bad body: {exc}"})
        if len(records) > self.max_batch:
            return Response(413, {"error": f"{len(records)} records; at most {self.max_batch}"})
        idempotency_key = request.headers.get("idempotency-key")
        with self._state_lock:
            if self.replay_idempotent and idempotency_key in self._answers_by_idempotency_key:
                self.replayed += 1
                return self._answers_by_idempotency_key[idempotency_key]
            self.received.append(
                Batch(
                    request.method,
                    request.path,
                    request.headers,
                    records,
                    operation,
                    key_field,
                    idempotency_key,
                )
            )
            response = self._apply(operation, key_field, records)
            if self.replay_idempotent and idempotency_key:
                self._answers_by_idempotency_key[idempotency_key] = response
        return response

    def _parse_records(self, request: Request) -> list[dict[str, Any]]:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/x-ndjson"):
            records = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        elif content_type.startswith("application/json"):
            document = json.loads(request.body)
            if isinstance(document, dict):
                document = document.get(self.records_key)
            records = document
        else:
            raise ValueError(f"unsupported Content-Type {content_type!r}")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError("expected a list of JSON objects")
        return records

    def _apply(self, operation: str, key_field: str, records: list[dict[str, Any]]) -> Response:
        """Apply one batch to the store (under the state lock) and build the answer."""
        errors: list[dict[str, str] | None] = []
        for record in records:
            if not key_field:  # an insert without a key: every record is new
                errors.append(None)
                continue
            key_value = record.get(key_field)
            key = None if key_value is None else str(key_value)
            if key is None:
                errors.append({"error": f"{key_field} is missing"})
            elif key in self._rejected:
                errors.append({"error": self._rejected[key]})
            elif operation == "insert" and key in self.store:
                errors.append({"error": f"{key_field} {key} already exists"})
            elif operation == "update" and key not in self.store:
                errors.append({"error": f"{key_field} {key} not found", "code": "NOT_FOUND"})
            else:
                errors.append(None)
        if self.results_path is None and any(errors):
            first = next(error for error in errors if error)
            return Response(422, {"error": first["error"]})
        for record, error in zip(records, errors, strict=True):
            if error is not None:
                continue
            key = str(record[key_field]) if key_field else f"#{len(self.store) + 1}"
            if operation == "delete":
                self.store.pop(key, None)
            elif operation == "update":
                self.store[key].update(record)
            elif operation == "upsert" and key in self.store:
                self.store[key].update(record)
            else:
                self.store[key] = dict(record)
        if self.results_path is None:
            return Response(200, {"received": len(records)})
        results: Any = [{"ok": True} if error is None else {"ok": False, **error} for error in errors]
        for part in reversed(self.results_path.split(".")):
            results = {part: results}
        return Response(200, results)
