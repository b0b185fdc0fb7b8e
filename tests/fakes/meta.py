"""A fake Meta Marketing API (Graph API) holding one ad account's custom audiences.

It speaks Meta's wire format: versioned paths (`/v23.0/...`), the token in `Authorization:
OAuth <token>` (or Bearer, or the `access_token` parameter), `GET /act_{id}/customaudiences`
with cursor paging, `POST` / `DELETE /{audience_id}/users` with a form `payload` of
`{"schema", "data"}`, answers with `audience_id`, `session_id`, `num_received`,
`num_invalid_entries` and `invalid_entry_samples`, and errors as
`{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`.

It validates as Meta does: a bad token → 190; an unknown audience → 100/33; a flagged one →
100/1713230; more than 10,000 rows, an unknown schema key, rows that do not fit the schema →
100; a value of a hashed key that is not SHA-256 hex (a raw email, say) → the request refused
with 100; a MADID that is no advertising id or a row with nothing in it → counted invalid and
sampled."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.base import FakeServer, Request, Response

MAX_ROWS = 10_000
HASHED_KEYS = frozenset({"EMAIL", "PHONE", "FN", "LN", "FI", "CT", "ST", "ZIP", "COUNTRY",
                         "DOBY", "DOBM", "DOBD", "GEN"})
CLEAR_KEYS = frozenset({"MADID", "EXTERN_ID"})
# Keys that name one person; names, cities and the like only narrow a match.
PERSON_KEYS = frozenset({"EMAIL", "PHONE", "MADID", "EXTERN_ID"})
SHA256 = re.compile(r"[0-9a-f]{64}")
MADID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
VERSIONED = re.compile(r"/v(\d+)\.0(/.*)")


def graph_error(
    message: str, code: int, error_type: str = "OAuthException", subcode: int | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": error_type, "code": code,
                             "fbtrace_id": "AbCdEfGhIjK"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


def throttled(minutes: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
    """Body and headers of Meta's custom audience throttling error (code 80003)."""
    usage = {"1234": [{"type": "custom_audience", "call_count": 100, "total_cputime": 20,
                       "total_time": 30, "estimated_time_to_regain_access": minutes}]}
    body = graph_error("There have been too many calls to this ad-account. Wait a bit and try"
                       " again.", 80003)
    return body, {"X-Business-Use-Case-Usage": json.dumps(usage)}


@dataclass
class Audience:
    id: str
    name: str
    subtype: str = "CUSTOM"
    flagged: bool = False
    # Each member as the identifiers it was added with (schema key -> value sent).
    members: list[dict[str, str]] = field(default_factory=list)
    # (schema key, value) -> the member holding it.
    index: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


