"""`retl up`: the whole service as child processes, serving the API, stopped cleanly by SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.fakes.http_sink import FakeHttpSink

# Each test starts the whole service once or twice on a shared, loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_health(url: str, process: subprocess.Popen, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"retl up exited with {process.returncode}:\n{process.communicate()[0]}")
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
    if process.poll() is not None:  # it ended by itself: its output says why
        done = process.stdout is None or process.stdout.closed  # read by _wait_for_health
        return process.returncode, "" if done else process.communicate()[0], []
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


def _create_key(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "api-key", "create", "--workspace", "acme"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder outside pytest's: the embedded Postgres runs as another user, who must reach its
    data folder, and every pytest session that starts on this machine makes pytest's own root
    folder private again."""
    path = Path(tempfile.mkdtemp(prefix="retl-up-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_up_without_urls_starts_embedded_servers_that_keep_data_and_commands_elsewhere_find_them(
    folder,
):
    tmp_path = folder
    port = _free_port()
    project = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    home = project / ".retl"
    env = _environment(RETL_QUEUE=f"retl-up-{os.getpid()}")

    # Nothing runs yet: a command that needs the database refuses rather than making one.
    refused = _create_key(env, project)
    assert refused.returncode == 1
    assert "RETL_HOME" in refused.stderr and "RETL_DATABASE_URL" in refused.stderr
    assert "Traceback" not in refused.stderr and not (home / "postgres").exists()

    process = _start_up(env, port, project)
    try:
        _wait_for_health(f"http://127.0.0.1:{port}/healthz", process)
        # From another folder: with RETL_HOME naming the running one's, the key lands in its
        # database; without, the command refuses and starts no second database.
        created = _create_key({**env, "RETL_HOME": str(home)}, elsewhere)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        lost = _create_key(env, elsewhere)
        assert lost.returncode == 1 and str(elsewhere / ".retl") in lost.stderr
        assert not (elsewhere / ".retl" / "postgres").exists()
        answer = requests.get(
            f"http://127.0.0.1:{port}/api/reverse-etl/syncs",
            headers={"Authorization": f"Bearer {key}"}, timeout=5,
        )
        assert answer.status_code == 200, answer.text
    finally:
        code, output, alive = _stop(process)
    assert code == 0 and alive == [], (code, alive, output)
    assert (home / "postgres").is_dir() and (home / "redis").is_dir()
    assert not (home / "up.json").exists()

    process = _start_up(env, port, project)
    try:
        _wait_for_health(f"http://127.0.0.1:{port}/healthz", process)
        answer = requests.get(
            f"http://127.0.0.1:{port}/api/reverse-etl/syncs",
            headers={"Authorization": f"Bearer {key}"}, timeout=5,
        )
        # The key made during the first `up` is found: the embedded database kept it.
        assert answer.status_code == 200, answer.text
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()["status"] == "ok"
    finally:
        code, output, alive = _stop(process)
    assert alive == [], f"children still running after retl up stopped: {alive}"


def test_up_on_a_taken_port_exits_non_zero_and_names_the_port(tmp_path, database_url, redis_url):
    env = _environment(
        RETL_DATABASE_URL=database_url, RETL_REDIS_URL=redis_url, RETL_SECRET_KEY="test-secret-key",
        RETL_HOME=str(tmp_path / ".retl"), RETL_QUEUE=f"retl-up-{os.getpid()}",
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "cli", "up", "--port", str(port)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "retl is up" not in result.stdout and "Traceback" not in result.stderr


def test_up_exits_non_zero_naming_a_child_that_cannot_start_or_dies(tmp_path, database_url, redis_url):
    env = _environment(
        RETL_DATABASE_URL=database_url, RETL_REDIS_URL=redis_url, RETL_SECRET_KEY="test-secret-key",
        RETL_HOME=str(tmp_path / ".retl"), RETL_QUEUE=f"retl-up-{os.getpid()}",
    )
    # A log level no child accepts: they exit as they start.
    process = _start_up({**env, "RETL_LOG_LEVEL": "NOPE"}, _free_port(), tmp_path)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    assert re.search(r"the (api|worker|beat) process exited with status \d+ while starting", output)
    assert "retl is up" not in output

    port = _free_port()
    process = _start_up(env, port, tmp_path)
    try:
        _wait_for_health(f"http://127.0.0.1:{port}/healthz", process)
        deadline = time.monotonic() + 60
        while not (workers := [c for c in psutil.Process(process.pid).children()
                               if "worker" in c.cmdline()]):
            assert time.monotonic() < deadline, "no worker child"
            time.sleep(0.2)
        workers[0].kill()
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1
    # Named either way, whether `retl up` had finished starting when the worker died or not.
    assert re.search(
        r"the worker process exited with status -?\d+(; stopped everything| while starting)",
        output)


def test_make_run_takes_host_and_port():
    printed = subprocess.run(
        ["make", "-n", "run", "demo", "PORT=8300", "HOST=0.0.0.0"], cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    ).stdout
    assert "retl up --host 0.0.0.0 --port 8300" in printed
    assert "retl up --demo --host 0.0.0.0 --port 8300" in printed


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
