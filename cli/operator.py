"""Operator commands over the REST API: syncs, runs, the DLQ, destinations and discovery.

Each verb is one function decorated with `api_command`: it receives a `Call` (the API client and
the output settings), makes its API calls, and returns the API's JSON answer; the decorator adds
`--url`, `--api-key` and `--json`, and prints the answer as JSON or through the verb's renderer.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.client import DEFAULT_URL, ApiClient

Document = dict[str, Any]
Renderer = Callable[[Document], RenderableType]

FINISHED = ("succeeded", "failed", "cancelled", "held")
POLL_SECONDS = 1.0
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "held")


@dataclass
class Call:
    """What a verb works with: the API, whether JSON was asked for, and the terminals."""

    api: ApiClient
    as_json: bool
    out: Console = field(default_factory=lambda: _console(stderr=False))
    err: Console = field(default_factory=lambda: _console(stderr=True))


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        # Piped or captured: wide enough that ids are never cut.
        console = Console(stderr=stderr, highlight=False, width=max(console.width, 400))
    return console


def api_command(
    group: click.Group | None, name: str, render: Renderer,
    exit_code: Callable[[Document], int] | None = None,
) -> Callable[[Callable[..., Document]], click.Command]:
    """Register `fn(call, **params) -> document` as `retl <group> <name>` (see module doc); with
    no group, a command of its own for `register` to add."""

    def decorate(fn: Callable[..., Document]) -> click.Command:
        def command(url: str, api_key: str | None, as_json: bool, **params: Any) -> None:
            call = Call(ApiClient(url, api_key), as_json)
            document = fn(call, **params)
            if as_json:
                click.echo(json.dumps(document, indent=2))
            else:
                call.out.print(render(document))
            code = exit_code(document) if exit_code else 0
            if code:
                raise click.exceptions.Exit(code)

        functools.update_wrapper(command, fn)
        command = click.option("--json", "as_json", is_flag=True,
                               help="Print the API's JSON answer instead of a table.")(command)
        command = click.option("--api-key", envvar="RETL_API_KEY", metavar="KEY",
                               help="API key (default: $RETL_API_KEY).")(command)
        command = click.option("--url", envvar="RETL_URL", default=DEFAULT_URL, show_default=True,
                               help="retl's address ($RETL_URL).")(command)
        return (group.command if group else click.command)(name)(command)

    return decorate


# ---- rendering ------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _table(document: Document, columns: dict[str, Callable[[Document], Any]]) -> RenderableType:
    """One row per resource of a list answer; a hint for the next page when there is one."""
    table = Table(box=None, header_style="bold")
    for name in columns:
        # Ids are never cut (they are pasted into the next command); the rest may wrap.
        table.add_column(name, no_wrap=name in UNCUT)
    for item in document["data"]:
        table.add_row(*(_text(cell(item)) for cell in columns.values()))
    cursor = ((document.get("meta") or {}).get("page") or {}).get("cursor")
    if cursor:
        table.caption = f"more: --cursor {cursor}"
    if not document["data"]:
        table.caption = "none"
    return table


UNCUT = frozenset({"id", "sync", "destination", "object", "field", "record"})


def _details(document: Document) -> RenderableType:
    """A resource's id and attributes, one per line."""
    resource = document["data"]
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    if resource.get("id"):
        table.add_row("id", resource["id"])
    for name, value in resource["attributes"].items():
        table.add_row(name, _text(value))
    return table


def _attribute(name: str) -> Callable[[Document], Any]:
    return lambda item: item["attributes"].get(name)


def _schedule(item: Document) -> str:
    schedule = item["attributes"].get("schedule") or {}
    if schedule.get("type") == "cron":
        return f"cron {schedule.get('expression')} {schedule.get('timezone', 'UTC')}"
    if schedule.get("type") == "interval":
        return f"every {schedule.get('every')}"
    return "manual"


def _id(item: Document) -> str:
    return item["id"]


