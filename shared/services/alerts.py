"""Alerts: a workspace's notification channels (a JSON webhook or a Slack incoming webhook),
the rule that turns a run's end into alert events, and the delivery of one alert.

The rule, per sync, looking at the run that just ended and the sync's previous run that ended
`succeeded` or `failed` (cancelled runs say nothing about a sync's health):
- `sync_failing`: the run failed and the previous one did not (it succeeded, or there was none);
  a broken sync alerts once, not at every failed run.
- `sync_recovered`: the run succeeded and the previous one failed.
- `dlq_threshold`: the sync's open DLQ entries went from below the channel's threshold when
  the run started to at or above it when it ended.
- `run_failed`: every failed run; only for channels that ask for it.
A run that succeeds with some records refused counts as succeeded.

Channel URLs and headers are encrypted at rest and never returned; delivery (a Celery task on
the control queue) is retried with backoff and never blocks or fails a run."""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass
from functools import cache
from typing import Any

import requests

from connectors import config_checks, egress
from connectors.errors import ConnectorError
from shared import ids
from shared.db import transaction
from shared.errors import Invalid, NotFound
from shared.pagination import Page, decode_cursor, page_of
from shared.repositories import alerts as repo
from shared.repositories import runs
from shared.secrets import decrypt_config, encrypt_config
from shared.settings import get_settings

log = logging.getLogger(__name__)

ALERT_CHANNEL = "retl_alert"


class AlertEvent(enum.StrEnum):
    """What a channel can be told; a new kind is one member here and its line in `_events_of`
    (and, when it needs one, its summary in `_summary`)."""

    SYNC_FAILING = "sync_failing"
    SYNC_RECOVERED = "sync_recovered"
    DLQ_THRESHOLD = "dlq_threshold"
    RUN_FAILED = "run_failed"
    RUN_HELD = "run_held"


# What a channel created without `events` is told.
DEFAULT_EVENTS = (AlertEvent.SYNC_FAILING, AlertEvent.SYNC_RECOVERED, AlertEvent.DLQ_THRESHOLD,
                  AlertEvent.RUN_HELD)

# Channel kinds and the config options each keeps secret.
KINDS: dict[str, frozenset[str]] = {
    "webhook": frozenset({"headers"}),
    "slack": frozenset({"url"}),  # a Slack incoming webhook's URL is its credential
}

DELIVERY_ATTEMPTS = 6
DELIVERY_TIMEOUT_S = 10.0
# Slack refuses a section text over 3,000 characters; errors are cut well below that.
ERROR_CHARS = 1000


# -- channels through the API ------------------------------------------------------------------


@dataclass
class ChannelView:
    """A channel as the API shows it: config without secret values."""

    record: repo.AlertChannel
    config: dict[str, Any]
    secrets_set: list[str]
    dlq_threshold: int


def _view(record: repo.AlertChannel) -> ChannelView:
    config = decrypt_config(record.config_encrypted)
    secret = KINDS[record.kind]
    return ChannelView(
        record=record,
        config={k: v for k, v in config.items() if k not in secret},
        secrets_set=sorted(k for k in config if k in secret),
        dlq_threshold=_threshold(record),
    )


def _threshold(record: repo.AlertChannel) -> int:
    return record.dlq_threshold or get_settings().alert_dlq_threshold


def _check_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    allowed = {"url", "headers"} if kind == "webhook" else {"url"}
    for name in config:
        if name not in allowed:
            raise Invalid(f"unknown option {name!r} for a {kind} channel", pointer=f"/config/{name}")
    url = config.get("url")
    if not isinstance(url, str) or not url:
        raise Invalid(f"url is required for a {kind} channel", pointer="/config/url")
    try:
        # The receiver is a workspace's connection like any other: the egress policy applies.
        egress.check_http_url(url)
    except ConnectorError as exc:
        raise Invalid(exc.message, pointer="/config/url") from None
    headers = config.get("headers", {})
    if not isinstance(headers, dict):
        raise Invalid("headers must be an object of strings", pointer="/config/headers")
    for name, value in headers.items():
        if not isinstance(value, str):
            raise Invalid("headers must be an object of strings", pointer=f"/config/headers/{name}")
        try:
            config_checks.header(name, value)
        except ConnectorError as exc:
            raise Invalid(exc.message, pointer=f"/config/headers/{name}") from None
    return config


def create(workspace_id: str, body: dict[str, Any]) -> ChannelView:
    config = _check_config(body["kind"], body["config"])
    with transaction() as conn:
        record = repo.insert(conn, {
            "id": ids.new_id(ALERT_CHANNEL), "workspace_id": workspace_id, "name": body["name"],
            "kind": body["kind"], "config_encrypted": encrypt_config(config),
            "events": list(body.get("events") or DEFAULT_EVENTS),
            "dlq_threshold": body.get("dlqThreshold"), "enabled": body.get("enabled", True),
        })
    return _view(record)


