"""`retl` commands: up, api, worker, beat, migrate, api-key create, the operator commands over
the REST API (syncs, runs, dlq, destinations, objects, fields) and the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click
import requests

from cli import operator, state
from cli.demo import demo_group
from shared.settings import get_settings

# What `retl up` lets workspaces reach on this machine when RETL_EGRESS_ALLOW is not set.
LOOPBACK = "127.0.0.0/8,::1,localhost"
# Embedded servers started by this process stay up as long as it holds them.
_embedded: list[object] = []
STARTUP_SECONDS = 90


def _no_database(home: object) -> click.ClickException:
    return click.ClickException(
        f"no retl database: RETL_DATABASE_URL is not set and no `retl up` runs with"
        f" RETL_HOME={home}. Start `retl up` (it keeps an embedded Postgres there), run this from"
        " the folder where `retl up` runs, or set RETL_HOME to its folder or RETL_DATABASE_URL"
        " to its database"
    )


def _use_running_up() -> None:
    """Unset RETL_DATABASE_URL / RETL_REDIS_URL taken from the `retl up` running with this
    RETL_HOME, so that a command run beside it uses its servers."""
    settings = get_settings()
    if settings.database_url and settings.redis_url:
        return
    running = state.running(settings.home)
    if running is None:
        return
    os.environ.setdefault("RETL_DATABASE_URL", running.database_url)
    os.environ.setdefault("RETL_REDIS_URL", running.redis_url)
    get_settings.cache_clear()


def _database_url(create: bool = False) -> str:
    """RETL_DATABASE_URL, else the database of the `retl up` running with RETL_HOME, else the
    embedded server kept under RETL_HOME (started here). Only `retl up` (create=True) may start
    an embedded server where none was ever made: elsewhere that would be a second, empty
    database while the real one runs from another folder."""
    _use_running_up()
    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    from cli import embedded

    if not create and not embedded.has_postgres(settings.home):
        raise _no_database(settings.home)
    server = embedded.start_postgres(settings.home)
    _embedded.append(server)
    url = embedded.postgres_url(server)
    os.environ["RETL_DATABASE_URL"] = url
    get_settings.cache_clear()
    return url


def _socket_dirs(database_url: str) -> list[str]:
    """The unix-socket folder a database URL names, if it names one."""
    import psycopg

    host = psycopg.conninfo.conninfo_to_dict(database_url).get("host") or ""
    return [host] if host.startswith("/") else []


def _require_servers() -> None:
    """For api, worker and beat: the database and Redis set, or those of the running `retl up`."""
    _use_running_up()
    settings = get_settings()
    if not settings.database_url:
        raise _no_database(settings.home)
    if not settings.redis_url:
        raise click.ClickException(
            f"RETL_REDIS_URL is not set and no `retl up` runs with RETL_HOME={settings.home}"
        )


@click.group()
def cli() -> None:
    """retl: run a warehouse query and keep SaaS tools in step with it."""


@cli.command()
def migrate() -> None:
    """Apply database migrations."""
    from shared.migrate import migrate as apply

    applied = apply(_database_url())
    click.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")


@cli.group("api-key")
def api_key() -> None:
    """Manage API keys."""


@api_key.command("create")
@click.option("--workspace", default="default", show_default=True, help="Workspace name (created if new).")
def api_key_create(workspace: str) -> None:
    """Create an API key; the key is the last line of output."""
    from shared.migrate import migrate as apply
    from shared.services.auth import create_api_key

    apply(_database_url())
    issued = create_api_key(workspace)
    click.echo(f"workspace: {issued.workspace_name} ({issued.workspace_id})", err=True)
    click.echo(issued.key)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Server processes (gunicorn). Default: the number of cores.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(min=1),
              help="Threads per process.")
def api(host: str, port: int, workers: int | None, threads: int) -> None:
    """Serve the REST API (gunicorn on POSIX, waitress elsewhere)."""
    _require_servers()
    from api.serve import default_workers, serve
    from shared.logs import configure

    configure("api")
    serve(host, port, workers or default_workers(), threads)


@cli.command()
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "threads", "solo"]))
@click.option("--metrics-port", type=int, envvar="RETL_WORKER_METRICS_PORT",
              help="Serve Prometheus metrics on this port (all pool processes summed).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              envvar="RETL_WORKER_METRICS_HOST", help="Address the metrics port listens on.")
@click.option("--grace", default=None, type=float,
              help="Seconds a SIGTERM leaves running work to finish or hand back (default 30,"
                   " or RETL_WORKER_GRACE_SECONDS).")
def worker(
    concurrency: int, pool: str, metrics_port: int | None, metrics_host: str, grace: float | None,
) -> None:
    """Run a Celery worker: runs, batches, alert deliveries and the reaper."""
    if grace is not None:
        os.environ["RETL_WORKER_GRACE_SECONDS"] = str(grace)
        get_settings.cache_clear()
    _require_servers()
    settings = get_settings()
    if metrics_port is not None:
        _serve_worker_metrics(metrics_host, metrics_port)
    from shared.logs import configure
    from worker.app import app

    configure("worker")
    app.worker_main([
        "--quiet", "worker", "--loglevel", settings.log_level,
        "-Q", f"{settings.queue},{settings.control_queue}",
        "--concurrency", str(concurrency), "--pool", pool, "--without-gossip", "--without-mingle",
    ])


def _serve_worker_metrics(host: str, port: int) -> None:
    """Every pool process counts into a folder of its own for this worker (prometheus-client's
    multiprocess mode); this process serves their sum. Set before anything imports
    prometheus_client, and removed when the worker exits."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="retl-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    from prometheus_client import start_http_server

    from shared.metrics import worker_registry

    start_http_server(port, addr=host, registry=worker_registry())


