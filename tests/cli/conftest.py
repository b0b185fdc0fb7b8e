"""Fixtures for the command-line tests: free ports, `retl` subprocesses (an API server, a worker)
started with the test database and Redis, and CliRunner calls of the operator commands."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner, Result

from cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_retl(args: list[str], log: Path, env: dict[str, str] | None = None,
               cwd: Path = ROOT) -> subprocess.Popen:
    """`retl <args>` as a subprocess of its own session, its output in `log`."""
    with open(log, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", *args], cwd=cwd, env=env or dict(os.environ),
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def wait_for_health(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"{base} did not answer /healthz in time"
        time.sleep(0.2)


@pytest.fixture
def api_url(tmp_path: Path) -> Iterator[str]:
    """The base URL of a `retl api` process on the test database and Redis."""
    port = free_port()
    log = tmp_path / "api.log"
    process = start_retl(["api", "--port", str(port)], log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, process, log)
        yield base
    finally:
        stop(process)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A `retl worker` process on the test database and Redis."""
    process = start_retl(["worker", "--concurrency", "1", "--pool", "solo"], tmp_path / "worker.log")
    try:
        yield process
    finally:
        stop(process)


def retl(*args: str, url: str, key: str | None) -> Result:
    """`retl <args> --url URL [--api-key KEY]`, run in this process."""
    options = ["--url", url] + (["--api-key", key] if key else [])
    return CliRunner().invoke(cli, [*args, *options], catch_exceptions=False)
