"""How `retl api` serves: gunicorn where it can run, waitress elsewhere with the same body limit."""

from __future__ import annotations

import os

import waitress

from api import MAX_BODY_BYTES
from api import serve as serving


def test_gunicorn_serves_on_posix():
    assert serving.gunicorn_available() == (os.name == "posix")
    assert serving.default_workers() == (os.cpu_count() or 1)


def test_waitress_serves_where_gunicorn_cannot_with_the_same_body_limit(monkeypatch):
    served: dict = {}
    monkeypatch.setattr(serving, "gunicorn_available", lambda: False)
    monkeypatch.setattr(waitress, "serve", lambda app, **options: served.update(options, app=app))

    serving.serve("127.0.0.1", 8123, 3, 5, app_factory=lambda: "the app")

    assert served["app"] == "the app"
    assert served["max_request_body_size"] == MAX_BODY_BYTES
    assert (served["host"], served["port"], served["threads"]) == ("127.0.0.1", 8123, 5)
