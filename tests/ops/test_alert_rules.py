"""Which run ends raise which alerts, and how one alert is delivered: runs executed by the
engine in this process against a local receiver; alerts delivered to local fake webhooks."""

from __future__ import annotations

from typing import Any

import pytest

from shared.services import alerts, run_events
from tests.engine.conftest import (  # noqa: F401 - fixtures
    EngineDriver,
    Warehouse,
    driver,
    make_sync,
    sink,
    warehouse,
    workspace_id,
)
from tests.fakes.alert_receiver import FakeSlackWebhook, FakeWebhook
from tests.fakes.http_sink import FakeHttpSink

ALL_EVENTS = [str(e) for e in alerts.AlertEvent]


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETL_EGRESS_ALLOW", "127.0.0.1")


@pytest.fixture
def raised(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Alerts the engine queues for delivery, in order, instead of sending them to Celery."""
    queued: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(run_events, "send_control",
                        lambda task, channel_id, alert: queued.append((channel_id, alert)))
    return queued


def channel(workspace: str, url: str, kind: str = "webhook", **options: Any) -> str:
    return alerts.create(workspace, {"name": kind, "kind": kind, "config": {"url": url},
                                     **options}).record.id


def events_of(raised: list[tuple[str, dict[str, Any]]]) -> list[str]:
    events = [alert["event"] for _, alert in raised]
    raised.clear()
    return events


def test_a_sync_alerts_when_it_starts_failing_and_when_it_recovers_not_at_every_failure(
    driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink,  # noqa: F811
    raised: list,
) -> None:
    channel(workspace_id, "https://hooks.example.com/a")
    setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
    warehouse.insert(5)
    assert driver.run(setup).status == "succeeded"
    assert events_of(raised) == []

    warehouse.insert(5, start=6)
    sink.fail_next(401, {"error": "token expired"}, times=1)
    first_failure = driver.run(setup)
    assert first_failure.status == "failed"
    assert events_of(raised) == ["sync_failing"]

    sink.fail_next(401, {"error": "token expired"}, times=1)
    assert driver.run(setup).status == "failed"
    assert events_of(raised) == []

    recovered = driver.run(setup)
    assert recovered.status == "succeeded"
    (recovery,) = [alert for _, alert in raised]
    assert recovery["event"] == "sync_recovered"
    assert recovery["run"]["id"] == recovered.id
    assert recovery["run"]["rows_written"] == 5
    assert recovery["sync"] == {"id": setup.sync_id, "name": "people"}


def test_a_sync_whose_first_run_fails_alerts_and_every_failure_alerts_who_asks(
    driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink,  # noqa: F811
    raised: list,
) -> None:
    everything = channel(workspace_id, "https://hooks.example.com/all", events=ALL_EVENTS)
    defaults = channel(workspace_id, "https://hooks.example.com/defaults")
    setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
    warehouse.insert(3)

    for _ in range(2):
        sink.fail_next(401, {"error": "token expired"}, times=1)
        assert driver.run(setup).status == "failed"

    sent = [(channel_id, alert["event"]) for channel_id, alert in raised]
    assert sent == [
        (everything, "run_failed"), (everything, "sync_failing"), (defaults, "sync_failing"),
        (everything, "run_failed"),
    ]
    assert "credentials" in raised[0][1]["run"]["error"]


def test_open_dlq_entries_alert_when_they_pass_the_threshold(
    driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink,  # noqa: F811
    raised: list,
) -> None:
    low = channel(workspace_id, "https://hooks.example.com/low", dlqThreshold=3)
    channel(workspace_id, "https://hooks.example.com/high", dlqThreshold=50)
    setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
    warehouse.insert(10)
    sink.reject_keys({"1", "2"})
    assert driver.run(setup).rows_failed == 2
    assert events_of(raised) == []

    sink.reject_keys({"1", "2", "3", "4"})
    warehouse.execute("UPDATE warehouse.people SET name = name || '!'")
    assert driver.run(setup).rows_failed == 4
    ((channel_id, alert),) = raised
    assert channel_id == low
    assert alert["event"] == "dlq_threshold"
    assert alert["dlq"] == {"open_entries": 4, "threshold": 3}
    raised.clear()

    warehouse.execute("UPDATE warehouse.people SET name = name || '!'")
    assert driver.run(setup).rows_failed == 4
    assert events_of(raised) == []  # still over the threshold: no new crossing


def test_a_disabled_channel_is_told_nothing(
    driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink,  # noqa: F811
    raised: list,
) -> None:
    channel(workspace_id, "https://hooks.example.com/off", enabled=False)
    setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
    warehouse.insert(3)
    sink.fail_next(401, {"error": "token expired"}, times=1)

    assert driver.run(setup).status == "failed"
    assert raised == []


def _alert(event: str = "sync_failing") -> dict[str, Any]:
    return {
        "event": event, "summary": "retl: sync 'people' is failing: <boom> & more",
        "workspace_id": "ws_1", "sync": {"id": "retl_sync_1", "name": "people"},
        "destination": {"id": "conn_1", "connector": "http"},
        "run": {"id": "retl_run_1", "status": "failed", "trigger": "manual", "error": "<boom>",
                "rows_read": 10, "rows_written": 0, "rows_failed": 10,
                "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:05Z"},
        "occurred_at": "2026-01-01T00:00:05Z",
    }


def test_a_slack_alert_is_a_message_slack_accepts(workspace_id: str) -> None:  # noqa: F811
    with FakeSlackWebhook() as slack:
        channel_id = channel(workspace_id, slack.url + slack.path, kind="slack")

        assert alerts.deliver(channel_id, _alert()) is None

    (message,) = slack.received
    assert message["text"] == "retl: sync 'people' is failing: <boom> & more"
    assert message["blocks"][0]["text"]["text"] == (
        "retl: sync 'people' is failing: &lt;boom&gt; &amp; more")
    assert alerts.get(workspace_id, channel_id).record.last_delivery_status == "delivered"


def test_a_webhook_alert_is_the_alert_as_json_with_the_channels_headers(workspace_id: str) -> None:  # noqa: F811
    with FakeWebhook(required_headers={"Authorization": "Bearer hook"}) as hook:
        channel_id = alerts.create(workspace_id, {
            "name": "hook", "kind": "webhook",
            "config": {"url": hook.url + hook.path, "headers": {"Authorization": "Bearer hook"}},
        }).record.id

        assert alerts.deliver(channel_id, _alert()) is None

    assert hook.received == [_alert()]


def test_a_passing_failure_is_retried_with_backoff_until_the_attempts_run_out(
    workspace_id: str,  # noqa: F811
) -> None:
    with FakeWebhook() as hook:
        channel_id = channel(workspace_id, hook.url + hook.path)
        hook.fail_next(503, "busy", times=alerts.DELIVERY_ATTEMPTS + 1)

        waits = [alerts.deliver(channel_id, _alert(), attempt=n)
                 for n in range(alerts.DELIVERY_ATTEMPTS)]

    assert all(wait is not None and wait > 0 for wait in waits[:-1])
    assert waits[:-1] == sorted(waits[:-1])
    assert waits[-1] is None
    record = alerts.get(workspace_id, channel_id).record
    assert (record.last_delivery_status, record.last_delivery_error) == (
        "failed", "the receiver answered HTTP 503")
    assert hook.received == []


def test_a_refusal_is_not_retried_and_an_unreachable_receiver_is(
    workspace_id: str, unused_port: int,  # noqa: F811
) -> None:
    with FakeWebhook() as hook:
        refused = channel(workspace_id, hook.url + "/wrong-path")
        assert alerts.deliver(refused, _alert()) is None
    unreachable = channel(workspace_id, f"http://127.0.0.1:{unused_port}/hook")

    assert alerts.deliver(unreachable, _alert()) is not None
    record = alerts.get(workspace_id, unreachable).record
    assert record.last_delivery_status == "retrying"
    assert str(unused_port) not in (record.last_delivery_error or "")


def test_a_held_run_alerts_by_default_with_the_guard_that_held_it(
    driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink,  # noqa: F811
    raised: list,
) -> None:
    channel(workspace_id, "https://hooks.example.com/defaults")
    setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url, mode="mirror")
    warehouse.insert(150)
    assert driver.run(setup).status == "succeeded"
    assert events_of(raised) == []
    warehouse.execute("DELETE FROM warehouse.people")  # the upstream table was truncated
    held = driver.run(setup)
    assert held.status == "held"
    (alert,) = [alert for _, alert in raised]
    assert alert["event"] == "run_held"
    assert alert["run"]["id"] == held.id
    assert "maxRemovedPercent" in alert["run"]["error"]
    assert "held" in alert["summary"]
