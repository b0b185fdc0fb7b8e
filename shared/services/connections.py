"""Sources and destinations: create, read, update, delete, test, and destination discovery.

Configs are encrypted at rest; what leaves this module for the API never holds a secret: secret
fields are left out, URLs show their credentials as REDACTED, and every message about a
connection passes through its Redactor."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from connectors import redaction, registry
from connectors.destinations.base import Destination, DestinationField, DestinationObject
from connectors.egress import EgressRefused
from connectors.errors import AuthError, ConnectorError, PrivilegedRoleError, RetryableError
from connectors.sources.base import Source
from shared import ids
from shared.db import read, transaction
from shared.errors import Conflict, Invalid, NotFound, Unavailable
from shared.pagination import Page, decode_cursor, page_of
from shared.repositories import connections as repo
from shared.secrets import decrypt_config, encrypt_config
from shared.settings import get_settings

log = logging.getLogger(__name__)

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


def _pointer(message: str) -> str:
    """The JSON pointer a connector's "config <name> ..." message is about."""
    named = re.match(r"config (\w+)", message)
    return f"/config/{named[1]}" if named else "/config"


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
    except EgressRefused as exc:
        raise Invalid(_redactor(cls, config)(exc.message), pointer=_pointer(exc.message)) from None
    except ConnectorError as exc:
        message = _redactor(cls, config)(exc.message)
        raise Invalid(f"{cls.type} refuses this config: {message}",
                      pointer=_pointer(exc.message)) from None
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


def _redactor(cls: type, config: dict[str, Any]) -> redaction.Redactor:
    return redaction.Redactor(redaction.secret_values(config, cls.secret_fields()))


# A connection, as far as its secrets go: (kind, connector, encrypted config).
_Secrets = tuple[str, str, str]


@lru_cache(maxsize=256)
def _redactor_of(connections: tuple[_Secrets, ...]) -> redaction.Redactor:
    values: set[str] = set()
    for kind, connector, config_encrypted in connections:
        cls = _connector_class(kind, connector)
        values |= redaction.secret_values(decrypt_config(config_encrypted), cls.secret_fields())
    return redaction.Redactor(values)


def _record_redactor(kind: str, connector: str, config_encrypted: str) -> redaction.Redactor:
    return _redactor_of(((kind, connector, config_encrypted),))


def redactor_for(*records: repo.Connection | None) -> redaction.Redactor:
    """What takes the secrets of `records` (a run's source and destination) out of a text;
    built once per config version."""
    return _redactor_of(tuple(
        (r.kind, r.connector, r.config_encrypted) for r in records if r is not None
    ))


def _view(record: repo.Connection) -> ConnectionView:
    cls = _connector_class(record.kind, record.connector)
    config = decrypt_config(record.config_encrypted)
    secret = set(cls.secret_fields())
    shown = {
        k: redaction.redacted_url(v) if isinstance(v, str) else v
        for k, v in config.items() if k not in secret
    }
    return ConnectionView(
        record=record,
        config=shown,
        secrets_set=sorted(k for k in config if k in secret),
        objects_discoverable=record.kind == "destination",
    )


def _origins(config: dict[str, Any]) -> dict[str, tuple[str, str, int | None]]:
    """(scheme, host, port) of every URL setting of a config."""
    found = {}
    for name, value in config.items():
        if isinstance(value, str) and "://" in value:
            try:
                parts = urlsplit(value)
                found[name] = (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)
            except ValueError:
                found[name] = (value, "", None)
    return found


def _merge(cls: type, stored: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `stored`. A URL read back with its credentials REDACTED keeps the stored
    ones; a URL whose origin changes takes with it every secret not given again, so stored
    credentials never travel to a host they were not given for."""
    given = {
        k: redaction.restore_url(v, stored[k]) if isinstance(v, str) and isinstance(stored.get(k), str)
        else v
        for k, v in given.items()
    }
    merged = {**stored, **given}
    before, after = _origins(stored), _origins(merged)
    if any(before.get(name) != origin for name, origin in after.items()):
        for name in cls.secret_fields():
            if name not in given:
                merged.pop(name, None)
    return {k: v for k, v in merged.items() if v is not None}


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
    redaction.remember(record.id, redaction.secret_values(config, cls.secret_fields()))
    return _view(record)


def _get(conn: Any, workspace_id: str, kind: str, id: str) -> repo.Connection:
    record = repo.get(conn, workspace_id, kind, id)
    if record is None:
        raise NotFound(f"no {kind} {id}")
    return record


def get(workspace_id: str, kind: str, id: str) -> ConnectionView:
    with read() as conn:
        return _view(_get(conn, workspace_id, kind, id))


def list_page(
    workspace_id: str, kind: str, *, connector: str | None, cursor: str | None, limit: int
) -> Page[ConnectionView]:
    after = decode_cursor(cursor)
    with read() as conn:
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
            stored = decrypt_config(record.config_encrypted)
            # Log lines of this request must not show the values given nor those replaced.
            redaction.remember(id, redaction.secret_values({**stored, **changes["config"]},
                                                           cls.secret_fields()))
            merged = _merge(cls, stored, changes["config"])
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
    redaction.remember(record.id, redaction.secret_values(config, cls.secret_fields()))
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
    """Keep a connection's status; the message without any of its secrets."""
    with transaction() as conn:
        record = repo.get_by_id(conn, id)
        if record is None:
            return
        redact = _record_redactor(record.kind, record.connector, record.config_encrypted)
        repo.set_status(conn, id, status, redact(message))


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
        log.exception("testing %s %s failed", kind, id)
        status, message = "error", f"the {record.connector} connector failed ({type(exc).__name__})"
    finally:
        connector.close()
    record_status(id, status, message)
    return get(workspace_id, kind, id)


def _destination(workspace_id: str, destination_id: str) -> tuple[Destination, redaction.Redactor]:
    with transaction() as conn:
        record = repo.get(conn, workspace_id, "destination", destination_id)
    if record is None:
        raise NotFound(f"no destination {destination_id}", pointer="/destination_id")
    redact = _record_redactor(record.kind, record.connector, record.config_encrypted)
    try:
        return open_connector(record), redact
    except ConnectorError as exc:
        raise Unavailable(f"the destination's config is not usable: {redact(exc.message)}") from None


def _discover(destination: Destination, redact: redaction.Redactor, call: Any) -> Any:
    try:
        return call()
    except AuthError as exc:
        raise Unavailable(f"the destination rejected its credentials: {redact(exc.message)}") from None
    except ConnectorError as exc:
        if exc.code == "NOT_FOUND":
            raise NotFound(redact(exc.message), pointer="/object_name") from None
        raise Unavailable(f"the destination could not be asked: {redact(exc.message)}") from None
    finally:
        destination.close()


def list_objects(workspace_id: str, destination_id: str, search: str | None) -> list[DestinationObject]:
    destination, redact = _destination(workspace_id, destination_id)
    objects = _discover(destination, redact, destination.list_objects)
    if search:
        needle = search.lower()
        objects = [o for o in objects if needle in o.label.lower() or needle in o.api_name.lower()]
    return objects


def list_fields(workspace_id: str, destination_id: str, object_name: str) -> list[DestinationField]:
    """Fields of one of the destination's objects; an object it does not have is a 404."""
    destination, redact = _destination(workspace_id, destination_id)

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

    return _discover(destination, redact, fields_of_known_object)
