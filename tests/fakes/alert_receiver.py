"""Fake receivers of retl's alerts: a JSON webhook that keeps every body it accepted, and a Slack
incoming webhook that checks a message as Slack does before it posts it.

Slack answers 200 `ok` (text/plain) for a message it posts; 400 `invalid_payload` for a body
that is not a JSON object, `no_text` when neither `text` nor `blocks` is given, and
`invalid_blocks` for blocks Block Kit refuses: at most 50 blocks; a `section` has a `text`
object or up to 10 `fields`; a text object is `{"type": "mrkdwn" | "plain_text", "text": …}`
with at most 3,000 characters (2,000 in a field); a `context` has 1 to 10 elements."""

from __future__ import annotations

import json
import threading
from typing import Any

from tests.fakes.base import FakeServer, Request, Response

BLOCK_TYPES = {"section", "context", "divider", "header", "actions", "image", "rich_text"}


class FakeWebhook(FakeServer):
    """Accepts JSON objects POSTed to `path`; `received` holds their bodies in order."""

    def __init__(self, path: str = "/hooks/retl", required_headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.path = path
        self.required_headers = {k.lower(): v for k, v in (required_headers or {}).items()}
        self.received: list[dict[str, Any]] = []
        self.arrived = threading.Event()

    def handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != self.path:
            return Response(404, "no_service")
        for name, value in self.required_headers.items():
            if request.headers.get(name) != value:
                return Response(403, "forbidden")
        problem, body = self.check(request)
        if problem:
            return Response(400, problem)
        self.received.append(body)
        self.arrived.set()
        return Response(200, "ok")

    def check(self, request: Request) -> tuple[str | None, Any]:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return "invalid_payload", None
        try:
            body = json.loads(request.body)
        except ValueError:
            return "invalid_payload", None
        return (None, body) if isinstance(body, dict) else ("invalid_payload", None)


class FakeSlackWebhook(FakeWebhook):
    """A Slack incoming webhook at /services/T…/B…/secret."""

    def __init__(self) -> None:
        super().__init__("/services/T0RETL/B0RETL/s3cret-Slack-Path-9K")

    def check(self, request: Request) -> tuple[str | None, Any]:
        problem, body = super().check(request)
        if problem:
            return problem, None
        if not body.get("text") and not body.get("blocks"):
            return "no_text", None
        if "text" in body and not isinstance(body["text"], str):
            return "invalid_payload", None
        if "blocks" in body and not _valid_blocks(body["blocks"]):
            return "invalid_blocks", None
        return None, body


def _valid_text(value: Any, limit: int = 3000) -> bool:
    return (
        isinstance(value, dict) and value.get("type") in ("mrkdwn", "plain_text")
        and isinstance(value.get("text"), str) and 0 < len(value["text"]) <= limit
    )


def _valid_blocks(blocks: Any) -> bool:
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return False
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            return False
        if block["type"] == "section":
            fields = block.get("fields")
            if "text" not in block and not fields:
                return False
            if "text" in block and not _valid_text(block["text"]):
                return False
            if fields is not None and (
                not isinstance(fields, list) or not 0 < len(fields) <= 10
                or not all(_valid_text(f, 2000) for f in fields)
            ):
                return False
        if block["type"] == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 0 < len(elements) <= 10:
                return False
            if not all(_valid_text(e) for e in elements):
                return False
    return True
