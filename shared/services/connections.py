"""Sources and destinations: create, read, update, delete, test, and destination discovery.

Configs are encrypted at rest; what leaves this module for the API never holds a secret."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors import registry
from connectors.destinations.base import Destination, DestinationField, DestinationObject
from connectors.errors import AuthError, ConnectorError, PrivilegedRoleError, RetryableError
from connectors.sources.base import Source
from shared import ids
from shared.db import transaction
from shared.errors import Conflict, Invalid, NotFound, Unavailable
from shared.pagination import Page, decode_cursor, page_of
from shared.repositories import connections as repo
from shared.secrets import decrypt_config, encrypt_config
from shared.settings import get_settings

KINDS = {"source": ids.SOURCE, "destination": ids.DESTINATION}
# Options every destination takes to set its fleet-wide limits, with the values allowed.
FLEET_LIMITS = {"rateLimitPerSecond": (0.01, 100_000), "maxConcurrency": (1, 1_000)}
# `rateLimit`: {"requests": N, "perSeconds": S}, the allowance as the vendor counts it.
RATE_WINDOW = {"requests": (1, 1_000_000), "perSeconds": (0.01, 86_400)}


@dataclass
class ConnectionView:
    """A connection as the API shows it: config without secret values."""

    record: repo.Connection
    config: dict[str, Any]
    secrets_set: list[str]
    objects_discoverable: bool


def _connector_class(kind: str, connector: str) -> type[Destination] | type[Source]:
    table = registry.destinations() if kind == "destination" else registry.sources()
    if connector not in table:
        raise Invalid(
            f"unknown {kind} connector {connector!r}; one of: {', '.join(sorted(table))}",
            pointer="/connector",
        )
    return table[connector]


def _check_config(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    declared = {f.name: f for f in cls.config_fields}
    for name in config:
        if declared and name not in declared and name not in FLEET_LIMITS and name != "rateLimit":
            raise Invalid(f"unknown option {name!r} for {cls.type}", pointer=f"/config/{name}")
    for field in cls.config_fields:
        if field.required and config.get(field.name) in (None, ""):
            raise Invalid(f"{field.name} is required for {cls.type}", pointer=f"/config/{field.name}")
    for name, (low, high) in FLEET_LIMITS.items():
        value = config.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise Invalid(f"{name} must be a number from {low:g} to {high:g}", pointer=f"/config/{name}")
    if config.get("rateLimit") is not None:
        _check_rate_window(config)
    # The connector's own checks (URL schemes, enums, numbers), made without calling anyone.
    try:
        cls(config).close()
    except ConnectorError as exc:
        raise Invalid(f"{cls.type} refuses this config: {exc.message}", pointer="/config") from None
    except (ValueError, TypeError, AttributeError):
        raise Invalid(f"{cls.type} refuses this config: an option has a value of the wrong type",
                      pointer="/config") from None
    return config


def _check_rate_window(config: dict[str, Any]) -> None:
    window = config["rateLimit"]
    if config.get("rateLimitPerSecond") is not None:
        raise Invalid("give rateLimit or rateLimitPerSecond, not both", pointer="/config/rateLimit")
    if not isinstance(window, dict) or set(window) != set(RATE_WINDOW):
        raise Invalid('rateLimit is {"requests": N, "perSeconds": S}', pointer="/config/rateLimit")
    for name, (low, high) in RATE_WINDOW.items():
        value = window[name]
        whole = name != "requests" or isinstance(value, int)
        if isinstance(value, bool) or not isinstance(value, int | float) or not whole \
                or not low <= value <= high:
            kind = "a whole number" if name == "requests" else "a number"
            raise Invalid(f"rateLimit.{name} must be {kind} from {low:g} to {high:g}",
                          pointer=f"/config/rateLimit/{name}")


def _view(record: repo.Connection) -> ConnectionView:
    cls = _connector_class(record.kind, record.connector)
    config = decrypt_config(record.config_encrypted)
    secret = set(cls.secret_fields())
    return ConnectionView(
        record=record,
        config={k: v for k, v in config.items() if k not in secret},
        secrets_set=sorted(k for k in config if k in secret),
        objects_discoverable=record.kind == "destination",
    )


def _refuse_privileged_source(cls: type, config: dict[str, Any]) -> None:
    """A source whose credentials can do more than read is refused when it is saved, if it can
    be reached now (one that cannot is checked again by `test` and by every run)."""
    source = _source(cls, config)
    try:
        source.check_least_privilege()
    except PrivilegedRoleError as exc:
        raise Invalid(exc.message, pointer="/config/url") from None
    except ConnectorError:
        pass
    finally:
        source.close()


def create(workspace_id: str, kind: str, name: str, connector: str, config: dict[str, Any]) -> ConnectionView:
    cls = _connector_class(kind, connector)
    _check_config(cls, config)
    if kind == "source":
        _refuse_privileged_source(cls, config)
    with transaction() as conn:
        record = repo.insert(
            conn, id=ids.new_id(KINDS[kind]), workspace_id=workspace_id, kind=kind, name=name,
            connector=connector, config_encrypted=encrypt_config(config),
        )
    return _view(record)


def _get(conn: Any, workspace_id: str, kind: str, id: str) -> repo.Connection:
    record = repo.get(conn, workspace_id, kind, id)
    if record is None:
        raise NotFound(f"no {kind} {id}")
    return record


def get(workspace_id: str, kind: str, id: str) -> ConnectionView:
    with transaction() as conn:
        return _view(_get(conn, workspace_id, kind, id))


def list_page(
    workspace_id: str, kind: str, *, connector: str | None, cursor: str | None, limit: int
) -> Page[ConnectionView]:
    after = decode_cursor(cursor)
    with transaction() as conn:
        rows = repo.list_page(conn, workspace_id, kind, connector=connector, after=after, limit=limit + 1)
    page = page_of(rows, limit)
    return Page([_view(r) for r in page.items], page.limit, page.next_cursor)


def update(workspace_id: str, kind: str, id: str, changes: dict[str, Any]) -> ConnectionView:
    """`changes` may hold name and config; config keys are merged, so secrets may be left out."""
    with transaction() as conn:
        record = _get(conn, workspace_id, kind, id)
        values: dict[str, Any] = {}
        if "name" in changes:
            values["name"] = changes["name"]
        if "config" in changes:
            cls = _connector_class(kind, record.connector)
            merged = {**decrypt_config(record.config_encrypted), **changes["config"]}
            merged = {k: v for k, v in merged.items() if v is not None}
            values["config_encrypted"] = encrypt_config(_check_config(cls, merged))
            values["status"] = "untested"
            if kind == "source":
                _refuse_privileged_source(cls, merged)
        if values:
            record = repo.update(conn, id, values)
    return _view(record)


def delete(workspace_id: str, kind: str, id: str) -> repo.Connection:
    with transaction() as conn:
        record = _get(conn, workspace_id, kind, id)
        if repo.is_used_by_syncs(conn, id):
            raise Conflict(f"{kind} {id} is used by syncs; delete or change them first")
        repo.delete(conn, id)
    return record


def open_connector(record: repo.Connection) -> Destination | Source:
    """An instance of the record's connector with its decrypted config."""
    cls = _connector_class(record.kind, record.connector)
    config = decrypt_config(record.config_encrypted)
    if record.kind == "source":
        return _source(cls, config)
    return cls(config)