@cli.command()
def beat() -> None:
    """Run Celery beat: schedule ticks and the reaper."""
    _require_servers()
    from celery.signals import after_task_publish

    from shared.logs import configure, get_logger
    from worker.app import app

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    configure("beat")
    heartbeat = settings.home / "beat-heartbeat"

    @after_task_publish.connect(weak=False)
    def _alive(**_: object) -> None:
        # A health check reads this file's age: beat is alive while it keeps sending ticks.
        heartbeat.touch()

    get_logger("retl.beat").info("beat started", interval_s=settings.beat_interval_s)
    app.start(["--quiet", "beat", "--loglevel", settings.log_level,
               "-s", str(settings.home / "beat-schedule")])


def _connect_host(host: str) -> str:
    """Where this machine reaches an API listening on `host` (all interfaces: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _wait_until_serving(api_url: str, children: dict[str, subprocess.Popen]) -> None:
    """Return once the API answers /healthz; a ClickException naming the process when a child
    exits first or the API does not answer within STARTUP_SECONDS."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        for name, child in children.items():
            if child.poll() is not None:
                raise click.ClickException(
                    f"the {name} process exited with status {child.returncode} while starting"
                    " (its output is above)"
                )
        try:
            if requests.get(f"{api_url}/healthz", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise click.ClickException(f"the api did not answer {api_url}/healthz within"
                                       f" {STARTUP_SECONDS} s")
        time.sleep(0.3)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--concurrency", default=2, show_default=True, type=int, help="Worker processes.")
@click.option("--demo", is_flag=True,
              help="Also set up the demo: a DuckDB warehouse, a Postgres CRM, two syncs.")
@click.option("--api-workers", default=None, type=click.IntRange(min=1),
              help="API server processes. Default: the number of cores.")
def up(host: str, port: int, concurrency: int, demo: bool, api_workers: int | None) -> None:
    """The whole service on this machine: migrations, API, a worker and beat."""
    from cli import demo as demo_setup
    from cli import embedded
    from shared.migrate import migrate as apply

    settings = get_settings()
    lock = embedded.hold_home_lock(settings.home)
    if lock is None:
        raise click.ClickException(
            f"another `retl up` is running with {settings.home}; stop it first"
            " (or set RETL_HOME to run a second one)"
        )
    state.remove(settings.home)  # left by a `retl up` that was killed: its URLs are dead
    stopping = False
    failure: str | None = None

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)

    redis_server = None
    children: dict[str, subprocess.Popen] = {}
    connect = _connect_host(host)
    api_url = f"http://[{connect}]:{port}" if ":" in connect else f"http://{connect}:{port}"
    try:
        problem = state.port_problem(host, port)
        if problem:
            raise click.ClickException(
                f"{problem}: stop what listens there, or choose another port with --port"
                " (make run PORT=8300)"
            )
        if not settings.redis_url:
            try:
                redis_server = embedded.start_redis(settings.home)
            except (OSError, RuntimeError) as exc:
                raise click.ClickException(f"the embedded Redis did not start: {exc}") from None
            os.environ["RETL_REDIS_URL"] = redis_server.url
            get_settings.cache_clear()
        try:
            database_url = _database_url(create=True)
            apply(database_url)
        except click.ClickException:
            raise
        except Exception as exc:
            raise click.ClickException(f"the database is not usable: {exc}") from None
        if demo:
            demo_setup.seed_warehouse(settings.home)
        if os.environ.get("RETL_EGRESS_ALLOW") is None:
            # One machine, one owner: warehouses and receivers on this machine are theirs to
            # reach (the embedded server's socket too: the demo's CRM is a database of its
            # own there). A shared deployment sets the variable itself ("Security model").
            os.environ["RETL_EGRESS_ALLOW"] = ",".join([LOOPBACK, *_socket_dirs(database_url)])
            get_settings.cache_clear()

        retl = [sys.executable, "-m", "cli"]
        for name, args in (
            ("api", ["api", "--host", host, "--port", str(port),
                     *(["--workers", str(api_workers)] if api_workers else [])]),
            ("worker", ["worker", "--concurrency", str(concurrency)]),
            ("beat", ["beat"]),
        ):
            children[name] = subprocess.Popen([*retl, *args], preexec_fn=embedded.die_with_parent)
        _wait_until_serving(api_url, children)
        state.write(settings.home, state.UpState(
            pid=os.getpid(), api_url=api_url, database_url=database_url,
            redis_url=get_settings().require_redis_url(),
        ))
        click.echo(f"retl is up: {api_url}  (health: {api_url}/healthz)")
        if demo:
            ready = demo_setup.set_up(settings.home, api_url, database_url)
            click.echo(demo_setup.first_runs(ready, give_up=lambda: stopping))
            click.echo(demo_setup.next_steps(ready))
        else:
            click.echo("create an API key with:  .venv/bin/retl api-key create   (Ctrl-C stops everything)")
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    failure = f"the {name} process exited with status {child.returncode}; stopped everything"
                    stopping = True
            time.sleep(0.5)
    finally:
        state.remove(settings.home)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if redis_server is not None:
            redis_server.stop()
        lock.close()
        if children:
            click.echo("retl stopped", err=failure is not None)
    if failure:
        raise click.ClickException(failure)


operator.register(cli)
cli.add_command(demo_group)


if __name__ == "__main__":
    cli()
