"""Settings read once from `RETL_*` environment variables into a frozen object."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    secret_key: str | None
    home: Path
    source_statement_timeout_s: float
    preview_seconds: float
    preview_max_rows: int
    lease_seconds: float
    heartbeat_seconds: float
    writer_follow_s: float
    beat_interval_s: float
    min_schedule_interval_s: float
    reaper_interval_s: float
    worker_grace_s: float
    max_runs_per_workspace: int
    log_level: str
    log_format: str
    alert_dlq_threshold: int
    alert_retry_s: float
    queue: str
    duckdb_directories: tuple[str, ...]
    # Hosts, CIDRs (and socket folders) a workspace's connections may reach though the egress
    # policy closes them by default, and those it closes though they would be open.
    egress_allow: str = ""
    egress_deny: str = ""
    allow_privileged_sources: bool = False
    duckdb_memory_limit: str = "1GB"
    duckdb_threads: int = 2
    database_wait_s: float = 10.0
    metrics_token: str | None = None
    # The bytes of sync-read answers an API process keeps (api/answers.py); 0 keeps none.
    api_answer_cache_bytes: int = 32 * 1024 * 1024
    # The memory each of a planner's two sessions may give the hash tables of its search and
    # its diff (Postgres's work_mem for those sessions).
    plan_work_mem_mb: int = 1024

    @property
    def control_queue(self) -> str:
        """Schedule ticks and the reaper: a queue of their own, so a large run's batches never
        delay them."""
        return f"{self.queue}-control"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError("RETL_DATABASE_URL is not set (retl up starts an embedded Postgres)")
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError("RETL_REDIS_URL is not set (retl up starts an embedded Redis)")
        return self.redis_url


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


@cache
def get_settings() -> Settings:
    return Settings(
        database_url=os.environ.get("RETL_DATABASE_URL") or None,
        redis_url=os.environ.get("RETL_REDIS_URL") or None,
        secret_key=os.environ.get("RETL_SECRET_KEY") or None,
        home=Path(os.environ.get("RETL_HOME") or ".retl").resolve(),
        source_statement_timeout_s=_float("RETL_SOURCE_STATEMENT_TIMEOUT", 1800),
        preview_seconds=_float("RETL_PREVIEW_SECONDS", 30),
        preview_max_rows=int(_float("RETL_PREVIEW_MAX_ROWS", 200_000)),
        lease_seconds=_float("RETL_LEASE_SECONDS", 60),
        heartbeat_seconds=_float("RETL_HEARTBEAT_SECONDS", 10),
        writer_follow_s=_float("RETL_WRITER_FOLLOW_SECONDS", 1.0),
        beat_interval_s=_float("RETL_BEAT_INTERVAL_SECONDS", 5),
        min_schedule_interval_s=_float("RETL_MIN_SCHEDULE_INTERVAL_SECONDS", 60),
        reaper_interval_s=_float("RETL_REAPER_INTERVAL_SECONDS", 30),
        worker_grace_s=_float("RETL_WORKER_GRACE_SECONDS", 30),
        max_runs_per_workspace=int(_float("RETL_MAX_RUNS_PER_WORKSPACE", 0)),
        log_level=os.environ.get("RETL_LOG_LEVEL", "INFO"),
        log_format="json" if os.environ.get("RETL_LOG_FORMAT", "").lower() == "json" else "text",
        alert_dlq_threshold=int(_float("RETL_ALERT_DLQ_THRESHOLD", 100)),
        alert_retry_s=_float("RETL_ALERT_RETRY_SECONDS", 5),
        queue=os.environ.get("RETL_QUEUE", "retl"),
        duckdb_directories=tuple(
            d for d in os.environ.get("RETL_DUCKDB_DIRECTORIES", "").split(os.pathsep) if d
        ),
        egress_allow=os.environ.get("RETL_EGRESS_ALLOW", ""),
        egress_deny=os.environ.get("RETL_EGRESS_DENY", ""),
        allow_privileged_sources=os.environ.get("RETL_ALLOW_PRIVILEGED_SOURCES", "") == "1",
        duckdb_memory_limit=os.environ.get("RETL_DUCKDB_MEMORY_LIMIT") or "1GB",
        duckdb_threads=int(_float("RETL_DUCKDB_THREADS", 2)),
        database_wait_s=_float("RETL_DATABASE_WAIT_SECONDS", 10),
        metrics_token=os.environ.get("RETL_METRICS_TOKEN") or None,
        api_answer_cache_bytes=int(_float("RETL_API_ANSWER_CACHE_MB", 32) * 1024 * 1024),
        plan_work_mem_mb=max(4, int(_float("RETL_PLAN_WORK_MEM_MB", 1024))),
    )
