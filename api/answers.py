"""Answers of sync reads kept per process, reused while the workspace's syncs have not changed.

`GET /syncs` and `GET /syncs/{id}` are the reads dashboards and scripts repeat. Every change to
a workspace's syncs moves its `syncs_version` (a trigger, migration 0024), and the statement
that looks the request's key up reads that version too. A read whose workspace, path, query
string and version match a kept answer is answered with its bytes: the key lookup is its only
round trip, and no row is read, converted or encoded again. Any other read runs as usual and
its answer is kept for that version.

Never stale: the version is read before the rows, so an answer is kept under a version no newer
than its rows, and a read that follows a change reads the moved version (or a newer one). Only
successful answers are kept; an error (404, 401) is raised before anything is kept, and the key
is checked on every request. The kept answers of one process are bounded in bytes
(RETL_API_ANSWER_CACHE_MB, 32 by default; 0 keeps none), least recently used first out."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from flask import Response, g, request

from shared.settings import get_settings


class AnswerCache:
    """Answers by key, each with the version it was made for; one larger than a tenth of the
    budget is not kept (a page of a hundred syncs with long queries)."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._max_bytes = max_bytes
        self._answers: OrderedDict[tuple, tuple[int, bytes, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def max_bytes(self) -> int:
        if self._max_bytes is None:  # read when first used: settings come from the environment
            self._max_bytes = get_settings().api_answer_cache_bytes
        return self._max_bytes

    def get(self, key: tuple, version: int) -> tuple[bytes, int] | None:
        with self._lock:
            kept = self._answers.get(key)
            if kept is None or kept[0] != version:
                return None
            self._answers.move_to_end(key)
            return kept[1], kept[2]

    def put(self, key: tuple, version: int, body: bytes, status: int) -> None:
        if len(body) > self.max_bytes // 10 or not self.max_bytes:
            return
        with self._lock:
            old = self._answers.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._answers[key] = (version, body, status)
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, (_, dropped, _) = self._answers.popitem(last=False)
                self._bytes -= len(dropped)


SYNC_READS = AnswerCache()


def sync_read(answer: Callable[[], Any]) -> Any:
    """The answer of a sync read: the one kept for this workspace, request and version of its
    syncs, or `answer()`'s, then kept."""
    key = (g.workspace_id, request.path, request.query_string)
    kept = SYNC_READS.get(key, g.syncs_version)
    if kept is not None:
        body, status = kept
        return Response(body, status=status, mimetype="application/json")
    response = answer()
    if isinstance(response, tuple):
        response, status = response
        response.status_code = status
    SYNC_READS.put(key, g.syncs_version, response.get_data(), response.status_code)
    return response
