"""Log lines as a worker's task prints them: the run's ids bound to every line (Celery's and
the engine's stdlib lines too), and credentials masked wherever they slip into a line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from shared import logs
from shared.services import run_events
from shared.settings import get_settings
from tests.engine.conftest import make_sync, warehouse, workspace_id  # noqa: F401 - fixtures


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Iterator[None]:
    """retl's JSON logging for this process (the test configures it, so that its lines go to
    the test's captured stderr), taken down again after the test."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    monkeypatch.setenv("RETL_LOG_FORMAT", "json")
    get_settings.cache_clear()
    yield
    logs.clear()
    root.handlers, level = saved
    root.setLevel(level)
    logging.getLogger("multiprocessing").handlers = []
    logging.getLogger("multiprocessing").setLevel(logging.NOTSET)
    for name in (*logs.CHATTY_LOGGERS, "werkzeug"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.captureWarnings(False)
    logs.configure_default()
    monkeypatch.undo()
    get_settings.cache_clear()


def printed(capsys: pytest.CaptureFixture) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_every_line_of_a_runs_task_carries_its_run_sync_and_destination(
    json_logs: None, capsys: pytest.CaptureFixture, workspace_id: str, warehouse,  # noqa: F811
) -> None:
    from shared.services import runs as run_service

    setup = make_sync(workspace_id, {"url": warehouse.url}, "http://127.0.0.1:9/x")
    run_id = run_service.trigger(workspace_id, [setup.sync_id], full_refresh=False)[0].id
    logs.configure("worker")
    capsys.readouterr()

    run_events.bind_run(run_id)  # what the worker does before each run or batch task
    logging.getLogger("worker.runs").warning("a batch cannot be written")
    logging.getLogger("celery.app.trace").error("Task raised unexpected")
    logs.clear()
    logging.getLogger("worker.runs").warning("another task")

    first, second, unbound = printed(capsys)
    for line in (first, second):
        assert (line["run_id"], line["sync_id"], line["destination_id"]) == (
            run_id, setup.sync_id, setup.destination_id)
        assert line["process"] == "worker" and line["timestamp"].endswith("Z")
    assert "run_id" not in unbound


def test_credentials_are_masked_wherever_they_appear(
    json_logs: None, capsys: pytest.CaptureFixture,
) -> None:
    logs.configure("worker")
    log = logging.getLogger("worker.runs")
    log.warning("source postgresql://analytics:pw-Leak-1@db.internal/analytics is down")
    log.warning("sent Authorization: Bearer tok-Leak-2 with key retl_sk_Leak3abc")
    logs.get_logger("shared").warning("config", password="pw-Leak-4", api_key="k-Leak-5",
                                      headers_authorization="tok-Leak-6")
    try:
        raise RuntimeError("cannot connect to redis://:pw-Leak-7@cache:6379/0")
    except RuntimeError:
        log.exception("the pool failed")

    text = json.dumps(printed(capsys))
    assert "Leak" not in text
    # The rest of the line stays readable (the redactor of known secrets may also have put
    # the user-info aside, if another test of this process configured such a URL).
    assert "@db.internal/analytics is down" in text