def _get(conn: Any, workspace_id: str, channel_id: str) -> repo.AlertChannel:
    record = repo.get(conn, workspace_id, channel_id)
    if record is None:
        raise NotFound(f"no alert channel {channel_id}")
    return record


def get(workspace_id: str, channel_id: str) -> ChannelView:
    with transaction() as conn:
        return _view(_get(conn, workspace_id, channel_id))


def list_page(workspace_id: str, *, cursor: str | None, limit: int) -> Page[ChannelView]:
    after = decode_cursor(cursor)
    with transaction() as conn:
        rows = repo.list_page(conn, workspace_id, after=after, limit=limit + 1)
    page = page_of(rows, limit)
    return Page([_view(r) for r in page.items], page.limit, page.next_cursor)


def update(workspace_id: str, channel_id: str, body: dict[str, Any]) -> ChannelView:
    """The fields given replace the stored ones; `config` is merged, so the URL (a secret for
    Slack) may be left out when changing something else. A null option removes it."""
    with transaction() as conn:
        record = _get(conn, workspace_id, channel_id)
        changes: dict[str, Any] = {}
        for field, column in (("name", "name"), ("events", "events"),
                              ("dlqThreshold", "dlq_threshold"), ("enabled", "enabled")):
            if field in body:
                changes[column] = body[field]
        if "config" in body:
            merged = {**decrypt_config(record.config_encrypted), **body["config"]}
            merged = {k: v for k, v in merged.items() if v is not None}
            changes["config_encrypted"] = encrypt_config(_check_config(record.kind, merged))
        if changes:
            record = repo.update(conn, channel_id, changes)
    return _view(record)


def delete(workspace_id: str, channel_id: str) -> repo.AlertChannel:
    with transaction() as conn:
        record = _get(conn, workspace_id, channel_id)
        repo.delete(conn, channel_id)
    return record


def send_test(workspace_id: str, channel_id: str) -> ChannelView:
    """Deliver a test alert now, once; the channel's last delivery tells how it went."""
    with transaction() as conn:
        record = _get(conn, workspace_id, channel_id)
    now = _now()
    alert = {
        "event": "test", "summary": f"retl: a test alert for channel {record.name!r}",
        "workspace_id": workspace_id, "occurred_at": now,
    }
    deliver(channel_id, alert, attempt=DELIVERY_ATTEMPTS - 1)
    return get(workspace_id, channel_id)


# -- from a run's end to alerts ------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def _events_of(status: str, previous: str | None) -> list[AlertEvent]:
    """The run events of a run that ended `status` after a previous outcome `previous`."""
    if status == "failed":
        return [AlertEvent.RUN_FAILED, *([AlertEvent.SYNC_FAILING] if previous != "failed" else [])]
    if status == "succeeded" and previous == "failed":
        return [AlertEvent.SYNC_RECOVERED]
    if status == "held":
        return [AlertEvent.RUN_HELD]
    return []


