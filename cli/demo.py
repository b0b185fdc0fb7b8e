"""The demo that `retl up --demo` sets up: a DuckDB warehouse under RETL_HOME, a Postgres database
of its own on retl's server as the CRM, a workspace with two syncs between them, a first run, and
`retl demo change` so that a second run has a few changes to send.

Running it again reuses what is there: the warehouse keeps its rows (and your changes), the
workspace, source, destination and syncs are found by name, and the API key is kept in
RETL_HOME/demo/api-key."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click
import duckdb
import psycopg
from psycopg import sql

from cli.client import DEFAULT_URL, ApiClient, ApiError

WORKSPACE = "demo"
SCHEMA = "demo_crm"
ACCOUNTS = 2_000
CONTACTS = 5_000
# Contacts whose email the CRM's CHECK constraint refuses: they end up in the DLQ.
INVALID_EMAILS = {
    "con_000017": "not-an-email",
    "con_000404": "maria.garcia@",
    "con_001234": "@example.com",
    "con_002048": "li.wei@@example.com",
    "con_003141": "omar@example",
    "con_004096": "sofia garcia example.com",
    "con_004999": "ken@exa mple.com",
}
SOURCE_NAME = "demo warehouse"
DESTINATION_NAME = "demo CRM"
CONTACTS_SYNC = "demo contacts"
ACCOUNTS_SYNC = "demo accounts"
LOCK_WAIT_S = 30.0
FIRST_RUNS_WAIT_S = 120.0

_WAREHOUSE_SQL = f"""
CREATE TABLE accounts AS
SELECT 'acc_' || lpad(i::VARCHAR, 5, '0') AS account_id,
       ['Acme', 'Globex', 'Initech', 'Umbrella', 'Hooli', 'Stark', 'Wayne', 'Wonka', 'Tyrell',
        'Soylent'][1 + i % 10] || ' ' ||
       ['Labs', 'Systems', 'Foods', 'Logistics', 'Health', 'Energy', 'Media', 'Retail'][1 + (i // 10) % 8]
       || ' ' || i AS name,
       ['software', 'retail', 'health', 'energy', 'finance', 'media'][1 + i % 6] AS industry,
       (10 + (i * 37) % 5000)::INTEGER AS employees,
       (((i * 7919) % 100000) * 1000)::DECIMAL(14, 2) AS annual_revenue,
       TIMESTAMPTZ '2026-01-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS updated_at
FROM range(1, {ACCOUNTS + 1}) AS t(i);

CREATE TABLE contacts AS
SELECT 'con_' || lpad(i::VARCHAR, 6, '0') AS contact_id,
       'acc_' || lpad((1 + i % {ACCOUNTS})::VARCHAR, 5, '0') AS account_id,
       first_name, last_name,
       lower(first_name || '.' || replace(last_name, ' ', '')) || '.' || i || '@example.com' AS email,
       ['CEO', 'CTO', 'VP Sales', 'Engineer', 'Analyst', 'Buyer'][1 + i % 6] AS title,
       TIMESTAMPTZ '2026-01-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS updated_at
FROM (
  SELECT i,
         ['Ada', 'Alan', 'Grace', 'Linus', 'Margaret', 'Dennis', 'Barbara', 'Ken', 'Frances',
          'Edsger', 'Radia', 'Donald', 'Hedy', 'John', 'Katherine', 'Tim', 'Sophie', 'Guido',
          'Anita', 'Bjarne'][1 + i % 20] AS first_name,
         ['Lovelace', 'Turing', 'Hopper', 'Torvalds', 'Hamilton', 'Ritchie', 'Liskov',
          'Thompson', 'Allen', 'Dijkstra', 'Perlman', 'Knuth', 'Lamarr', 'McCarthy', 'Johnson',
          'Berners-Lee', 'Wilson', 'van Rossum', 'Borg', 'Stroustrup', 'Goldberg', 'Kay',
          'Wirth', 'Hoare', 'Backus'][1 + (i // 20) % 25] AS last_name
  FROM range(1, {CONTACTS + 1}) AS t(i)
);
"""

_CRM_TABLES = r"""
CREATE SCHEMA IF NOT EXISTS demo_crm;
CREATE TABLE IF NOT EXISTS demo_crm.accounts (
  account_id text PRIMARY KEY,
  name text NOT NULL,
  industry text,
  employees integer,
  annual_revenue numeric(14, 2),
  updated_at timestamptz
);
CREATE TABLE IF NOT EXISTS demo_crm.contacts (
  contact_id text PRIMARY KEY,
  account_id text,
  email text NOT NULL CONSTRAINT contacts_email_is_valid CHECK (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'),
  first_name text,
  last_name text,
  full_name text,
  title text,
  updated_at timestamptz
);
CREATE TABLE IF NOT EXISTS demo_crm.vip_accounts (
  account_id text PRIMARY KEY,
  name text NOT NULL,
  annual_revenue numeric(14, 2),
  tier text
);
"""


def warehouse_path(home: Path) -> Path:
    return home / "demo" / "warehouse.duckdb"


def _key_path(home: Path) -> Path:
    return home / "demo" / "api-key"


def seed_warehouse(home: Path) -> Path:
    """The demo warehouse, created with its accounts and contacts unless it exists (it keeps
    the changes made to it)."""
    path = warehouse_path(home)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    with duckdb.connect(str(partial)) as conn:
        conn.execute(_WAREHOUSE_SQL)
        conn.executemany("UPDATE contacts SET email = ? WHERE contact_id = ?",
                         [(email, contact_id) for contact_id, email in INVALID_EMAILS.items()])
    os.replace(partial, path)  # a warehouse is there whole or not at all
    return path


def crm_database_url(database_url: str) -> str:
    """The URL of the demo's CRM: retl's own URL naming the database `<retl's database>_demo`
    on the same server (the embedded one's is `retl_demo`)."""
    name = f"{psycopg.conninfo.conninfo_to_dict(database_url).get('dbname') or 'retl'}_demo"
    if database_url.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(database_url)
        return urlunsplit(parts._replace(path=f"/{name}"))
    return psycopg.conninfo.make_conninfo(database_url, dbname=name)


def prepare_crm(database_url: str) -> str:
    """Create the CRM database and its demo_crm tables if missing; its URL."""
    url = crm_database_url(database_url)
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                pass  # created meanwhile by another demo starting
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_CRM_TABLES)
    return url


@dataclass(frozen=True)
class Demo:
    api_url: str
    api_key: str
    warehouse: Path
    crm_database: str
    destination_id: str
    contacts_sync_id: str
    accounts_sync_id: str
    first_run_ids: tuple[str, ...]


def _api_key(home: Path, api_url: str) -> str:
    """The demo workspace's key kept in RETL_HOME/demo/api-key, or a new one if the service
    no longer knows it."""
    from shared.services.auth import create_api_key

    path = _key_path(home)
    if path.exists():
        key = path.read_text().strip()
        try:
            ApiClient(api_url, key).get("/syncs", limit=1)
            return key
        except ApiError as exc:
            if exc.status != 401:
                raise
    key = create_api_key(WORKSPACE).key
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    return key


def _named(api: ApiClient, path: str, name: str) -> str | None:
    """The id of the workspace's resource under `path` called `name`, if any."""
    cursor = None
    while True:
        page = api.get(path, limit=200, cursor=cursor)
        for item in page["data"]:
            if item["attributes"]["name"] == name:
                return item["id"]
        cursor = page["meta"]["page"]["cursor"]
        if not cursor:
            return None


def _connection(api: ApiClient, plural: str, name: str, connector: str, config: dict) -> str:
    """Find-or-create; an existing one gets the config again (the embedded server's socket
    folder, or RETL_HOME, may have moved since)."""
    existing = _named(api, f"/{plural}", name)
    if existing:
        api.put(f"/{plural}/{existing}", {"config": config})
        return existing
    body = {"name": name, "connector": connector, "config": config}
    return api.post(f"/{plural}", body)["data"]["id"]


def _sync(api: ApiClient, body: dict) -> str:
    return _named(api, "/syncs", body["name"]) or api.post("/syncs", body)["data"]["id"]


def _columns(*names: str, key: str) -> list[dict]:
    return [{"source": name, "destination": name, **({"key": True} if name == key else {})}
            for name in names]


def set_up(home: Path, api_url: str, database_url: str) -> Demo:
    """Everything but the warehouse (seeded before the workers start): the CRM database, the
    workspace's key, source, destination and syncs, and a first run of both syncs."""
    crm_url = prepare_crm(database_url)
    key = _api_key(home, api_url)
    api = ApiClient(api_url, key)
    warehouse = warehouse_path(home)
    source_id = _connection(api, "sources", SOURCE_NAME, "duckdb", {"path": str(warehouse)})
    destination_id = _connection(api, "destinations", DESTINATION_NAME, "postgres",
                                 {"url": crm_url, "schema": SCHEMA})
    contacts_id = _sync(api, {
        "name": CONTACTS_SYNC, "sourceId": source_id, "destinationId": destination_id,
        "objectName": "contacts", "syncMode": "upsert",
        "sourceQuery": "SELECT contact_id, account_id, email, first_name, last_name, title,"
                       " updated_at FROM contacts",
        "fieldMappings": [
            *_columns("contact_id", "account_id", "email", "first_name", "last_name", "title",
                      "updated_at", key="contact_id"),
            {"template": "{{ first_name }} {{ last_name }}", "destination": "full_name"},
        ],
        "schedule": {"type": "manual"},
    })
    accounts_id = _sync(api, {
        "name": ACCOUNTS_SYNC, "sourceId": source_id, "destinationId": destination_id,
        "objectName": "accounts", "syncMode": "mirror",
        "sourceQuery": "SELECT account_id, name, industry, employees, annual_revenue, updated_at"
                       " FROM accounts",
        "fieldMappings": _columns("account_id", "name", "industry", "employees",
                                  "annual_revenue", "updated_at", key="account_id"),
        "schedule": {"type": "interval", "every": "1m"},
    })
    runs = api.post("/sync/run", {"syncIds": [contacts_id, accounts_id]})
    return Demo(
        api_url=api_url, api_key=key, warehouse=warehouse,
        crm_database=psycopg.conninfo.conninfo_to_dict(crm_url)["dbname"],
        destination_id=destination_id, contacts_sync_id=contacts_id, accounts_sync_id=accounts_id,
        first_run_ids=tuple(run["id"] for run in runs["data"]),
    )


def first_runs(demo: Demo, give_up: Callable[[], bool], timeout_s: float = FIRST_RUNS_WAIT_S) -> str:
    """A line per first run once both ended (or whatever they reached within `timeout_s`, or
    when `give_up` says so: Ctrl-C)."""
    api = ApiClient(demo.api_url, demo.api_key)
    deadline = time.monotonic() + timeout_s
    while True:
        found = [api.get(f"/runs/{run_id}")["data"] for run_id in demo.first_run_ids]
        ended = all(run["attributes"]["status"] in ("succeeded", "failed", "cancelled")
                    for run in found)
        if ended or give_up() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    names = {demo.contacts_sync_id: CONTACTS_SYNC, demo.accounts_sync_id: ACCOUNTS_SYNC}
    lines = []
    for run in found:
        run_attributes = run["attributes"]
        line = (f"{names.get(run_attributes['sync_id'], run_attributes['sync_id'])}: run"
                f" {run['id']} {run_attributes['status']}, {run_attributes['rows_written']:,}"
                f" rows written, {run_attributes['rows_failed']:,} failed")
        if run_attributes["rows_failed"]:
            line += " (in the DLQ)"
        if run_attributes["error"]:
            line += f": {run_attributes['error']}"
        lines.append(line)
    return "\n" + "\n".join(lines)


def _retl_command() -> str:
    """How this `retl` was invoked, so the printed commands can be pasted as they are."""
    invoked = Path(sys.argv[0])
    if invoked.name != "retl":
        return "retl"
    relative = os.path.relpath(invoked.absolute())
    return relative if len(relative) < len(str(invoked.absolute())) else str(invoked.absolute())


def next_steps(demo: Demo) -> str:
    retl = _retl_command()
    contacts, accounts = demo.contacts_sync_id, demo.accounts_sync_id
    commands = [
        (f"export RETL_API_KEY={demo.api_key}", ""),
        *([(f"export RETL_URL={demo.api_url}", "")] if demo.api_url != DEFAULT_URL else []),
        (f"{retl} syncs list", ""),
        (f"{retl} runs list --sync {contacts}", "# the first run of the contacts"),
        (f"{retl} dlq list --sync {contacts}", f"# the {len(INVALID_EMAILS)} contacts the CRM refused"),
        (f"{retl} demo change", "# change some rows in the warehouse"),
        (f"{retl} syncs run {contacts} --wait", "# sends only those changes"),
        (f"{retl} runs list --sync {accounts}", "# the mirror sync runs every minute"),
        (f"{retl} fields {demo.destination_id} contacts", "# the CRM table's columns"),
        (f"{retl} dlq resolve DLQ_ID... --resolution skipped", ""),
    ]
    width = max(len(command) for command, _ in commands) + 2
    lines = "\n".join(f"  {command:<{width}}{comment}".rstrip() for command, comment in commands)
    return f"""
The demo is ready. Warehouse: {demo.warehouse} (DuckDB: {ACCOUNTS:,} accounts,
{CONTACTS:,} contacts, {len(INVALID_EMAILS)} of them with an invalid email). CRM: the Postgres
database {demo.crm_database}, schema {SCHEMA} (destination {demo.destination_id}).
First runs: {', '.join(demo.first_run_ids)}.

In another terminal, from this folder:
{lines}
Ctrl-C here stops everything; `retl up --demo` again picks up where it was left.
"""


def _open_for_writing(path: Path) -> duckdb.DuckDBPyConnection:
    """The warehouse, opened for writing once no run is reading it (DuckDB lets one process
    write a file only while no other has it open)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise click.ClickException(f"cannot open {path} for writing: {exc}") from None
            time.sleep(0.2)


@dataclass(frozen=True)
class Changes:
    contacts_changed: int
    contacts_added: int
    accounts_changed: int
    accounts_added: int
    accounts_removed: int


_CHANGE_SQL = """
UPDATE contacts
SET title = CASE WHEN title LIKE 'Senior %' THEN substr(title, 8) ELSE 'Senior ' || title END,
    updated_at = current_timestamp
WHERE contact_id IN (
  SELECT contact_id FROM contacts WHERE contact_id NOT IN ({refused})
  ORDER BY random() LIMIT {changed}
);
INSERT INTO contacts
SELECT 'con_' || lpad((n + i)::VARCHAR, 6, '0'), 'acc_' || lpad((1 + i)::VARCHAR, 5, '0'),
       'New', 'Contact ' || (n + i), 'new.contact.' || (n + i) || '@example.com', 'Buyer',
       current_timestamp
FROM range(1, {added} + 1) AS t(i),
     (SELECT max(substr(contact_id, 5)::INTEGER) AS n FROM contacts);
"""


def change(home: Path, contacts: int = 40, new_contacts: int = 10, accounts: int = 20,
           new_accounts: int = 2, removed_accounts: int = 3) -> Changes:
    """Change the warehouse a little, so that the next runs have something (and only that) to
    send: titles of some contacts, new contacts, revenues of some accounts, new accounts, and
    accounts that leave (the mirror sync deletes them from the CRM)."""
    path = warehouse_path(home)
    if not path.exists():
        raise click.ClickException(
            f"no demo warehouse at {path}: start the demo with `retl up --demo` (or `make demo`),"
            " and run this from the folder where it runs (or set RETL_HOME to its folder)"
        )
    with _open_for_writing(path) as conn:
        conn.execute("BEGIN")
        # The contacts the CRM refuses stay as they are, so that a run after a change writes
        # exactly the changed and new ones and tries the refused ones again, as it says.
        refused = ", ".join(f"'{contact_id}'" for contact_id in sorted(INVALID_EMAILS))
        conn.execute(_CHANGE_SQL.format(changed=int(contacts), added=int(new_contacts), refused=refused))
        conn.execute(
            "DELETE FROM accounts WHERE account_id IN"
            " (SELECT account_id FROM accounts ORDER BY random() LIMIT ?)",
            [removed_accounts],
        )
        conn.execute(
            "UPDATE accounts SET annual_revenue = annual_revenue + 1000, updated_at = current_timestamp"
            " WHERE account_id IN (SELECT account_id FROM accounts ORDER BY random() LIMIT ?)",
            [accounts],
        )
        conn.execute(
            "INSERT INTO accounts SELECT 'acc_' || lpad((n + i)::VARCHAR, 5, '0'),"
            " 'Newco ' || (n + i), 'software', 12, 250000, current_timestamp"
            " FROM range(1, ? + 1) AS t(i),"
            " (SELECT max(substr(account_id, 5)::INTEGER) AS n FROM accounts)",
            [new_accounts],
        )
        conn.execute("COMMIT")
    return Changes(contacts, new_contacts, accounts, new_accounts, removed_accounts)


@click.group("demo")
def demo_group() -> None:
    """The demo started by `retl up --demo`."""


@demo_group.command("change")
def change_command() -> None:
    """Change some rows of the demo warehouse, so the next runs send only those."""
    from shared.settings import get_settings

    made = change(get_settings().home)
    click.echo(
        f"contacts: {made.contacts_changed} changed, {made.contacts_added} added;"
        f" accounts: {made.accounts_changed} changed, {made.accounts_added} added,"
        f" {made.accounts_removed} removed.\n"
        f"The contacts sync (upsert) writes {made.contacts_changed + made.contacts_added} records"
        " when you run it (`retl syncs run ID --wait`), and tries the ones the CRM refused"
        " again; the accounts sync (mirror) upserts"
        f" {made.accounts_changed + made.accounts_added} and deletes {made.accounts_removed}"
        " at its next minute."
    )
