"""Bearer-key authentication for every /api route: the key decides the workspace."""

from __future__ import annotations

from flask import Blueprint, g, request

from shared.services import auth


def require_workspace(blueprint: Blueprint) -> None:
    @blueprint.before_request
    def _authenticate() -> None:
        g.workspace_id = auth.workspace_for_bearer(request.headers.get("Authorization"))


def workspace_id() -> str:
    return g.workspace_id
