"""`retl up`: the whole service as child processes, serving the API, stopped cleanly by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.fakes.http_sink import FakeHttpSink

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_health(url: str, process: subprocess.Popen, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"retl up exited with {process.returncode}"
        try:
            return requests.get(url, timeout=1).json()
        except requests.RequestException:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


def _start_up(env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--port", str(port), "--concurrency", "1"],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> tuple[int, str, list[psutil.Process]]:
    """SIGTERM retl up; its exit code, its output, and any child it left running."""
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"retl up did not stop within 40 s:\n{output}") from None
    gone, alive = psutil.wait_procs(children, timeout=10)
    return process.returncode, output, alive


def _environment(**overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETL_")}
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env


def test_up_serves_the_api_with_configured_servers_and_stops_on_sigterm(tmp_path, database_url, redis_url):
    port = _free_port()
    env = _environment(
        RETL_DATABASE_URL=database_url, RETL_REDIS_URL=redis_url, RETL_SECRET_KEY="test-secret-key",
        RETL_HOME=str(tmp_path / ".retl"), RETL_QUEUE=f"retl-up-{os.getpid()}",
    )
    key = subprocess.run(
        [sys.executable, "-m", "cli", "api-key", "create", "--workspace", "acme"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.strip().splitlines()[-1]
    process = _start_up(env, port, tmp_path)
    try:
        assert _wait_for_health(f"http://127.0.0.1:{port}/healthz", process) == {"status": "ok"}
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
        assert ready["checks"] == {"postgres": "ok", "redis": "ok"}
        # RETL_EGRESS_ALLOW is not set: `up` opens loopback, so a receiver on this machine works.
        api, auth = f"http://127.0.0.1:{port}/api/reverse-etl", {"Authorization": f"Bearer {key}"}
        with FakeHttpSink() as sink:
            created = requests.post(f"{api}/destinations", headers=auth, timeout=10, json={
                "name": "local", "connector": "http", "config": {"url": sink.url}}).json()
            tested = requests.post(f"{api}/destinations/{created['data']['id']}/test",
                                   headers=auth, timeout=30).json()
        assert tested["data"]["attributes"]["status"] == "connected", tested
    finally:
        code, output, alive = _stop(process)
    assert alive == [], f"children still running after retl up stopped: {alive}"
    assert "retl is up" in output and "retl stopped" in output, output


def test_up_without_urls_starts_embedded_postgres_and_redis_that_keep_data(tmp_path):
    port = _free_port()
    home = tmp_path / ".retl"
    env = _environment(RETL_HOME=str(home), RETL_QUEUE=f"retl-up-{os.getpid()}")
    key = subprocess.run(
        [sys.executable, "-m", "cli", "api-key", "create", "--workspace", "acme"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.strip().splitlines()[-1]
    assert key.startswith("retl_sk_")

    process = _start_up(env, port, tmp_path)
    try:
        _wait_for_health(f"http://127.0.0.1:{port}/healthz", process)
        answer = requests.get(
            f"http://127.0.0.1:{port}/api/reverse-etl/syncs",
            headers={"Authorization": f"Bearer {key}"}, timeout=5,
        )
        # The key made before `up` started is found: the embedded database kept it.
        assert answer.status_code == 200, answer.text
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()["status"] == "ok"
    finally:
        code, output, alive = _stop(process)
    assert alive == [], f"children still running after retl up stopped: {alive}"
    assert (home / "postgres").is_dir() and (home / "redis").is_dir()


def test_a_killed_up_leaves_no_process_and_a_second_up_on_the_same_home_is_refused(
    tmp_path, database_url, redis_url
):
    port = _free_port()
    env = _environment(
        RETL_DATABASE_URL=database_url, RETL_REDIS_URL=redis_url, RETL_SECRET_KEY="test-secret-key",
        RETL_HOME=str(tmp_path / ".retl"), RETL_QUEUE=f"retl-up-{os.getpid()}",
    )
    process = _start_up(env, port, tmp_path)
    try:
        _wait_for_health(f"http://127.0.0.1:{port}/healthz", process)
        second = subprocess.run(
            [sys.executable, "-m", "cli", "up", "--port", str(_free_port())],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
        assert second.returncode != 0 and "another `retl up`" in second.stderr
        children = psutil.Process(process.pid).children(recursive=True)
    finally:
        process.kill()  # SIGKILL: no chance to stop its children itself
        process.communicate(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], f"children left running after retl up was killed: {alive}"
