"""The API through a real HTTP server (`retl api`: gunicorn, two worker processes), driven with
`requests`: the create sync → trigger → list runs flow, auth, the /v1 alias, refused bodies
(a huge declared body is refused before it is sent), and clean logs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from tests.api.conftest import API, SINK_TOKEN, SOURCE_PASSWORD, sync_body
from tests.fakes.http_sink import FakeHttpSink

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 30
SERVER_PIDS: dict[str, int] = {}  # base URL → the `retl api` process (gunicorn's master)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The base URL of `retl api --workers 2`, and its log file."""
    port = _free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "api", "--port", str(port), "--workers", "2"],
            cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    SERVER_PIDS[base] = process.pid
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /healthz in time"
            time.sleep(0.1)
        yield base, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_create_sync_trigger_and_list_runs_over_http(server, api_key, source_url):
    base, log_path = server
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"

    with FakeHttpSink() as sink:
        destination = session.post(f"{base}{API}/destinations", json={
            "name": "Receiver", "connector": "http",
            "config": {"url": sink.url, "headers": {"Authorization": SINK_TOKEN}},
        }, timeout=10)
        assert destination.status_code == 201, destination.text
        destination_id = destination.json()["data"]["id"]
        tested = session.post(f"{base}{API}/destinations/{destination_id}/test", timeout=10)
        assert tested.json()["data"]["attributes"]["status"] == "connected"
        assert sink.requests[-1].headers["authorization"] == SINK_TOKEN

    source = session.post(f"{base}{API}/sources", json={
        "name": "Warehouse", "connector": "postgres", "config": {"url": source_url},
    }, timeout=10)
    assert source.status_code == 201, source.text

    created = session.post(f"{base}{API}/syncs", json=sync_body(destination_id), timeout=10)
    assert created.status_code == 201, created.text
    assert created.headers["Content-Type"].startswith("application/json")
    sync = created.json()["data"]
    assert sync["id"].startswith("retl_sync_")
    assert sync["attributes"]["source_id"] == source.json()["data"]["id"]

    first = session.post(f"{base}{API}/sync/run", json={"syncId": sync["id"]}, timeout=10)
    second = session.post(f"{base}/v1{API}/sync/run", json={"syncId": sync["id"]}, timeout=10)
    assert first.status_code == 202, first.text
    run = first.json()["data"]
    assert run["type"] == "reverse_etl_run" and run["attributes"]["status"] == "queued"
    assert second.json()["data"]["id"] == run["id"]

    runs = session.get(f"{base}{API}/runs", params={"sync_id": sync["id"]}, timeout=10)
    assert runs.status_code == 200
    assert [item["id"] for item in runs.json()["data"]] == [run["id"]]
    assert runs.json()["meta"] == {"page": {"limit": 50, "cursor": None}}

    everything = " ".join(
        session.get(f"{base}{API}/{path}", timeout=10).text for path in ("destinations", "sources", "syncs", "runs")
    )
    assert SINK_TOKEN not in everything and SOURCE_PASSWORD not in everything
    log = log_path.read_text()
    assert SINK_TOKEN not in log and SOURCE_PASSWORD not in log


def test_auth_and_refused_bodies_over_http(server, api_key):
    base, _ = server
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    missing = requests.get(f"{base}{API}/syncs", timeout=10)
    malformed = requests.post(f"{base}{API}/syncs", data=b"{not json", headers=headers, timeout=10)
    array = requests.post(f"{base}{API}/sync/run", data=b"[]", headers=headers, timeout=10)
    too_large = requests.post(f"{base}{API}/syncs", data=b"x" * (5 * 1024 * 1024), headers=headers, timeout=30)
    unknown = requests.get(f"{base}{API}/syncs/retl_sync_nope", headers=headers, timeout=10)
    nul = requests.get(f"{base}{API}/syncs", params={"destination_id": "a\x00"}, headers=headers, timeout=10)

    for response, status in ((missing, 401), (malformed, 400), (array, 400), (too_large, 413),
                             (unknown, 404), (nul, 422)):
        assert response.status_code == status, (status, response.text[:300])
        assert response.json()["errors"][0]["status"] == str(status)
    openapi = requests.get(f"{base}/api/openapi.json", timeout=10)
    assert openapi.status_code == 200 and openapi.json()["openapi"].startswith("3.")


def test_a_huge_body_is_refused_before_it_is_read(server):
    """300 MB declared, a few bytes sent: the 413 comes at once, without the key, and the
    connection closes instead of waiting for (or draining) the rest."""
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            f"POST {API}/syncs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {300 * 1024 * 1024}\r\n\r\n{{\"name\": ".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b'"status": "413"' in body or b'"status":"413"' in body


def test_several_processes_answer(server, api_key):
    base, _ = server
    deadline = time.monotonic() + 30  # gunicorn forks its workers once it listens
    while len(psutil.Process(SERVER_PIDS[base]).children()) < 2:
        assert time.monotonic() < deadline, "gunicorn did not start two workers"
        time.sleep(0.1)
    assert len(psutil.Process(SERVER_PIDS[base]).children()) == 2  # gunicorn's two workers
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: session.get(f"{base}{API}/syncs", timeout=20).status_code, range(40)))
    assert statuses == [200] * 40


def test_a_chunked_body_is_bounded_where_it_is_read(server, api_key):
    base, _ = server

    def chunks():
        for _ in range(6):
            yield b" " * (1024 * 1024)

    response = requests.post(
        f"{base}{API}/syncs", data=chunks(), timeout=60,
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )

    assert response.status_code == 413, response.text[:300]
    assert response.json()["errors"][0]["status"] == "413"
    small = requests.post(
        f"{base}{API}/api-keys", data=iter([b"{", b"}"]), timeout=60,
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    assert small.status_code == 201, small.text[:300]
