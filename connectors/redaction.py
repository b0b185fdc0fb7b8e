"""What of a connection's config is secret, and taking those values out of any text.

Secret are: the fields a connector marks secret (tokens, passwords, headers, a Postgres URL),
and in every URL of a config its user-info and credential-like query parameters (`token`,
`key`, `secret`, `password`, `signature`, `access_token`, `api_key`, ...). Every error text a
workspace can read (run errors, DLQ messages, status messages, API errors) passes through the
Redactor of the connections involved; every log line passes through `redact_known`, which
knows the secrets of every connection this process has opened.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MASK = "[redacted]"
URL_MASK = "REDACTED"
# Shorter values are not taken out of texts: they would garble every message that happens to
# hold the same letters, and are no secret worth the name.
MIN_SECRET_LENGTH = 4
_CREDENTIAL_WORDS = ("token", "secret", "password", "passwd", "pwd", "signature", "sig",
                     "credential", "auth", "apikey", "api_key", "api-key", "session")


def is_credential_parameter(name: str) -> bool:
    lowered = name.lower()
    return (lowered in ("key", "code", "pass", "access_key", "private_key")
            or lowered.endswith(("key", "_key", "-key"))
            or any(word in lowered for word in _CREDENTIAL_WORDS))


def _url_parts(value: Any) -> Any:
    if not isinstance(value, str) or "://" not in value:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        return None
    return parts if parts.scheme and parts.netloc else None


def url_secrets(value: Any) -> set[str]:
    """The user-info and credential query values of a URL, raw and decoded."""
    parts = _url_parts(value)
    if parts is None:
        return set()
    found: set[str] = set()
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if userinfo:
        user, _, password = userinfo.partition(":")
        piece = password or user  # a token is often given as the user name alone
        found.update({piece, unquote(piece)})
    for name, raw in _query_pairs(parts.query):
        if is_credential_parameter(unquote(name)) and raw:
            found.update({raw, unquote(raw.replace("+", " "))})
    return {v for v in found if v}


def _query_pairs(query: str) -> list[tuple[str, str]]:
    return [tuple(p.split("=", 1)) if "=" in p else (p, "") for p in query.split("&") if p]  # type: ignore[misc]


def redacted_url(value: str) -> str:
    """The URL with its user-info and credential query values replaced by REDACTED."""
    parts = _url_parts(value)
    if parts is None:
        return value
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{URL_MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{name}={URL_MASK}" if "=" in pair and is_credential_parameter(unquote(name)) else pair
        for pair in parts.query.split("&") if pair
        for name in [pair.split("=", 1)[0]]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_url_secrets(value: Any) -> bool:
    return bool(url_secrets(value))


def restore_url(new: str, old: str) -> str:
    """`new` with its REDACTED parts taken from `old` (a config read back and saved again),
    when both name the same origin; else `new` as it is."""
    if URL_MASK not in new or redacted_url(old) != new:
        return new
    return old


def secret_values(config: dict[str, Any], secret_fields: Iterable[str]) -> set[str]:
    """Every secret value a config holds (see the module's first lines)."""
    found: set[str] = set()
    secret = set(secret_fields)
    for name, value in config.items():
        if name in secret:
            found.update(_values_of(value))
        for text in _strings(value):
            found.update(url_secrets(text))
            if name in secret:
                found.update(_postgres_password(text))
    return {v for v in found if len(v) >= MIN_SECRET_LENGTH}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _values_of(value: Any) -> set[str]:
    """A secret value and the words of it that are secrets on their own ("Bearer abc…")."""
    found: set[str] = set()
    for text in _strings(value):
        found.add(text)
        words = text.split()
        if len(words) > 1:
            found.update(w for w in words[1:] if len(w) >= 8)
        found.add(quote(text, safe=""))
    return found


def _postgres_password(text: str) -> set[str]:
    try:
        from psycopg.conninfo import conninfo_to_dict

        password = conninfo_to_dict(text).get("password")
    except Exception:  # noqa: BLE001 - a value that does not parse holds no password to find
        return set()
    return {str(password), quote(str(password), safe="")} if password else set()


_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)[^/@\s\"'<>]+@", re.IGNORECASE)
_URL_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&\s\"'<>#]+)=)(?P<value>[^&\s\"'<>#]+)")


def redact_urls(text: str) -> str:
    """User-info and credential query values of every URL in `text`, replaced."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{URL_MASK}@", text)
    return _URL_PARAM.sub(
        lambda m: m["head"] + URL_MASK if is_credential_parameter(unquote(m["name"])) else m[0],
        text,
    )


class Redactor:
    """Takes given secret values (longest first) and URL credentials out of texts."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        ordered = sorted({v for v in values if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str | None) -> str | None:
        if text is None:
            return None
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return redact_urls(text)


# -- every secret this process has seen, for its log lines ----------------------------------------

_known: dict[str, frozenset[str]] = {}
_known_lock = threading.Lock()
_known_redactor = Redactor()


def remember(key: str, values: Iterable[str]) -> None:
    """Keep `values` (a connection's secrets, under its id) for `redact_known`."""
    global _known_redactor
    frozen = frozenset(values)
    with _known_lock:
        if _known.get(key) == frozen:
            return
        _known[key] = frozen
        _known_redactor = Redactor(v for values in _known.values() for v in values)


def redact_known(text: str) -> str:
    """`text` without any secret of any connection this process has opened."""
    return _known_redactor(text) or ""
