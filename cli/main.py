"""`retl` commands: up, api, worker, beat, migrate, api-key create."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click

from shared.settings import get_settings

# Embedded servers started by this process stay up as long as it holds them.
_embedded: list[object] = []


def _database_url() -> str:
    """RETL_DATABASE_URL, or the embedded server under RETL_HOME (started if needed)."""
    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    from cli import embedded

    server = embedded.start_postgres(settings.home)
    _embedded.append(server)
    url = embedded.postgres_url(server)
    os.environ["RETL_DATABASE_URL"] = url
    get_settings.cache_clear()
    return url


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
    from api.serve import default_workers, serve
    from shared.logs import configure

    configure("api")
    get_settings().require_database_url()
    serve(host, port, workers or default_workers(), threads)


@cli.command()
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "threads", "solo"]))
def worker(concurrency: int, pool: str) -> None:
    """Run a Celery worker: runs, batches and the reaper."""
    from worker.app import app

    settings = get_settings()
    settings.require_database_url()
    app.worker_main([
        "worker", "--loglevel", settings.log_level, "-Q", f"{settings.queue},{settings.control_queue}",
        "--concurrency", str(concurrency), "--pool", pool, "--without-gossip", "--without-mingle",
    ])


@cli.command()
def beat() -> None:
    """Run Celery beat: schedule ticks and the reaper."""
    from worker.app import app

    settings = get_settings()
    settings.require_database_url()
    settings.home.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", settings.log_level, "-s", str(settings.home / "beat-schedule")])


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--concurrency", default=2, show_default=True, type=int, help="Worker processes.")
@click.option("--api-workers", default=None, type=click.IntRange(min=1),
              help="API server processes. Default: the number of cores.")
def up(host: str, port: int, concurrency: int, api_workers: int | None) -> None:
    """The whole service on this machine: migrations, API, a worker and beat."""
    from cli import embedded
    from shared.migrate import migrate as apply

    settings = get_settings()
    lock = embedded.hold_home_lock(settings.home)
    if lock is None:
        raise click.ClickException(
            f"another `retl up` is running with {settings.home}; stop it first"
            " (or set RETL_HOME to run a second one)"
        )
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)

    redis_server = None
    children: dict[str, subprocess.Popen] = {}
    try:
        if not settings.redis_url:
            redis_server = embedded.start_redis(settings.home)
            os.environ["RETL_REDIS_URL"] = redis_server.url
            get_settings.cache_clear()
        apply(_database_url())

        retl = [sys.executable, "-m", "cli"]
        for name, args in (
            ("api", ["api", "--host", host, "--port", str(port),
                     *(["--workers", str(api_workers)] if api_workers else [])]),
            ("worker", ["worker", "--concurrency", str(concurrency)]),
            ("beat", ["beat"]),
        ):
            children[name] = subprocess.Popen([*retl, *args], preexec_fn=embedded.die_with_parent)
        click.echo(f"retl is up: http://{host}:{port}  (health: http://{host}:{port}/healthz)")
        click.echo("create an API key with:  .venv/bin/retl api-key create   (Ctrl-C stops everything)")
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    click.echo(f"{name} exited with {child.returncode}; stopping", err=True)
                    stopping = True
            time.sleep(0.5)
    finally:
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
        click.echo("retl stopped")


if __name__ == "__main__":
    cli()