class FakeMeta(FakeServer):
    """`with FakeMeta(token="t", ad_account="1234") as meta:`; point baseUrl at `meta.url`."""

    def __init__(self, token: str = "test-token", ad_account: str = "1234") -> None:
        super().__init__()
        self.token = token
        self.ad_account = ad_account
        self.audiences: dict[str, Audience] = {}
        self.uploads: list[tuple[str, str, dict[str, Any]]] = []  # (method, audience, payload)
        self._state = threading.Lock()
        self._sessions = 0

    # -- helpers for tests ---------------------------------------------------------------------

    def add_audience(self, audience_id: str, name: str, **options: Any) -> Audience:
        audience = Audience(audience_id, name, **options)
        self.audiences[audience_id] = audience
        return audience

    def members(self, audience_id: str, key: str) -> set[str]:
        """The values of `key` the audience's members were added with."""
        return {m[key] for m in self.audiences[audience_id].members if m.get(key)}

    # -- protocol ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        form = parse_qs(request.body.decode()) if request.body else {}
        params = {**request.query, **form}
        token = _bearer(request.headers.get("authorization")) or _first(params, "access_token")
        if token != self.token:
            return Response(400, graph_error(
                "Invalid OAuth access token - Cannot parse access token", 190))
        versioned = VERSIONED.fullmatch(request.path)
        if versioned is None:
            return Response(400, graph_error(
                f"Unknown path components: {request.path}", 2500))
        path = versioned.group(2)
        if request.method == "GET" and path == f"/act_{self.ad_account}/customaudiences":
            return self._list(params)
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[1] == "users" and request.method in ("POST", "DELETE"):
            return self._users(request.method, parts[0], params)
        return Response(400, graph_error(
            f"Unsupported {request.method.lower()} request.", 100, "GraphMethodException"))

    def _list(self, params: dict[str, list[str]]) -> Response:
        limit = int(_first(params, "limit") or 25)
        after = int(_first(params, "after") or 0)
        audiences = sorted(self.audiences.values(), key=lambda a: a.id)
        page = audiences[after:after + limit]
        data = []
        for audience in page:
            status = ({"code": 471, "description": "Audience flagged"} if audience.flagged
                      else {"code": 200, "description": "Normal"})
            data.append({"id": audience.id, "name": audience.name, "subtype": audience.subtype,
                         "operation_status": status})
        body: dict[str, Any] = {"data": data, "paging": {"cursors": {"after": str(after + limit)}}}
        if after + limit < len(audiences):
            body["paging"]["next"] = (
                f"{self.url}/v23.0/act_{self.ad_account}/customaudiences"
                f"?limit={limit}&after={after + limit}&fields={_first(params, 'fields') or ''}"
            )
        return Response(200, body)

    def _users(self, method: str, audience_id: str, params: dict[str, list[str]]) -> Response:
        audience = self.audiences.get(audience_id)
        if audience is None:
            return Response(400, graph_error(
                f"Unsupported post request. Object with ID '{audience_id}' does not exist,"
                " cannot be loaded due to missing permissions, or does not support this"
                " operation.", 100, "GraphMethodException", 33))
        if audience.flagged:
            return Response(400, graph_error("Invalid parameter", 100, "OAuthException",
                                             1713230))
        raw = _first(params, "payload")
        try:
            payload = json.loads(raw or "")
        except ValueError:
            return Response(400, graph_error("(#100) param payload must be a JSON object", 100))
        schema = payload.get("schema") if isinstance(payload, dict) else None
        data = payload.get("data") if isinstance(payload, dict) else None
        if isinstance(schema, str):
            schema = [schema]
            data = [[row] for row in data] if isinstance(data, list) else data
        if not isinstance(schema, list) or not isinstance(data, list) or not data:
            return Response(400, graph_error("(#100) payload needs a schema and data", 100))
        unknown = [key for key in schema if key not in HASHED_KEYS | CLEAR_KEYS]
        if unknown:
            return Response(400, graph_error(f"(#100) Invalid schema key: {unknown[0]}", 100))
        if len(data) > MAX_ROWS:
            return Response(400, graph_error(
                f"(#100) The number of users in a request must be at most {MAX_ROWS}", 100))
        for row in data:
            if not isinstance(row, list) or len(row) != len(schema):
                return Response(400, graph_error(
                    "(#100) Every row of data must have one value per schema key", 100))
            for key, value in zip(schema, row, strict=True):
                if key in HASHED_KEYS and value and not SHA256.fullmatch(str(value)):
                    return Response(400, graph_error(
                        f"(#100) Data for {key} must be normalized and hashed with SHA-256",
                        100))
        invalid: dict[str, str] = {}
        with self._state:
            self.uploads.append((method, audience_id, {"schema": schema, "data": data}))
            for row in data:
                member = {k: str(v) for k, v in zip(schema, row, strict=True) if v}
                madid = member.get("MADID")
                if madid is not None and not MADID.fullmatch(madid):
                    invalid[madid] = "Invalid MADID format"
                    continue
                if not member:
                    continue
                if method == "POST":
                    _add(audience, member)
                else:
                    _remove(audience, member)
            self._sessions += 1
            session = self._sessions
        return Response(200, {
            "audience_id": audience_id, "session_id": str(1000 + session),
            "num_received": len(data), "num_invalid_entries": len(invalid),
            "invalid_entry_samples": invalid,
        })


def _person(member: dict[str, str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in member.items() if k in PERSON_KEYS]


def _add(audience: Audience, member: dict[str, str]) -> None:
    known = next((audience.index[p] for p in _person(member) if p in audience.index), None)
    if known is None:
        known = {}
        audience.members.append(known)
    known.update(member)
    for pair in _person(member):
        audience.index[pair] = known


def _remove(audience: Audience, member: dict[str, str]) -> None:
    gone = {id(audience.index[p]): audience.index[p] for p in _person(member)
            if p in audience.index}
    if not gone:
        return
    audience.members = [known for known in audience.members if id(known) not in gone]
    for known in gone.values():
        for pair in _person(known):
            audience.index.pop(pair, None)


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token if scheme in ("OAuth", "Bearer") else None


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None