SYNC_COLUMNS = {
    "id": _id, "name": _attribute("name"), "mode": _attribute("sync_mode"),
    "object": _attribute("object_name"), "destination": _attribute("destination_id"),
    "enabled": _attribute("enabled"), "schedule": _schedule, "next run": _attribute("next_run_at"),
}
RUN_COLUMNS = {
    "id": _id, "sync": _attribute("sync_id"), "status": _attribute("status"),
    "trigger": _attribute("trigger"), "read": _attribute("rows_read"),
    "written": _attribute("rows_written"), "failed": _attribute("rows_failed"),
    "created": _attribute("created_at"), "finished": _attribute("finished_at"),
}
DLQ_COLUMNS = {
    "id": _id, "sync": _attribute("sync_id"), "code": _attribute("error_code"),
    "record": _attribute("record_keys"), "attempts": _attribute("attempts"),
    "message": lambda item: (item["attributes"].get("message") or "")[:100],
}
DESTINATION_COLUMNS = {
    "id": _id, "name": _attribute("name"), "connector": _attribute("connector"),
    "status": _attribute("status"), "discoverable": _attribute("objects_discoverable"),
}
OBJECT_COLUMNS = {
    "object": _id, "label": _attribute("label"), "upsert": _attribute("supports_upsert"),
    "writable": _attribute("writable"),
}
FIELD_COLUMNS = {
    "field": _id, "label": _attribute("label"), "type": _attribute("data_type"),
    "required": _attribute("required"), "updateable": _attribute("updateable"),
    "external id": _attribute("external_id"),
}


def _listing(columns: dict[str, Callable[[Document], Any]]) -> Renderer:
    return lambda document: _table(document, columns)


def _dlq_stats(document: Document) -> RenderableType:
    attributes = document["data"]["attributes"]
    table = Table("open", "resolved", *attributes["by_error_code"], box=None, header_style="bold")
    table.add_row(str(attributes["open_count"]), str(attributes["resolved_count"]),
                  *map(str, attributes["by_error_code"].values()))
    return table


def _resolved(document: Document) -> str:
    attributes = document["data"]["attributes"]
    line = f"resolved {len(attributes['resolved_ids'])} entries"
    replays = attributes.get("replay_run_ids") or (
        [attributes["replay_run_id"]] if attributes.get("replay_run_id") else []
    )
    if replays:
        line += f"; replay run{'s' if len(replays) > 1 else ''}: {', '.join(replays)}"
    return line


def _run_outcome(document: Document) -> int:
    """0 while a run is on its way or succeeded; 1 when it failed, was cancelled or is held
    (nothing written until someone approves it)."""
    return 1 if document["data"]["attributes"]["status"] in ("failed", "cancelled", "held") else 0


def _preview(document: Document) -> RenderableType:
    """The counts, the rejections by reason, then a table of the sampled records."""
    attributes = document["data"]["attributes"]
    counts = Table(*attributes["counts"], box=None, header_style="bold")
    counts.add_row(*map(str, attributes["counts"].values()))
    samples = Table("operation", "key", "record", box=None, header_style="bold")
    for operation, records in attributes["samples"].items():
        for sample in records:
            shown = sample.get("record") or {"reason": sample.get("reason"),
                                             "message": sample.get("message")}
            samples.add_row(operation, _text(sample.get("key")), _text(shown))
    rejected = ", ".join(f"{reason} {count}" for reason, count
                         in attributes["rejected_by_reason"].items() if count)
    return Group(counts, f"rejected: {rejected or 'none'}", samples)


# ---- groups ---------------------------------------------------------------------------------


@click.group()
def syncs() -> None:
    """List, inspect, run, pause and resume syncs."""


@click.group()
def runs() -> None:
    """List, inspect and cancel runs."""


@click.group()
def dlq() -> None:
    """The dead-letter queue: failed records, their counts, resolving them."""


@click.group()
def destinations() -> None:
    """List and test destinations."""


PAGING = (
    click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True),
    click.option("--cursor", help="The page after the one that printed it."),
)


def paged(fn: Callable[..., Document]) -> Callable[..., Document]:
    for option in reversed(PAGING):
        fn = option(fn)
    return fn


# ---- syncs ----------------------------------------------------------------------------------


@api_command(syncs, "list", _listing(SYNC_COLUMNS))
@paged
def list_syncs(call: Call, limit: int, cursor: str | None) -> Document:
    """List syncs."""
    return call.api.get("/syncs", limit=limit, cursor=cursor)


@api_command(syncs, "show", _details)
@click.argument("sync_id")
def show_sync(call: Call, sync_id: str) -> Document:
    """Show one sync, its query, mappings and schedule."""
    return call.api.get(f"/syncs/{sync_id}")


