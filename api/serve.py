"""How `retl api` serves the app: gunicorn worker processes on POSIX, waitress where gunicorn
cannot run (it needs fork)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from api import MAX_BODY_BYTES


def default_workers() -> int:
    return os.cpu_count() or 1


def gunicorn_available() -> bool:
    if os.name != "posix":
        return False
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        return False
    return True


def serve(
    host: str, port: int, workers: int, threads: int, app_factory: Callable[[], Any] | None = None
) -> None:
    """Serve until stopped: `workers` processes of `threads` threads each (one process of
    `threads` threads under waitress). `app_factory` makes the WSGI app (retl's by default)."""
    if app_factory is None:
        from api import create_app

        app_factory = create_app
    if gunicorn_available():
        _gunicorn(host, port, workers, threads, app_factory)
    else:
        from waitress import serve as waitress_serve

        app = app_factory()
        waitress_serve(app, host=host, port=port, threads=threads, ident="retl",
                       max_request_body_size=MAX_BODY_BYTES)


def _gunicorn(host: str, port: int, workers: int, threads: int, app_factory: Callable[[], Any]) -> None:
    from gunicorn.app.base import BaseApplication

    from shared import db

    class Server(BaseApplication):
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "workers": workers,
                "worker_class": "gthread",
                "threads": threads,
                # Not preloaded: each worker imports the app after the fork, and opens its own
                # Postgres pool on first use; post_fork forgets one the master might hold.
                "preload_app": False,
                "post_fork": lambda _server, _worker: db.reset_pool(),
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
                "proc_name": "retl-api",
                "timeout": 60,
                "graceful_timeout": 20,
                "keepalive": 5,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app_factory()

    Server().run()
