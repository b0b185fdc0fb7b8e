"""The source contract: a read-only query streamed in chunks, with hashes computed in place."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from connectors.destinations.base import ConfigField


class Source(ABC):
    type: ClassVar[str]
    label: ClassVar[str]
    config_fields: ClassVar[tuple[ConfigField, ...]] = ()

    def __init__(self, config: dict[str, Any], *, statement_timeout_s: float = 1800) -> None:
        self.config = config
        self.statement_timeout_s = statement_timeout_s

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
        self, query: str, key_column: str, columns: list[str], chunk_size: int = 50_000
    ) -> Iterator[list[tuple[Any, str]]]:
        """(key, md5 hex of the row's content) per row of `query`, computed in the source.
        The content hash covers `columns` in order; its exact form is the source's own, but it
        is stable for the same values across runs of the same source."""

    def close(self) -> None:  # noqa: B027 - optional hook; the default holds nothing
        """Release connections."""

    @classmethod
    def secret_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in cls.config_fields if f.secret)
