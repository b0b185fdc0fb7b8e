"""Where a workspace's connections may go: every host is resolved, every address it resolves to
is checked, and the connection is made to the address that was checked.

Always refused: link-local and cloud metadata addresses, retl's own Postgres database (its
server address, port and database name) and retl's own Redis (its address and port), however
they are spelled. Refused unless RETL_EGRESS_ALLOW opens them: loopback, the addresses of this
machine, the unspecified, multicast and reserved ranges, and whatever RETL_EGRESS_DENY names.
Everything else is allowed, private ranges included (that is where warehouses live).

HTTP connectors use `http_session()`, whose connections resolve and check at connect time (so
every connection and every redirect is checked, and a name cannot change between the check and
the connection); Postgres connectors use `connect_postgres()`, which passes libpq the checked
address as `hostaddr` and every credential-bearing parameter explicitly, so nothing of the
worker's own `PG*` environment, `~/.pgpass` or client certificates reaches a workspace's server.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import psycopg
import requests
from psycopg.conninfo import conninfo_to_dict
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from connectors.errors import ConnectorError

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services, by name and by address (AWS, GCP, Azure, Alibaba, Oracle, ECS).
METADATA_NAMES = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.internal", "metadata.tencentyun.com",
})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.123", "fd00:ec2::254", "fd00:ec2::23",
    "100.100.100.200", "192.0.0.192",
))
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Refused unless allowed: loopback and the machine's own addresses are checked apart.
DEFAULT_REFUSED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "::/128", "ff00::/8",
))
POSTGRES_PORT = 5432
REDIS_PORT = 6379


class EgressRefused(ConnectorError):
    """The connection would go somewhere a workspace may not reach (DLQ code UNKNOWN, as any
    other whole-call failure that retrying will not fix)."""


@dataclass(frozen=True)
class Rules:
    """RETL_EGRESS_ALLOW / RETL_EGRESS_DENY parsed: host names and networks."""

    names: frozenset[str]
    networks: tuple[Network, ...]
    socket_dirs: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Rules:
        names: set[str] = set()
        networks: list[Network] = []
        sockets: list[str] = []
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            if entry.startswith("/"):
                sockets.append(os.path.normpath(entry))
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(_normal_host(entry))
        return cls(frozenset(names), tuple(networks), tuple(sockets))

    def matches(self, host: str, address: Address) -> bool:
        return host in self.names or any(address in network for network in self.networks)


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _plain(address: Address) -> Address:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4), else the address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


@lru_cache(maxsize=1)
def _local_addresses(_minute: int) -> frozenset[Address]:
    """Every address of this machine's interfaces (looked up again each minute)."""
    import psutil

    found: set[Address] = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.add(_plain(ipaddress.ip_address(entry.address.split("%", 1)[0])))
                except ValueError:
                    continue
    return frozenset(found)


