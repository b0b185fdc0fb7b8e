"""API keys: creation (shown once) and authentication of a bearer key to its workspace."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import psycopg

from shared.db import read, transaction
from shared.errors import NotFound, Unauthorized
from shared.repositories import workspaces

KEY_PREFIX = "retl_sk_"


@dataclass
class IssuedKey:
    key: str
    key_id: str
    workspace_id: str
    workspace_name: str
    display_hint: str
    created_at: object


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _issue(conn, workspace: workspaces.Workspace) -> IssuedKey:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = workspaces.insert_api_key(conn, workspace.id, hash_key(key), key[:12] + "...")
    return IssuedKey(key, record.id, workspace.id, workspace.name, record.display_hint, record.created_at)


def create_api_key(workspace_name: str = "default") -> IssuedKey:
    """A new key for the workspace (created if needed); only its hash is stored."""
    with transaction() as conn:
        return _issue(conn, workspaces.get_or_create_workspace(conn, workspace_name))


def create_api_key_in(workspace_id: str) -> IssuedKey:
    """A new key for an existing workspace (an authenticated caller's own)."""
    with transaction() as conn:
        return _issue(conn, workspaces.get_workspace(conn, workspace_id))


def key_hash_of_bearer(authorization: str | None) -> str:
    """The hash of the key an `Authorization: Bearer <key>` header carries; 401 when the header
    cannot hold a key (checked before any database work)."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith(KEY_PREFIX) or len(key) > 200:
        raise Unauthorized("send Authorization: Bearer <API key>")
    return hash_key(key)


def workspace_for_key_hash(conn: psycopg.Connection, key_hash: str) -> tuple[str, int]:
    """The workspace a live key authenticates and the version of its syncs, looked up on `conn`
    (the API's request connection, which the request's work then uses)."""
    found = workspaces.workspace_for_key_hash(conn, key_hash)
    if found is None:
        raise Unauthorized("unknown or revoked API key")
    return found


def list_api_keys(workspace_id: str) -> list[workspaces.ApiKey]:
    with read() as conn:
        return workspaces.list_api_keys(conn, workspace_id)


def revoke_api_key(workspace_id: str, key_id: str) -> workspaces.ApiKey:
    with transaction() as conn:
        key = workspaces.revoke_api_key(conn, workspace_id, key_id)
    if key is None:
        raise NotFound(f"no API key {key_id}")
    return key