def alerts_for_run(run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(channel id, alert) for every alert the end of `run_id` raises."""
    with transaction() as conn:
        context = runs.context(conn, run_id)
        if context is None:
            return []
        channels = repo.enabled_for_workspace(conn, context.run.workspace_id)
        if not channels:
            return []
        run = context.run
        previous = runs.previous_outcome(conn, run.sync_id, run.id)
        dlq_before, dlq_now = repo.open_dlq_counts(
            conn, run.sync_id, run.started_at or run.created_at
        )
    events = _events_of(run.status, previous)
    base = {
        "workspace_id": run.workspace_id,
        "sync": {"id": run.sync_id, "name": context.sync_name},
        "destination": {"id": context.destination_id, "connector": context.connector},
        "run": {
            "id": run.id, "status": run.status, "trigger": run.trigger,
            "error": (run.error or "")[:ERROR_CHARS] or None, "rows_read": run.rows_read,
            "rows_written": run.rows_written, "rows_failed": run.rows_failed,
            "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
        },
        "occurred_at": _now(),
    }
    found: list[tuple[str, dict[str, Any]]] = []
    for channel in channels:
        wanted = [e for e in events if e in channel.events]
        threshold = _threshold(channel)
        if AlertEvent.DLQ_THRESHOLD in channel.events and dlq_before < threshold <= dlq_now:
            wanted.append(AlertEvent.DLQ_THRESHOLD)
        for event in wanted:
            alert = {"event": str(event), **base}
            if event == AlertEvent.DLQ_THRESHOLD:
                alert["dlq"] = {"open_entries": dlq_now, "threshold": threshold}
            alert["summary"] = _summary(alert)
            found.append((channel.id, alert))
    return found


def _summary(alert: dict[str, Any]) -> str:
    sync = f"sync {alert['sync']['name']!r}"
    run = alert["run"]
    match alert["event"]:
        case AlertEvent.SYNC_FAILING:
            return f"retl: {sync} is failing: {run['error']}"
        case AlertEvent.SYNC_RECOVERED:
            return f"retl: {sync} recovered: {run['rows_written']} rows written"
        case AlertEvent.DLQ_THRESHOLD:
            dlq = alert["dlq"]
            return (f"retl: {sync} has {dlq['open_entries']} open DLQ entries"
                    f" (threshold {dlq['threshold']})")
        case AlertEvent.RUN_FAILED:
            return f"retl: a run of {sync} failed: {run['error']}"
        case AlertEvent.RUN_HELD:
            return f"retl: a run of {sync} is held, nothing written: {run['error']}"
    return f"retl: {alert['event']} for {sync}"


# -- delivery --------------------------------------------------------------------------------------


class _Refused(Exception):
    """The receiver refused the alert for good (a 4xx other than 408 and 429)."""


class _Passing(Exception):
    """A failure that may pass: 408, 429, 5xx, a timeout, a connection error."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def request_body(kind: str, alert: dict[str, Any]) -> dict[str, Any]:
    """The JSON a channel of `kind` is sent: the alert itself for a webhook; Slack's message
    format (`text` as the notification's fallback, `blocks` for the message) for Slack."""
    if kind != "slack":
        return alert
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(alert["summary"])}},
    ]
    run = alert.get("run")
    if run:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Run*\n`{run['id']}`"},
            {"type": "mrkdwn", "text": f"*Status*\n{run['status']}"},
            {"type": "mrkdwn", "text": f"*Rows written*\n{run['rows_written']}"},
            {"type": "mrkdwn", "text": f"*Rows failed*\n{run['rows_failed']}"},
        ]})
        blocks.append({"type": "context", "elements": [{
            "type": "mrkdwn",
            "text": _slack_escape(f"sync {alert['sync']['id']} · event {alert['event']}"),
        }]})
    return {"text": alert["summary"], "blocks": blocks}


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn takes &, < and > as control characters: they are sent escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@cache
def _session() -> requests.Session:
    """One session per process, connecting only where the egress policy lets it."""
    return egress.http_session()


def _post(kind: str, config: dict[str, Any], alert: dict[str, Any]) -> None:
    headers = {"Content-Type": "application/json", "User-Agent": "retl-alerts",
               **config.get("headers", {})}
    try:
        response = _session().post(config["url"], json=request_body(kind, alert), headers=headers,
                                   timeout=DELIVERY_TIMEOUT_S, allow_redirects=False)
    except ConnectorError as exc:  # refused by the egress policy: trying again changes nothing
        raise _Refused(exc.message) from None
    except requests.Timeout:
        raise _Passing("the receiver did not answer in time") from None
    except requests.RequestException as exc:
        # The exception's text names the URL, a secret for Slack: only its kind is kept.
        raise _Passing(f"could not reach the receiver ({type(exc).__name__})") from None
    if 200 <= response.status_code < 300:
        return
    message = f"the receiver answered HTTP {response.status_code}"
    if response.status_code in (408, 429) or response.status_code >= 500:
        retry_after = response.headers.get("Retry-After", "")
        raise _Passing(message, float(retry_after) if retry_after.isdigit() else None)
    raise _Refused(message)


def retry_wait(attempt: int, retry_after: float | None = None) -> float:
    """Seconds before delivery attempt `attempt + 1`: exponential from RETL_ALERT_RETRY_SECONDS,
    or the receiver's Retry-After when it is longer."""
    backoff = get_settings().alert_retry_s * 2 ** attempt
    return max(backoff, retry_after or 0.0)


def deliver(channel_id: str, alert: dict[str, Any], *, attempt: int = 0) -> float | None:
    """Send one alert; seconds after which to try again, or None when done (delivered, refused,
    out of attempts, or the channel is gone or disabled). The channel keeps the outcome."""
    with transaction() as conn:
        channel = repo.get_by_id(conn, channel_id)
    if channel is None or not channel.enabled:
        return None
    config = decrypt_config(channel.config_encrypted)
    try:
        _post(channel.kind, config, alert)
        status, error, retry_in = "delivered", None, None
    except _Refused as exc:
        status, error, retry_in = "failed", str(exc), None
    except _Passing as exc:
        last = attempt + 1 >= DELIVERY_ATTEMPTS
        status, error = ("failed" if last else "retrying"), str(exc)
        retry_in = None if last else retry_wait(attempt, exc.retry_after)
    with transaction() as conn:
        repo.record_delivery(conn, channel_id, status, error)
    if status == "failed":
        log.warning("alert %s to channel %s failed: %s", alert["event"], channel_id, error)
    return retry_in
