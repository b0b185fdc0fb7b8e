"""The source contract: a read-only query streamed in chunks, with hashes computed in place."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from connectors.destinations.base import ConfigField


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
    """

    type: ClassVar[str]
    label: ClassVar[str]
    config_fields: ClassVar[tuple[ConfigField, ...]] = ()
    hashes_take_salt: ClassVar[bool] = False
    fast_hashes: ClassVar[bool] = False
    streams_rows_with_hashes: ClassVar[bool] = False
    reads_json_forms: ClassVar[bool] = False

    def __init__(
        self, config: dict[str, Any], *, statement_timeout_s: float = 1800,
        allowed_directories: tuple[str, ...] = (),
    ) -> None:
        """`allowed_directories`: for sources that read local files, the only folders they may
        read (the operator's setting, never the workspace's config); empty means none."""
        self.config = config
        self.statement_timeout_s = statement_timeout_s
        self.allowed_directories = allowed_directories

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