def _source(cls: type, config: dict[str, Any]) -> Source:
    """A source with the operator's limits: the query deadline, DuckDB's folders, memory and
    threads, and whether privileged roles are allowed."""
    settings = get_settings()
    return cls(
        config, statement_timeout_s=settings.source_statement_timeout_s,
        allowed_directories=settings.duckdb_directories,
        allow_privileged=settings.allow_privileged_sources,
        memory_limit=settings.duckdb_memory_limit, threads=settings.duckdb_threads,
    )


def record_status(id: str, status: str, message: str | None) -> None:
    with transaction() as conn:
        repo.set_status(conn, id, status, message)


def test(workspace_id: str, kind: str, id: str) -> ConnectionView:
    """Call the vendor with the stored credentials; the status is kept on the connection."""
    with transaction() as conn:
        record = _get(conn, workspace_id, kind, id)
    try:
        connector = open_connector(record)
    except ConnectorError as exc:  # a config stored before its connector checked it
        record_status(id, "error", exc.message)
        return get(workspace_id, kind, id)
    try:
        connector.test()
        status, message = "connected", None
    except AuthError as exc:
        status, message = "auth_failed", exc.message
    except ConnectorError as exc:
        status, message = "error", exc.message
    except Exception as exc:  # a connector bug must still answer, not 500
        status, message = "error", f"{type(exc).__name__}: {exc}"
    finally:
        connector.close()
    record_status(id, status, message)
    return get(workspace_id, kind, id)


def _destination(workspace_id: str, destination_id: str) -> Destination:
    with transaction() as conn:
        record = repo.get(conn, workspace_id, "destination", destination_id)
    if record is None:
        raise NotFound(f"no destination {destination_id}", pointer="/destination_id")
    try:
        return open_connector(record)
    except ConnectorError as exc:
        raise Unavailable(f"the destination's config is not usable: {exc.message}") from None


def _discover(destination: Destination, call: Any) -> Any:
    try:
        return call()
    except AuthError as exc:
        raise Unavailable(f"the destination rejected its credentials: {exc.message}") from None
    except ConnectorError as exc:
        if exc.code == "NOT_FOUND":
            raise NotFound(exc.message, pointer="/object_name") from None
        raise Unavailable(f"the destination could not be asked: {exc.message}") from None
    finally:
        destination.close()


def list_objects(workspace_id: str, destination_id: str, search: str | None) -> list[DestinationObject]:
    destination = _destination(workspace_id, destination_id)
    objects = _discover(destination, destination.list_objects)
    if search:
        needle = search.lower()
        objects = [o for o in objects if needle in o.label.lower() or needle in o.api_name.lower()]
    return objects


def list_fields(workspace_id: str, destination_id: str, object_name: str) -> list[DestinationField]:
    """Fields of one of the destination's objects; an object it does not have is a 404."""
    destination = _destination(workspace_id, destination_id)

    def fields_of_known_object() -> list[DestinationField]:
        try:
            return destination.list_fields(object_name)
        except (AuthError, RetryableError):
            raise
        except ConnectorError:
            # Connectors word an unknown object their own way; their object list decides.
            if object_name not in {o.api_name for o in destination.list_objects()}:
                raise NotFound(f"destination {destination_id} has no object {object_name!r}",
                               pointer="/object_name") from None
            raise

    return _discover(destination, fields_of_known_object)
