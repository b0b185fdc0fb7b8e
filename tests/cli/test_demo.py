"""The demo: the warehouse it seeds, `retl demo change`, and `retl up --demo` end to end with
real API, worker and beat processes (rows in the CRM, the invalid emails in the DLQ, a second
run sending only the changes, a second start reusing everything)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import psycopg
import pytest
import requests
from click.testing import CliRunner

from cli import demo
from cli.main import cli
from tests.cli.conftest import ROOT, free_port

VALID_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"  # the CRM's CHECK constraint


def _rows(path: Path, query: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(query).fetchall()


def test_the_warehouse_has_accounts_contacts_and_a_handful_of_invalid_emails(tmp_path):
    path = demo.seed_warehouse(tmp_path)

    assert _rows(path, "SELECT count(*) FROM accounts") == [(demo.ACCOUNTS,)]
    assert _rows(path, "SELECT count(*), count(DISTINCT contact_id) FROM contacts") == [
        (demo.CONTACTS, demo.CONTACTS)
    ]
    invalid = _rows(path, f"SELECT contact_id FROM contacts WHERE NOT regexp_full_match(email, '{VALID_EMAIL}')"
                          " ORDER BY contact_id")
    assert [row[0] for row in invalid] == sorted(demo.INVALID_EMAILS)
    orphans = _rows(path, "SELECT count(*) FROM contacts WHERE account_id NOT IN (SELECT account_id FROM accounts)")
    assert orphans == [(0,)]


def test_seeding_again_keeps_the_warehouse_and_its_changes(tmp_path):
    path = demo.seed_warehouse(tmp_path)
    demo.change(tmp_path)
    before = _rows(path, "SELECT count(*), max(contact_id) FROM contacts")

    assert demo.seed_warehouse(tmp_path) == path
    assert _rows(path, "SELECT count(*), max(contact_id) FROM contacts") == before


def test_demo_change_changes_adds_and_removes_what_it_says(tmp_path, monkeypatch):
    path = demo.seed_warehouse(tmp_path)
    contacts_before = dict(_rows(path, "SELECT contact_id, title FROM contacts"))
    accounts_before = dict(_rows(path, "SELECT account_id, annual_revenue FROM accounts"))
    monkeypatch.setenv("RETL_HOME", str(tmp_path))
    from shared.settings import get_settings

    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["demo", "change"])

    assert result.exit_code == 0, result.output
    assert "contacts: 40 changed, 10 added; accounts: 20 changed, 2 added, 3 removed" in result.output
    contacts_after = dict(_rows(path, "SELECT contact_id, title FROM contacts"))
    changed = [k for k, title in contacts_before.items() if contacts_after[k] != title]
    assert len(changed) == 40 and not set(changed) & set(demo.INVALID_EMAILS)
    assert len(contacts_after.keys() - contacts_before.keys()) == 10
    accounts_after = dict(_rows(path, "SELECT account_id, annual_revenue FROM accounts"))
    assert len(accounts_before.keys() - accounts_after.keys()) == 3
    assert len(accounts_after.keys() - accounts_before.keys()) == 2
    assert sum(accounts_after.get(k, v) != v for k, v in accounts_before.items()
               if k in accounts_after) == 20


def test_demo_change_without_a_demo_says_how_to_start_one(tmp_path, monkeypatch):
    monkeypatch.setenv("RETL_HOME", str(tmp_path / ".retl"))
    from shared.settings import get_settings

    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["demo", "change"])
    assert result.exit_code == 1 and "retl up --demo" in result.output


def test_the_crm_is_a_database_of_its_own_on_the_same_server():
    assert demo.crm_database_url("postgresql://u:pw@127.0.0.1:5432/retl?sslmode=disable") == (
        "postgresql://u:pw@127.0.0.1:5432/retl_demo?sslmode=disable"
    )
    assert demo.crm_database_url("postgresql://postgres:@/retl?host=/tmp/pg") == (
        "postgresql://postgres:@/retl_demo?host=/tmp/pg"
    )
    conninfo = psycopg.conninfo.conninfo_to_dict(demo.crm_database_url("host=/tmp/pg dbname=retl"))
    assert conninfo == {"host": "/tmp/pg", "dbname": "retl_demo"}


# ---- end to end -------------------------------------------------------------------------------


class Up:
    """`retl up --demo` as a subprocess; its output collected by a thread."""

    def __init__(self, env: dict[str, str], port: int, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--demo", "--port", str(port), "--concurrency", "1"],
            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 150) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output)
            if found:
                return found
            assert self.process.poll() is None, self.output[-4000:]
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout_s} s:\n{self.output[-4000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=30)


def _finished(base: str, key: str, run_ids: list[str], timeout_s: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {key}"}
    while True:
        found = [requests.get(f"{base}/api/reverse-etl/runs/{run_id}", headers=headers, timeout=10)
                 .json()["data"]["attributes"] for run_id in run_ids]
        if all(run["status"] in ("succeeded", "failed", "cancelled") for run in found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.5)


def _retl(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def crm(database_url):
    """The CRM database the demo makes beside the test database; dropped afterwards."""
    url = demo.crm_database_url(database_url)
    yield url
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.timeout(600)  # two starts of the whole service on a shared, loaded machine
def test_up_demo_end_to_end(tmp_path, database_url, redis_url, crm):
    port = free_port()
    home = tmp_path / ".retl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETL_")}
    env.update(RETL_DATABASE_URL=database_url, RETL_REDIS_URL=redis_url,
               RETL_SECRET_KEY="test-secret-key", RETL_HOME=str(home),
               RETL_QUEUE=f"retl-demo-{os.getpid()}", PYTHONPATH=str(ROOT))
    base = f"http://127.0.0.1:{port}"

    up = Up(env, port, tmp_path)
    try:
        key = up.wait_for(r"export RETL_API_KEY=(\S+)").group(1)
        contacts = up.wait_for(r"runs list --sync (retl_sync_\w+) +# the first run").group(1)
        first_runs = up.wait_for(r"First runs: (.+)\.").group(1).split(", ")
        contacts_run, accounts_run = _finished(base, key, first_runs)
        written = demo.CONTACTS - len(demo.INVALID_EMAILS)
        assert f"demo contacts: run {first_runs[0]} succeeded, {written:,} rows written, 7 failed (in the DLQ)" in up.output

        assert (contacts_run["status"], contacts_run["rows_written"], contacts_run["rows_failed"]) == (
            "succeeded", demo.CONTACTS - len(demo.INVALID_EMAILS), len(demo.INVALID_EMAILS))
        assert (accounts_run["status"], accounts_run["rows_written"]) == ("succeeded", demo.ACCOUNTS)
        with psycopg.connect(crm) as conn:
            assert conn.execute("SELECT count(*) FROM demo_crm.contacts").fetchone() == (
                demo.CONTACTS - len(demo.INVALID_EMAILS),)
            assert conn.execute("SELECT count(*) FROM demo_crm.accounts").fetchone() == (demo.ACCOUNTS,)

        env_cli = {**env, "RETL_API_KEY": key, "RETL_URL": base}
        listed = _retl(env_cli, tmp_path, "dlq", "list", "--sync", contacts, "--json")
        assert listed.returncode == 0, listed.stderr
        refused = {e["attributes"]["record_keys"]["contact_id"] for e in json.loads(listed.stdout)["data"]}
        assert refused == set(demo.INVALID_EMAILS)

        changed = _retl(env_cli, tmp_path, "demo", "change")
        assert changed.returncode == 0, changed.stderr
        second = _retl(env_cli, tmp_path, "syncs", "run", contacts, "--wait", "--json")
        assert second.returncode == 0, second.stderr
        attributes = json.loads(second.stdout)["data"]["attributes"]
        # The 40 changed and 10 new contacts, and the refused ones tried again.
        assert (attributes["rows_written"], attributes["rows_failed"]) == (50, len(demo.INVALID_EMAILS))
        with psycopg.connect(crm) as conn:
            seniors = conn.execute("SELECT count(*) FROM demo_crm.contacts WHERE title LIKE 'Senior %'")
            assert seniors.fetchone() == (40,)
    finally:
        code = up.stop()
    assert code == 0, up.output[-4000:]

    again = Up(env, port, tmp_path)
    try:
        assert again.wait_for(r"export RETL_API_KEY=(\S+)").group(1) == key
        assert again.wait_for(r"runs list --sync (retl_sync_\w+) +# the first run").group(1) == contacts
        syncs = requests.get(f"{base}/api/reverse-etl/syncs", timeout=10,
                             headers={"Authorization": f"Bearer {key}"}).json()["data"]
        assert sorted(s["attributes"]["name"] for s in syncs) == [demo.ACCOUNTS_SYNC, demo.CONTACTS_SYNC]
    finally:
        again.stop()
