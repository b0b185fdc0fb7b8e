"""Bearer-key authentication for every /api route: the key decides the workspace."""

from __future__ import annotations

from flask import Blueprint, g, request

from api.http import text_problem
from shared.errors import NotFound
from shared.services import auth


def require_workspace(blueprint: Blueprint) -> None:
    @blueprint.before_request
    def _authenticate() -> None:
        g.workspace_id = auth.workspace_for_bearer(request.headers.get("Authorization"))
        # An id no row can have (Postgres text holds no NUL) is unknown, like any other.
        for value in (request.view_args or {}).values():
            if isinstance(value, str) and text_problem(value):
                raise NotFound("no such id")


def workspace_id() -> str:
    return g.workspace_id
