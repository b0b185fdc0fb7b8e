"""A fake internal service on 127.0.0.1: it plays a cloud metadata endpoint or any service a
workspace must not reach (or read from). It answers every request with credentials, records
what reached it, and can answer with a redirect instead."""

from __future__ import annotations

from typing import Any

from tests.fakes.base import FakeServer, Request, Response

# The part of the answer that must never come back to a workspace: placed after 200 characters
# of padding, where no short excerpt of the answer reaches.
SECRET_ACCESS_KEY = "InternalSecretAccessKey-9f3a7c1e-Never-Returned"


class FakeInternalService(FakeServer):
    """`with FakeInternalService() as internal:`; `internal.requests` is what reached it."""

    def __init__(self, *, status: int = 200, redirect_to: str | None = None) -> None:
        super().__init__()
        handler = self._server.RequestHandlerClass
        handler.do_OPTIONS = handler._serve  # type: ignore[attr-defined]
        self.status = status
        self.redirect_to = redirect_to

    def handle(self, request: Request) -> Response:
        if self.redirect_to is not None:
            return Response(302, None, {"Location": self.redirect_to})
        return Response(self.status, self.credentials())

    @staticmethod
    def credentials() -> dict[str, Any]:
        return {
            "Code": "Success",
            "Padding": "p" * 240,
            "AccessKeyId": "ASIAINTERNALEXAMPLE",
            "SecretAccessKey": SECRET_ACCESS_KEY,
        }
