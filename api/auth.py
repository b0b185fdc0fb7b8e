"""Bearer-key authentication for every /api route: the key decides the workspace.

The key is looked up on a connection checked out for the request (`shared.db.carry`), which the
route's service then uses for its own work: one checkout, and no transaction of its own for the
key (an authenticated read is the key lookup and the read, nothing else)."""

from __future__ import annotations

from contextlib import ExitStack

from flask import Blueprint, g, request

from api.http import text_problem
from shared import db
from shared.errors import NotFound
from shared.services import auth


def require_workspace(blueprint: Blueprint) -> None:
    @blueprint.before_request
    def _authenticate() -> None:
        key_hash = auth.key_hash_of_bearer(request.headers.get("Authorization"))
        g.request_connection = ExitStack()
        conn = g.request_connection.enter_context(db.carry())
        g.workspace_id, g.syncs_version = auth.workspace_for_key_hash(conn, key_hash)
        # An id no row can have (Postgres text holds no NUL) is unknown, like any other.
        for value in (request.view_args or {}).values():
            if isinstance(value, str) and text_problem(value):
                raise NotFound("no such id")

    @blueprint.teardown_request
    def _give_back(_exc: BaseException | None) -> None:
        scope = g.pop("request_connection", None)
        if scope is not None:
            scope.close()


def workspace_id() -> str:
    return g.workspace_id
