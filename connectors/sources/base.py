"""The source contract: a read-only query streamed in chunks, with hashes computed in place."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from connectors.destinations.base import ConfigField
from connectors.errors import ConnectorError

log = logging.getLogger(__name__)

# After its deadline (or a cancel), a query still running is cancelled again this often: a
# cancel that reaches the server between two fetches finds nothing to cancel.
CANCEL_AGAIN_S = 1.0


class QueryCancelled(ConnectorError):
    """The source query was stopped because its run was cancelled."""


class QueryWatch:
    """Stops one source query from retl's side, whatever the query itself set: `cancel` (the
    driver's cancel of the running statement) is called when `timeout_s` has passed, or at
    once on `interrupt`, and again every CANCEL_AGAIN_S until the query is closed. A thread
    of its own does it, so a query blocked in the driver is stopped too. The reader calls
    `check` between fetches, and `error` to word a failure that a cancel caused."""

    def __init__(self, timeout_s: float, cancel: Callable[[], None]) -> None:
        self.timeout_s = timeout_s
        self.expired = False
        self.interrupted = False
        self._cancel = cancel
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="source-deadline", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        self._wake.wait(self.timeout_s)
        if self._done.is_set():
            return
        self.expired = not self.interrupted
        while not self._done.is_set():
            try:
                self._cancel()
            except Exception as exc:  # the connection is closing: the next check says why
                log.debug("cancelling a source query failed: %s", exc)
            self._done.wait(CANCEL_AGAIN_S)

    def interrupt(self) -> None:
        self.interrupted = True
        self._wake.set()

    def close(self) -> None:
        self._done.set()
        self._wake.set()

    def error(self) -> ConnectorError | None:
        """Why the query was stopped, if it was."""
        if self.interrupted:
            return QueryCancelled("the source query was cancelled with its run")
        if self.expired:
            return ConnectorError(
                f"the source query ran past its time limit of {self.timeout_s:g} s"
                " (RETL_SOURCE_STATEMENT_TIMEOUT)", code="TIMEOUT",
            )
        return None

    def check(self) -> None:
        error = self.error()
        if error is not None:
            raise error


class Source(ABC):
    """What the sync engine asks of a source.

    Required: `columns`, `stream` and `stream_key_hashes`. Optional, each announced so the engine
    can fall back when a source lacks it:

    - `hashes_take_salt`: `stream_key_hashes` (and `stream_rows_with_hashes`) accept the keyword
      `salt` (the mapping fingerprint) and hash it in, so hashes compare with the snapshot as
      they are. Without it the engine salts the staged hashes itself.
    - `fast_hashes`: `stream_key_hashes` and `stream_rows_with_hashes` accept `fast=True` and
      then hash the row's typed values with a cheaper 64-bit hash (a different form from the
      default md5: the engine uses it only where the snapshot does not hold md5 hashes).
    - `stream_rows_for_keys`: the full rows of only the keys asked for, filtered in the source.
      Without it (`filters_keys` False) the engine filters the plain `stream`.
    - `stream_rows_with_hashes` (`streams_rows_with_hashes` True): key, salted hash and the rows
      in one read, for runs that send every row (first run, full refresh). Without it those
      runs read the source twice, as incremental runs do.
    - `reads_json_forms`: `stream_rows_for_keys` and `stream_rows_with_hashes` accept the keyword
      `json_forms=True` and then give each value as `connectors.json_forms.json_value` would
      make it (text for dates and times, numbers for decimals), for records that go to a JSON
      destination unchanged. Without it the destination's JSON form is applied while mapping.
    - `stream_key_hash_copy` (`streams_key_hash_copy` True): what `stream_key_hashes` gives, as
      blocks of Postgres COPY text (bytes; each row a line: the key escaped, a null key as `\\N`,
      a tab, the hash), made by the source: the engine stages each block with one write,
      without a Python call per row.
    - `keys_unique` (`proves_unique_keys` True): whether the result certainly holds no null and
      no repeated key, found before its rows are read where that is cheap (a columnar engine
      counts them; a database's catalog can prove it). True spares the engine its own search
      among the staged keys; False only means it searches.
    """

    type: ClassVar[str]
    label: ClassVar[str]
    config_fields: ClassVar[tuple[ConfigField, ...]] = ()
    hashes_take_salt: ClassVar[bool] = False
    fast_hashes: ClassVar[bool] = False
    streams_rows_with_hashes: ClassVar[bool] = False
    reads_json_forms: ClassVar[bool] = False
    proves_unique_keys: ClassVar[bool] = False
    streams_key_hash_copy: ClassVar[bool] = False

    def __init__(
        self, config: dict[str, Any], *, statement_timeout_s: float = 1800,
        allowed_directories: tuple[str, ...] = (), allow_privileged: bool = False,
        memory_limit: str | None = None, threads: int | None = None,
    ) -> None:
        """`statement_timeout_s`: the wall-clock limit of every query, enforced by `watch`.
        `allowed_directories`: for sources that read local files, the only folders they may
        read (the operator's setting, never the workspace's config); empty means none.
        `allow_privileged`: connect even as a role that can do more than read (a single-tenant
        deployment's choice). `memory_limit` and `threads`: for sources that run queries in
        the worker's own process, what one query may use."""
        self.config = config
        self.statement_timeout_s = statement_timeout_s
        self.allowed_directories = allowed_directories
        self.allow_privileged = allow_privileged
        self.memory_limit = memory_limit
        self.threads = threads
        self._watches: set[QueryWatch] = set()
        self._watches_lock = threading.Lock()
        self._interrupted = False

    @contextmanager
    def watch(self, cancel: Callable[[], None]) -> Iterator[QueryWatch]:
        """A QueryWatch over one query, stopped with the others by `interrupt`."""
        if self._interrupted:
            raise QueryCancelled("the source query was cancelled with its run")
        watch = QueryWatch(self.statement_timeout_s, cancel)
        with self._watches_lock:
            self._watches.add(watch)
        try:
            yield watch
        finally:
            watch.close()
            with self._watches_lock:
                self._watches.discard(watch)

    def interrupt(self) -> None:
        """Stop every query of this source now, from any thread (a cancelled run); later
        queries are refused."""
        self._interrupted = True
        with self._watches_lock:
            watches = list(self._watches)
        for watch in watches:
            watch.interrupt()

    def check_least_privilege(self) -> None:  # noqa: B027 - optional; most sources have no roles
        """Raise PrivilegedRoleError when the configured credentials can do more than read
        (unless `allow_privileged`); ConnectorError when the source cannot be reached."""

    @abstractmethod
    def test(self) -> None:
        """Connect and run a trivial query; raise ConnectorError with the reason."""

    @abstractmethod
    def columns(self, query: str) -> list[str]:
        """The column names `query` returns, without reading its rows."""

    @abstractmethod
    def stream(self, query: str, chunk_size: int = 10_000) -> Iterator[list[tuple]]:
        """The rows of `query`, in chunks, read-only, never all in memory."""

    @abstractmethod
    def stream_key_hashes(
        self, query: str, key_column: str | None, columns: list[str], chunk_size: int = 50_000,
        **options: Any,
    ) -> Iterator[list[tuple[Any, str]]]:
        """(key as text, md5 hex of the row's content) per row of `query`, computed in the
        source. The content hash covers `columns` in order, then `salt` when the source
        `hashes_take_salt` (passed as a keyword); its exact form is the source's own, but it is
        stable for the same values across runs of the same source. Without a key column the
        unsalted hash of the row is its key."""

    def stream_rows_for_keys(
        self, query: str, key_column: str | None, columns: list[str], keys: list[str] | None,
        chunk_size: int = 10_000,
    ) -> Iterator[list[tuple]]:
        """Rows of `query` as (key text, *columns), only those whose key is in `keys` (all when
        None), in the source's order. Sources that set `filters_keys` run the filter in place."""
        raise NotImplementedError(f"the {self.type} source cannot filter rows by key")

    @property
    def filters_keys(self) -> bool:
        """Whether `stream_rows_for_keys` is implemented by this source."""
        method = getattr(type(self), "stream_rows_for_keys", None)
        return method is not None and method is not Source.stream_rows_for_keys

    def stream_rows_with_hashes(
        self, query: str, key_column: str | None, columns: list[str], chunk_size: int = 10_000,
        *, salt: str = "",
    ) -> Iterator[list[tuple]]:
        """Rows of `query` as (key text, content hash, *columns) in one read: the key and the
        hash exactly as `stream_key_hashes(..., salt=salt)` computes them. Sources that set
        `streams_rows_with_hashes` implement it."""
        raise NotImplementedError(f"the {self.type} source cannot stream rows with hashes")

    def close(self) -> None:  # noqa: B027 - optional hook; the default holds nothing
        """Release connections."""

    @classmethod
    def secret_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in cls.config_fields if f.secret)