def local_addresses() -> frozenset[Address]:
    return _local_addresses(int(time.monotonic() // 60))


def _is_local(address: Address) -> bool:
    return address.is_loopback or address.is_unspecified or address in local_addresses()


def _resolve(host: str, port: int) -> list[Address]:
    """The addresses `host` resolves to, in resolver order, without repeats."""
    found: list[Address] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True)
class _Protected:
    """One of retl's own servers: its addresses (None: this machine's), port and database."""

    addresses: frozenset[Address] | None
    port: int
    database: str | None
    socket_dir: str | None

    def covers(self, address: Address, port: int, database: str | None, protocol: str) -> bool:
        if port != self.port:
            return False
        if self.addresses is None:
            same_server = _is_local(address)
        else:
            same_server = address in self.addresses
        if not same_server:
            return False
        # Another database on retl's Postgres server is the workspace's business.
        return protocol != "postgres" or self.database is None or database == self.database


@lru_cache(maxsize=4)
def _protected_servers(database_url: str | None, redis_url: str | None, _minute: int) -> tuple[_Protected, ...]:
    servers: list[_Protected] = []
    if database_url:
        try:
            params = conninfo_to_dict(database_url)
        except psycopg.Error:
            params = {}
        host = str(params.get("host") or "/")
        port = int(str(params.get("port") or POSTGRES_PORT).split(",")[0])
        database = str(params.get("dbname") or params.get("user") or "") or None
        servers.append(_server(host.split(",")[0], port, database))
    if redis_url:
        parts = urlsplit(redis_url)
        if parts.scheme == "unix":
            servers.append(_Protected(None, -1, None, os.path.dirname(parts.path)))
        else:
            servers.append(_server(parts.hostname or "localhost", parts.port or REDIS_PORT, None))
    return tuple(servers)


def _server(host: str, port: int, database: str | None) -> _Protected:
    if host.startswith("/"):
        # A socket: the same server may listen on this machine's addresses too.
        return _Protected(None, port, database, os.path.normpath(host))
    try:
        addresses = frozenset(_plain(a) for a in _resolve(host, port))
    except OSError:
        addresses = frozenset()
    if not addresses or any(_is_local(a) for a in addresses):
        return _Protected(None, port, database, None)
    return _Protected(addresses, port, database, None)


def _settings() -> Any:
    from shared.settings import get_settings

    return get_settings()


def _protected() -> tuple[_Protected, ...]:
    settings = _settings()
    return _protected_servers(settings.database_url, settings.redis_url, int(time.monotonic() // 60))


@lru_cache(maxsize=8)
def _rules(text: str) -> Rules:
    return Rules.parse(text)


def allowed() -> Rules:
    return _rules(_settings().egress_allow)


def denied() -> Rules:
    return _rules(_settings().egress_deny)


def refusal(host: str, address: Address, port: int, *, protocol: str = "http",
            database: str | None = None) -> str | None:
    """Why a connection to `address`:`port` (reached as `host`) is refused, or None."""
    address = _plain(address)
    if address in METADATA_ADDRESSES or any(address in net for net in LINK_LOCAL):
        return "link-local and cloud metadata addresses are never reachable"
    if any(server.covers(address, port, database, protocol) for server in _protected()):
        return "it is reserved for retl itself"
    if allowed().matches(host, address):
        return None
    if _is_local(address) or any(address in network for network in DEFAULT_REFUSED):
        return "loopback and this machine's own addresses are closed (RETL_EGRESS_ALLOW opens them)"
    if denied().matches(host, address):
        return "RETL_EGRESS_DENY closes it"
    return None


def check_name(host: str) -> str:
    """The host in normal form; refuses cloud metadata names before anything resolves."""
    name = _normal_host(host)
    if not name:
        raise EgressRefused("the URL has no host")
    if name in METADATA_NAMES or name.endswith(".metadata.google.internal"):
        raise EgressRefused(f"{name} is refused: cloud metadata services are never reachable")
    return name


def checked_addresses(host: str, port: int, *, protocol: str = "http",
                      database: str | None = None) -> list[Address]:
    """Resolve `host` and check every address; the addresses to connect to. Raises
    EgressRefused when any address is refused, socket.gaierror when the name does not resolve."""
    name = check_name(host)
    addresses = _resolve(name, port)
    for address in addresses:
        reason = refusal(name, address, port, protocol=protocol, database=database)
        if reason is not None:
            raise EgressRefused(f"{name}:{port} is refused: {reason}")
    return addresses


def check_literal(host: str, port: int, *, protocol: str = "http",
                  database: str | None = None) -> None:
    """The checks that need no DNS (made when a config is saved): metadata names, and an IP
    literal's address."""
    name = check_name(host)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return
    reason = refusal(name, address, port, protocol=protocol, database=database)
    if reason is not None:
        raise EgressRefused(f"{name}:{port} is refused: {reason}")


# -- HTTP -----------------------------------------------------------------------------------------


def check_http_url(url: str, name: str = "url") -> None:
    """A well-formed http(s) URL whose host passes the checks that need no DNS."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConnectorError(f"config {name} is not a well-formed URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectorError(f"config {name} must be an http:// or https:// URL with a host")
    if any(ch in url for ch in "\r\n\t ") or any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ConnectorError(f"config {name} holds spaces or control characters")
    try:
        check_literal(parts.hostname, port or (443 if parts.scheme == "https" else 80))
    except EgressRefused as exc:
        raise EgressRefused(f"config {name}: {exc.message}") from None


class _CheckedConnect:
    """urllib3 connection mixin: the socket goes to an address that passed the egress checks."""

    def _new_conn(self) -> socket.socket:  # type: ignore[override]
        try:
            addresses = checked_addresses(self._dns_host, self.port)  # type: ignore[attr-defined]
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[attr-defined, arg-type]
        failure: OSError | None = None
        for address in addresses:
            try:
                return urllib3_connection.create_connection(
                    (str(address), self.port), self.timeout,  # type: ignore[attr-defined]
                    source_address=self.source_address,  # type: ignore[attr-defined]
                    socket_options=self.socket_options,  # type: ignore[attr-defined]
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from exc  # type: ignore[attr-defined]
            except OSError as exc:
                failure = exc
        raise NewConnectionError(self, f"Failed to establish a new connection: {failure}")  # type: ignore[arg-type]


class CheckedHTTPConnection(_CheckedConnect, HTTPConnection):
    pass


class CheckedHTTPSConnection(_CheckedConnect, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = CheckedHTTPSConnection


class CheckedAdapter(HTTPAdapter):
    """requests adapter whose every connection (redirects included) is egress-checked."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class CheckedSession(requests.Session):
    """A session for a workspace's HTTP calls: no proxies, `.netrc` or other ambient settings
    of the worker, every connection egress-checked, and redirects followed only within the
    origin they started from, so configured headers never travel to another host."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        adapter = CheckedAdapter()
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target is None:
            return None
        absolute = requests.compat.urljoin(resp.url, target)
        return target if _origin(absolute) == _origin(resp.url) else None


def http_session() -> requests.Session:
    return CheckedSession()


def unreachable(url: str, exc: BaseException) -> str:
    """The error text for a failed connection: the origin only, never why it failed, so an
    answer does not tell a closed port from a filtered or a foreign one. The operator's log
    keeps the reason."""
    if isinstance(exc, EgressRefused):
        return exc.message
    cause = exc
    while cause.__context__ is not None and not isinstance(cause, EgressRefused):
        cause = cause.__context__
    if isinstance(cause, EgressRefused):
        return cause.message
    origin = display_origin(url)
    log.info("cannot reach %s: %s", origin, exc)
    return f"cannot reach {origin}"


def display_origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured URL"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"


# -- Postgres -------------------------------------------------------------------------------------

# Parameters a workspace may set in a Postgres URL; the others name files on the worker
# (service, passfile, sslkey, ...) or change how retl connects (hostaddr).
POSTGRES_PARAMETERS = frozenset({
    "host", "port", "dbname", "user", "password", "sslmode", "sslnegotiation", "sslcompression",
    "sslsni", "channel_binding", "application_name", "fallback_application_name",
    "options", "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "target_session_attrs", "client_encoding",
    "min_protocol_version", "max_protocol_version",
})
# A password file no one can create: libpq finds nothing there and does not read ~/.pgpass.
NO_FILE = "/proc/self/retl-none"


@dataclass(frozen=True)
class PostgresTarget:
    """A workspace's Postgres URL, checked: the one host, port and database it names."""

    params: dict[str, str]
    host: str
    port: int
    database: str


def postgres_target(url: str) -> PostgresTarget:
    """Parse and check a workspace's Postgres URL (or key=value connection string) without
    connecting or resolving."""
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except psycopg.Error:
        # libpq quotes the offending part of a malformed URL, which may be the password.
        raise ConnectorError("config url is not a valid Postgres connection URL") from None
    refused = sorted(set(params) - POSTGRES_PARAMETERS)
    if refused:
        raise ConnectorError(
            f"config url may not set {', '.join(refused)}: parameters that name files or "
            "addresses on retl's machines are refused"
        )
    host = params.get("host", "")
    if not host or host.startswith(("/", "@")):
        if not host or not _socket_allowed(host):
            raise ConnectorError("config url must name a host: unix sockets are refused")
    if "," in host or "," in params.get("port", ""):
        raise ConnectorError("config url must name one host")
    user = params.get("user", "")
    if not user:
        raise ConnectorError("config url must name a user")
    try:
        port = int(params.get("port") or POSTGRES_PORT)
    except ValueError:
        raise ConnectorError("config url has a port that is not a number") from None
    database = params.get("dbname") or user
    if not host.startswith("/"):
        try:
            check_literal(host, port, protocol="postgres", database=database)
        except EgressRefused as exc:
            raise EgressRefused(f"config url: {exc.message}") from None
    return PostgresTarget(params, host, port, database)


def _socket_allowed(host: str) -> bool:
    return os.path.normpath(host) in allowed().socket_dirs


def _socket_refusal(target: PostgresTarget) -> str | None:
    directory = os.path.normpath(target.host)
    for server in _protected():
        if server.socket_dir == directory and server.port == target.port and (
            server.database is None or server.database == target.database
        ):
            return "it is reserved for retl itself"
    return None


def connect_postgres(url: str, **options: Any) -> psycopg.Connection[Any]:
    """A connection to a workspace's Postgres: to the checked address, with the URL's own
    credentials only. Raises ConnectorError (EgressRefused) before connecting when refused."""
    target = postgres_target(url)
    params: dict[str, Any] = {
        **target.params,
        "port": str(target.port),
        "dbname": target.database,
        "password": target.params.get("password", ""),
        "passfile": NO_FILE,
        "gssencmode": "disable",
        # Set, even empty, so libpq takes nothing from the worker's PGOPTIONS / PGHOSTADDR.
        "options": target.params.get("options", ""),
        "hostaddr": "",
    }
    if psycopg.pq.version() >= 160000:  # older libpq knows neither option
        # No client certificate of the worker's, no sign-in with the worker's Kerberos ticket.
        params["sslcertmode"] = "disable"
        params["require_auth"] = "!gss,!sspi"
    if target.host.startswith("/"):
        reason = _socket_refusal(target)
        if reason is not None:
            raise EgressRefused(f"{target.host} is refused: {reason}")
    else:
        try:
            addresses = checked_addresses(
                target.host, target.port, protocol="postgres", database=target.database
            )
        except socket.gaierror:
            raise ConnectorError(f"cannot resolve the host {target.host}") from None
        params["host"] = ",".join([target.host] * len(addresses))
        params["hostaddr"] = ",".join(str(a) for a in addresses)
    return psycopg.connect(**{**params, **options})
