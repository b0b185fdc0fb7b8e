"""Finding the running `retl up` of a RETL_HOME, and telling why its port cannot be used."""

from __future__ import annotations

import socket

from cli import embedded, state

UP = state.UpState(pid=1, api_url="http://127.0.0.1:8000", database_url="postgresql://db/retl",
                   redis_url="redis://127.0.0.1:6379/0")


def test_the_state_of_a_running_up_is_found(tmp_path):
    lock = embedded.hold_home_lock(tmp_path)
    try:
        assert state.running(tmp_path) is None  # starting: no state written yet
        state.write(tmp_path, UP)
        assert state.running(tmp_path) == UP
        assert (tmp_path / state.STATE_FILE).stat().st_mode & 0o077 == 0
    finally:
        lock.close()


def test_a_state_left_by_a_killed_up_is_not_trusted(tmp_path):
    assert state.running(tmp_path) is None
    state.write(tmp_path, UP)
    assert state.running(tmp_path) is None  # nobody holds the lock


def test_a_taken_port_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert state.port_problem("127.0.0.1", port) == f"port {port} on 127.0.0.1 is already in use"
    assert state.port_problem("127.0.0.1", port) is None
    assert "cannot resolve host" in state.port_problem("no-such-host.invalid", port)
