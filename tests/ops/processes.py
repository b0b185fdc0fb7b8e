"""Real retl processes for the operations tests (`retl api`, `retl worker`, `retl beat`), each
logging to a file the test reads, as an operator reads a terminal or a log collector."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
RETL = str(Path(sys.executable).with_name("retl"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            # Its own session, so that stopping it also stops the children Celery forks.
            self.popen = subprocess.Popen([RETL, *args], cwd=ROOT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self, start: int = 0) -> list[dict[str, Any]]:
        """The JSON log lines from byte offset `start`; a line that is not JSON fails the test."""
        text = self.log.read_bytes()[start:].decode(errors="replace")
        parsed = []
        # A line still being written is read next time.
        for line in text[: text.rfind("\n") + 1].splitlines():
            if line.strip():
                try:
                    parsed.append(json.loads(line))
                except ValueError:
                    raise AssertionError(f"{self.name} logged a line that is not JSON: {line!r}") from None
        return parsed

    def offset(self) -> int:
        return self.log.stat().st_size

    def wait_for(self, found: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.text()}")
            result = found()
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: {what} did not happen in {timeout_s} s:\n{self.text()[-4000:]}")

    def wait_for_event(self, event: str, timeout_s: float = 60, **fields: Any) -> dict[str, Any]:
        def match() -> dict[str, Any] | None:
            for line in self.lines():
                if event in str(line.get("event", "")) and all(
                    line.get(k) == v for k, v in fields.items()
                ):
                    return line
            return None

        return self.wait_for(match, f"a {event!r} line", timeout_s)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)


@contextmanager
def running(name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> Iterator[Process]:
    process = Process(name, args, log_dir / f"{name}.log", env)
    try:
        yield process
    finally:
        process.stop()


def wait_until_answers(process: Process, url: str, timeout_s: float = 60) -> None:
    def answers() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    process.wait_for(answers, f"{url} answering", timeout_s)