@api_command(syncs, "run", _details, exit_code=_run_outcome)
@click.argument("sync_id")
@click.option("--full-refresh", is_flag=True, help="Resend every row of the result.")
@click.option("--wait", is_flag=True,
              help="Follow the run to its end; exit 1 when it fails, is cancelled or is held.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="With --wait: give up waiting after this long (exit 2).")
def run_sync(call: Call, sync_id: str, full_refresh: bool, wait: bool,
             timeout: float | None) -> Document:
    """Trigger a run of a sync."""
    run = call.api.post("/sync/run", {"syncId": sync_id, "fullRefresh": full_refresh})
    if not wait:
        return run
    return follow_run(call, run["data"]["id"], timeout)


@api_command(syncs, "preview", _preview)
@click.argument("sync_id")
@click.option("--sample", type=click.IntRange(0, 100), default=10, show_default=True,
              help="Records shown per operation.")
def preview_sync(call: Call, sync_id: str, sample: int) -> Document:
    """Plan a run of a sync without writing anything: counts and sample records as sent."""
    return call.api.post(f"/syncs/{sync_id}/preview", {"sample": sample})


@api_command(syncs, "pause", _details)
@click.argument("sync_id")
def pause_sync(call: Call, sync_id: str) -> Document:
    """Pause a sync: its schedule stops until it is resumed."""
    return call.api.post("/sync/toggle", {"syncId": sync_id, "enabled": False})


@api_command(syncs, "resume", _details)
@click.argument("sync_id")
def resume_sync(call: Call, sync_id: str) -> Document:
    """Resume a paused sync: its schedule starts again from now."""
    return call.api.post("/sync/toggle", {"syncId": sync_id, "enabled": True})


def _planned(attributes: Document, mode: str) -> int:
    """The rows a run has planned to send, by the sync's mode."""
    planned = attributes["rows_added"]
    if mode != "insert":
        planned += attributes["rows_changed"]
    if mode == "mirror":
        planned += attributes["rows_removed"]
    return planned


def follow_run(call: Call, run_id: str, timeout: float | None) -> Document:
    """Poll a run until it ends, with a live bar of rows planned / written / failed on stderr
    (none with --json); the final answer of GET /runs/{id}."""
    run = call.api.get(f"/runs/{run_id}")
    mode = call.api.get(f"/syncs/{run['data']['attributes']['sync_id']}")["data"]["attributes"]["sync_mode"]
    deadline = None if timeout is None else time.monotonic() + timeout
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(),
        TextColumn("planned {task.fields[planned]} · written {task.fields[written]}"
                   " · failed {task.fields[failed]}"),
        TimeElapsedColumn(), console=call.err, transient=False, disable=call.as_json,
    )
    with progress:
        task = progress.add_task(run_id, total=None, planned=0, written=0, failed=0)
        while True:
            attributes = run["data"]["attributes"]
            planned = _planned(attributes, mode)
            done = attributes["rows_written"] + attributes["rows_failed"]
            progress.update(
                task, description=f"{run_id} {attributes['status']}",
                total=max(planned, done) or None, completed=done, planned=planned,
                written=attributes["rows_written"], failed=attributes["rows_failed"],
            )
            if attributes["status"] in FINISHED:
                if attributes["status"] == "succeeded" and not progress.tasks[0].total:
                    progress.update(task, total=1, completed=1)  # nothing to send: a full bar
                return run
            if deadline is not None and time.monotonic() > deadline:
                error = click.ClickException(
                    f"run {run_id} is still {attributes['status']} after {timeout:g} s"
                )
                error.exit_code = 2
                raise error
            time.sleep(POLL_SECONDS)
            run = call.api.get(f"/runs/{run_id}")


# ---- runs -----------------------------------------------------------------------------------


@api_command(runs, "list", _listing(RUN_COLUMNS))
@click.option("--sync", "sync_id", help="Only this sync's runs.")
@click.option("--status", type=click.Choice(RUN_STATUSES), help="Only runs in this status.")
@paged
def list_runs(call: Call, sync_id: str | None, status: str | None, limit: int,
              cursor: str | None) -> Document:
    """List runs, newest first."""
    return call.api.get("/runs", sync_id=sync_id, status=status, limit=limit, cursor=cursor)


