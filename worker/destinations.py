"""One connector instance (and so one HTTP session) and one limiter per destination per worker
process, rebuilt only when the destination's config changes."""

from __future__ import annotations

import threading
from functools import cache

import redis

from connectors.destinations.base import Destination
from shared.repositories.connections import Connection
from shared.services.connections import open_connector
from shared.settings import get_settings
from worker.limits import DestinationLimiter

_lock = threading.Lock()
_instances: dict[str, tuple[str, Destination, DestinationLimiter]] = {}


@cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().require_redis_url())


def _limiter(record: Connection, destination: Destination) -> DestinationLimiter:
    concurrency = int(destination.config.get("maxConcurrency") or destination.max_concurrency)
    return DestinationLimiter(
        redis_client(), record.id, rate=destination.fleet_rate_limit(), max_concurrency=concurrency,
        slot_ttl_s=max(get_settings().lease_seconds, 10.0),
    )


def destination_for(record: Connection) -> tuple[Destination, DestinationLimiter]:
    """The cached connector and limiter of `record`; a config change replaces both."""
    version = f"{record.connector}:{record.config_encrypted}"
    with _lock:
        cached = _instances.get(record.id)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        if cached is not None:
            cached[1].close()
        destination = open_connector(record)
        limiter = _limiter(record, destination)
        _instances[record.id] = (version, destination, limiter)
        return destination, limiter


def forget_all() -> None:
    """Close every cached connector (a forked child must not share its parent's sockets)."""
    with _lock:
        for _, destination, _ in _instances.values():
            destination.close()
        _instances.clear()
    redis_client.cache_clear()
