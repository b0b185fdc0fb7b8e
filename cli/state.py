"""The running `retl up` of a RETL_HOME, for commands started elsewhere: `retl up` writes its
API address and its database and Redis URLs to RETL_HOME/up.json (readable by its user only)
and holds RETL_HOME/up.lock while it runs; a command that needs the database reads the file
only while that lock is held, so a file left by a killed `retl up` is never trusted."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "up.json"
LOCK_FILE = "up.lock"


@dataclass(frozen=True)
class UpState:
    pid: int
    api_url: str
    database_url: str
    redis_url: str


def write(home: Path, state: UpState) -> None:
    """Replace the state file in one step, created readable by its owner only (URLs may hold
    passwords)."""
    path = home / STATE_FILE
    temporary = home / f".{STATE_FILE}.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(asdict(state), file)
    os.replace(temporary, path)


def remove(home: Path) -> None:
    (home / STATE_FILE).unlink(missing_ok=True)


def _up_is_running(home: Path) -> bool:
    """Whether some process holds RETL_HOME's up.lock (only `retl up` takes it)."""
    try:
        handle = open(home / LOCK_FILE)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def running(home: Path) -> UpState | None:
    """The state of the `retl up` running with this RETL_HOME, or None when none runs."""
    if not _up_is_running(home):
        return None
    try:
        return UpState(**json.loads((home / STATE_FILE).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None  # still starting: it writes the file once its API answers


def port_problem(host: str, port: int) -> str | None:
    """Why the API could not listen on host:port (taken, or an address not of this machine),
    or None. Bound the way the API server binds (SO_REUSEADDR), so a port in TIME_WAIT after a
    restart is not mistaken for a taken one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r}: {exc.strerror}"
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use"
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None