@api_command(runs, "show", _details)
@click.argument("run_id")
def show_run(call: Call, run_id: str) -> Document:
    """Show one run: status, counts, error."""
    return call.api.get(f"/runs/{run_id}")


@api_command(runs, "cancel", _details)
@click.argument("run_id")
def cancel_run(call: Call, run_id: str) -> Document:
    """Cancel a queued or running run, or discard the plan of a held one."""
    return call.api.post(f"/runs/{run_id}/cancel")


@api_command(runs, "approve", _details)
@click.argument("run_id")
def approve_run(call: Call, run_id: str) -> Document:
    """Approve a held run: write exactly the plan it kept."""
    return call.api.post(f"/runs/{run_id}/approve")


# ---- dlq ------------------------------------------------------------------------------------


@api_command(dlq, "list", _listing(DLQ_COLUMNS))
@click.option("--sync", "sync_id", help="Only this sync's entries.")
@click.option("--resolved", is_flag=True, help="Resolved entries (history) instead of open ones.")
@paged
def list_dlq(call: Call, sync_id: str | None, resolved: bool, limit: int,
             cursor: str | None) -> Document:
    """List open DLQ entries."""
    return call.api.get("/dlq", sync_id=sync_id, resolved=str(resolved).lower(), limit=limit,
                        cursor=cursor)


@api_command(dlq, "stats", _dlq_stats)
@click.option("--sync", "sync_id", help="Only this sync's entries.")
@click.option("--since", help="ISO 8601 time: only entries seen since then.")
def dlq_stats(call: Call, sync_id: str | None, since: str | None) -> Document:
    """Open and resolved DLQ entries, by error code."""
    return call.api.get("/dlq/stats", sync_id=sync_id, since=since)


@api_command(dlq, "resolve", _resolved)
@click.argument("entry_ids", nargs=-1, required=True)
@click.option("--resolution", required=True,
              help="Why: fixed_upstream, skipped, manual_push, or your own word.")
@click.option("--replay", is_flag=True, help="Write those records again in a new run.")
def resolve_dlq(call: Call, entry_ids: tuple[str, ...], resolution: str, replay: bool) -> Document:
    """Resolve DLQ entries by id (and replay their records)."""
    return call.api.post("/dlq/resolve", {
        "entryIds": list(entry_ids), "resolution": resolution, "replay": replay,
    })


# ---- destinations and discovery -------------------------------------------------------------


@api_command(destinations, "list", _listing(DESTINATION_COLUMNS))
@click.option("--connector", help="Only destinations of this connector (e.g. postgres).")
@paged
def list_destinations(call: Call, connector: str | None, limit: int,
                      cursor: str | None) -> Document:
    """List destinations and their status."""
    return call.api.get("/destinations", connector=connector, limit=limit, cursor=cursor)


def _tested(document: Document) -> RenderableType:
    attributes = document["data"]["attributes"]
    message = attributes.get("status_message")
    return f"{document['data']['id']}: {attributes['status']}" + (f" ({message})" if message else "")


def _test_outcome(document: Document) -> int:
    return 0 if document["data"]["attributes"]["status"] == "connected" else 1


@api_command(destinations, "test", _tested, exit_code=_test_outcome)
@click.argument("destination_id")
def test_destination(call: Call, destination_id: str) -> Document:
    """Check a destination's connection and credentials; exit 1 unless connected."""
    return call.api.post(f"/destinations/{destination_id}/test")


@api_command(None, "objects", _listing(OBJECT_COLUMNS))
@click.argument("destination_id")
@click.option("--search", help="Case-insensitive filter on label and API name.")
def list_objects(call: Call, destination_id: str, search: str | None) -> Document:
    """The objects (tables, CRM objects) a destination offers."""
    return call.api.get("/objects", destination_id=destination_id, search=search)


@api_command(None, "fields", _listing(FIELD_COLUMNS))
@click.argument("destination_id")
@click.argument("object_name")
def list_fields(call: Call, destination_id: str, object_name: str) -> Document:
    """The fields of one of a destination's objects."""
    return call.api.get("/fields", destination_id=destination_id, object_name=object_name)


def register(cli: click.Group) -> None:
    """Add the operator commands to the `retl` group."""
    for group in (syncs, runs, dlq, destinations):
        cli.add_command(group)
    cli.add_command(list_objects)
    cli.add_command(list_fields)
