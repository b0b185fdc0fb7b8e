"""A small client of retl's REST API for the operator commands: JSON in, JSON out, and every
failure (an error answer, a server that cannot be reached) as one readable line."""

from __future__ import annotations

from typing import Any

import click
import requests

DEFAULT_URL = "http://127.0.0.1:8000"
PREFIX = "/api/reverse-etl"
TIMEOUT_S = 30.0


class ApiError(click.ClickException):
    """An answer outside 2xx, or no answer: click prints it as `Error: <one line>` on stderr
    and exits with status 1."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _error_line(response: requests.Response) -> ApiError:
    """`404 not_found: no sync retl_sync_x (at /syncId)` from the API's error envelope; the
    start of the body when the answer is not one (a proxy's HTML page)."""
    try:
        errors = response.json()["errors"]
        first = errors[0]
        pointer = (first.get("source") or {}).get("pointer")
        where = f" (at {pointer})" if pointer and pointer != "/" else ""
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        line = f"{response.status_code} {first.get('code')}: {first.get('detail')}{where}{more}"
        return ApiError(line, response.status_code, first.get("code"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        text = " ".join(response.text.split())[:200] or response.reason
        return ApiError(f"{response.status_code} from {response.url}: {text}", response.status_code)


class ApiClient:
    """Calls `<url>/api/reverse-etl/...` with `Authorization: Bearer <api_key>`."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        present = {name: value for name, value in params.items() if value is not None}
        return self._call("GET", path, params=present)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call("POST", path, json=body)

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", path, json=body)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = f"{self.url}{PREFIX}{path}"
        try:
            response = self.session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.ConnectionError:
            raise ApiError(
                f"cannot reach the retl API at {self.url} (connection refused or no route):"
                " is `retl up` running? Set RETL_URL or --url to its address"
            ) from None
        except requests.Timeout:
            raise ApiError(f"the retl API at {self.url} did not answer within {self.timeout_s:g} s") from None
        except requests.RequestException as exc:
            raise ApiError(f"cannot call the retl API at {self.url}: {exc}") from None
        if not response.ok:
            error = _error_line(response)
            if response.status_code == 401 and "Authorization" not in self.session.headers:
                error.message += " (set RETL_API_KEY or pass --api-key)"
            raise error
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{response.status_code} from {url} is not JSON") from None
