"""Postgres source: the sync's query runs in a read-only transaction, as a role that can only
read, streamed through a server-side cursor and cancelled from retl's side at its deadline;
key text and content hashes are computed by Postgres."""

from __future__ import annotations

import hashlib
import logging
import queue
import select
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
from psycopg import pq, sql
from psycopg.adapt import Loader
from psycopg.pq import Format

from connectors import egress
from connectors.casting import OutOfRangeValue
from connectors.destinations.base import ConfigField
from connectors.errors import AuthError, ConnectorError, PrivilegedRoleError
from connectors.sources.base import QueryWatch, Source

log = logging.getLogger(__name__)

# Statements a sync query may not be; named in the error so the user sees why it failed.
_WRITE_VERBS = frozenset(
    {"insert", "update", "delete", "merge", "create", "drop", "alter", "truncate", "grant",
     "revoke", "copy", "vacuum", "call", "do", "refresh", "cluster", "reindex", "comment",
     "lock", "set", "reset", "begin", "commit", "rollback"}
)


# Roles that reach past the database's tables: the server's files, its programs, other
# sessions. A source role holding one (or a superuser) could do all that from a SELECT.
PRIVILEGED_ROLES = (
    "pg_execute_server_program", "pg_read_server_files", "pg_signal_backend",
    "pg_write_server_files",
)


def _lenient(connection: psycopg.Connection, type_name: str) -> None:
    """Load `type_name` values as the connection would, but a value Python cannot hold
    (`infinity`, a year past 9999) as an OutOfRangeValue: it fails its record, not the read."""
    oid = connection.adapters.types[type_name].oid
    strict = connection.adapters.get_loader(oid, Format.TEXT)

    class LenientLoader(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._load = strict(oid, context).load

        def load(self, data: Any) -> Any:
            try:
                return self._load(data)
            except psycopg.DataError:
                return OutOfRangeValue(bytes(data).decode())

    connection.adapters.register_loader(oid, LenientLoader)


def _end(conn: psycopg.Connection) -> None:
    """Roll back and close; a late cancel from a query's watch may fail the rollback, and the
    server rolls back a closed session's transaction anyway."""
    try:
        if not conn.closed:
            conn.rollback()
    except psycopg.Error:
        pass
    finally:
        conn.close()


def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    """The next result of the statement sent, waiting for it without holding the GIL."""
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            return pgconn.get_result()
        select.select([pgconn.socket], [], [], 1.0)


def _copy_out(
    pgconn: pq.abc.PGconn, statement: bytes, chunk_size: int, watch: QueryWatch
) -> Iterator[bytes]:
    """Run `COPY … TO STDOUT` and give its rows in blocks of up to `chunk_size` lines, read
    from libpq directly: psycopg's copy object costs about a microsecond of Python a row, as
    much again as the rest of this loop, and a million rows are read here for every plan."""
    pgconn.send_query(statement)
    started = _next_result(pgconn)
    if started is None or started.status != pq.ExecStatus.COPY_OUT:
        raise psycopg.errors.error_from_result(started) if started else psycopg.OperationalError(
            "the source sent no result")
    read = pgconn.get_copy_data
    block: list[bytes] = []
    while True:
        size, row = read(1)
        if size > 0:
            block.append(row)
            if len(block) >= chunk_size:
                watch.check()
                yield b"".join(block)
                block = []
        elif size == 0:  # nothing arrived yet
            select.select([pgconn.socket], [], [], 1.0)
            pgconn.consume_input()
        elif size == -1:  # the COPY is done
            break
        else:
            raise psycopg.OperationalError(pgconn.get_error_message())
    ended = _next_result(pgconn)
    after = _next_result(pgconn)  # libpq's results of a statement end with None
    while after is not None:
        after = _next_result(pgconn)
    if ended is None or ended.status != pq.ExecStatus.COMMAND_OK:
        raise psycopg.errors.error_from_result(ended) if ended else psycopg.OperationalError(
            "the source ended the COPY without a result")
    if block:
        yield b"".join(block)


def _exported_snapshot(conn: psycopg.Connection) -> str | None:
    """The snapshot of the connection's transaction, for other sessions to read in; None when
    the server refuses to export it. Called before any row is read: after a refusal the
    transaction is rolled back, and the next statement begins the snapshot the read sees (the
    deadline is then kept by retl's side alone)."""
    try:
        return conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
    except psycopg.Error as exc:
        log.info("the source does not export its snapshot, so one reader reads: %s", exc)
        conn.rollback()
        return None


@dataclass(frozen=True)
class _KeyPages:
    """The page statements of a read in key order, by whether they take a key to read after
    and a key to read up to (`%s` parameters, in that order), and the keys at which the read
    divides between readers (none: one reader)."""

    statements: dict[tuple[bool, bool], sql.Composable]
    dividing_keys: list[Any]

    def statement(self, *, after: bool, until: bool) -> sql.Composable:
        return self.statements[after, until]


def _read_pages(
    conn: psycopg.Connection, pages: _KeyPages, lower: Any, upper: Any, page_rows: int,
    watch: QueryWatch,
) -> Iterator[bytes]:
    """The blocks of one walk `_pages_in_key_order` plans: the keys after `lower` up to and
    with `upper` (None: no bound), a page after the last key read until a page comes back
    short."""
    until = () if upper is None else (upper,)
    after = lower
    with conn.cursor(binary=True) as cur:
        while True:
            statement = pages.statement(after=after is not None, until=upper is not None)
            params = ((after,) if after is not None else ()) + until
            block, after, rows = cur.execute(statement, params, prepare=True).fetchone()
            if not rows:
                return
            yield block
            if rows < page_rows:
                return
            watch.check()


_DONE = object()


def _read_ranges(walks: list[Iterator[bytes]], cancel: Callable[[], None]) -> Iterator[bytes]:
    """The blocks of several walks (`_read_pages` on connections of their own), each walked by
    a thread of its own, in the order they arrive. A few blocks wait at most; a walk's error is
    raised here. Closed early, the walks stop: `cancel` stops the pages being read."""
    arrived: queue.Queue[Any] = queue.Queue()
    room = threading.Semaphore(2 * len(walks))  # blocks read ahead of the consumer
    stop = threading.Event()

    def walk(blocks: Iterator[bytes]) -> None:
        try:
            for block in blocks:
                while not room.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                arrived.put(block)
        except BaseException as exc:  # raised by the consumer below
            arrived.put(exc)
        else:
            arrived.put(_DONE)
        finally:
            blocks.close()

    threads = [threading.Thread(target=walk, args=(blocks,), name="source-pages", daemon=True)
               for blocks in walks]
    for thread in threads:
        thread.start()
    try:
        running = len(threads)
        while running:
            item = arrived.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                room.release()
                yield item
    finally:
        stop.set()
        if any(thread.is_alive() for thread in threads):
            cancel()
        for thread in threads:
            thread.join()


def _strip(query: str) -> str:
    return query.strip().rstrip(";").strip()


def _privileged_refusal(role: str, superuser: bool, held: list[str]) -> PrivilegedRoleError:
    what = "is a superuser" if superuser else f"holds {', '.join(held)}"
    return PrivilegedRoleError(
        f"the source's role {role} {what}, which lets a query read or write the server's files,"
        " run programs or stop other sessions; connect as a role that can only read the tables"
        " the syncs need: CREATE ROLE retl_reader LOGIN PASSWORD '...'; GRANT USAGE ON SCHEMA"
        " analytics TO retl_reader; GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO"
        " retl_reader (or set RETL_ALLOW_PRIVILEGED_SOURCES=1 in a single-tenant deployment)"
    )


def _first_word(query: str) -> str:
    words = _strip(query).split(None, 1)
    return words[0].lower() if words else ""


def _failure(query: str, exc: psycopg.Error) -> ConnectorError:
    """The error a failing source query becomes, worded for the person who wrote the query."""
    detail = (getattr(exc, "diag", None) and exc.diag.message_primary) or str(exc).strip()
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction) or "data-modifying" in detail:
        return ConnectorError(f"the source query tried to write ({detail}); sources are read-only")
    if _first_word(query) in _WRITE_VERBS:
        return ConnectorError(
            f"the source query must be a read-only SELECT; {_first_word(query).upper()}"
            " statements are not run"
        )
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return ConnectorError(f"the source query was cancelled: {detail}", code="TIMEOUT")
    return ConnectorError(f"the source query failed: {detail}")


# Types whose values Postgres hashes by value (the same functions hash partitioning relies on,
# kept stable across versions): bool, bytea, "char", name, int8, int2, int4, text, oid, inet,
# float4, float8, macaddr, bpchar, varchar, date, time, timestamp, timestamptz, interval,
# timetz, numeric, uuid, jsonb. Columns of other types are hashed as their text.
_VALUE_HASHED_TYPES = frozenset(
    {16, 17, 18, 19, 20, 21, 23, 25, 26, 869, 700, 701, 829, 1042, 1043, 1082, 1083, 1114,
     1184, 1186, 1266, 1700, 2950, 3802}
)


# Key column types (by oid) whose text form casts back to the same value: int8, int2, int4,
# text, varchar, uuid.
_KEY_TYPES = {20: "int8", 21: "int2", 23: "int4", 25: "text", 1043: "varchar", 2950: "uuid"}


# Plan nodes that pass on each row of their one input at most once.
_PASS_THROUGH = frozenset(
    {"Result", "Limit", "Sort", "Incremental Sort", "Gather", "Gather Merge", "Materialize"}
)
# Plan nodes that read each row of one table at most once.
_TABLE_SCANS = frozenset(
    {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Tid Scan", "Tid Range Scan"}
)


def _only_table_scanned(node: dict[str, Any]) -> tuple[str, str] | None:
    """(schema, table) when an `EXPLAIN (FORMAT JSON, VERBOSE)` plan is one scan of one table
    under nodes that pass its rows on at most once each, so the result holds each of the
    table's rows at most once; None for any other plan (joins, unions, set-returning
    functions, partitions, DISTINCT, ...)."""
    while node["Node Type"] in _PASS_THROUGH:
        # InitPlans and SubPlans (a scalar subquery) are children too; they add no rows.
        inputs = [n for n in node.get("Plans", []) if n.get("Parent Relationship") == "Outer"]
        if len(inputs) != 1:
            return None
        node = inputs[0]
    if node["Node Type"] not in _TABLE_SCANS or "Relation Name" not in node:
        return None
    return node.get("Schema", ""), node["Relation Name"]


def _walks_index_in_order(node: dict[str, Any]) -> bool:
    """Whether an `EXPLAIN (FORMAT JSON)` plan of a page is its aggregate over a LIMIT over one
    forward walk of an index, and nothing else: the query was merged into the page's, so the
    next page's `key > last` is a condition of that walk and each page costs only its rows.
    (A query that keeps its own LIMIT, DISTINCT, window, ... would be read from its start for
    every page, behind a Subquery Scan this refuses.)"""
    for expected in ("Aggregate", "Limit"):
        inputs = node.get("Plans", [])
        if node["Node Type"] != expected or len(inputs) != 1:
            return False
        node = inputs[0]
    return (node["Node Type"] in ("Index Scan", "Index Only Scan") and not node.get("Plans")
            and node.get("Scan Direction") == "Forward")


def _seed(salt: str) -> int:
    """The salt as the 64-bit seed of Postgres's extended hash functions."""
    return int.from_bytes(hashlib.md5(salt.encode()).digest()[:8], "big", signed=True)


class PostgresSource(Source):
    type: ClassVar[str] = "postgres"
    label: ClassVar[str] = "PostgreSQL"
    # stream_key_hashes takes `salt` (the mapping fingerprint), so the engine compares the
    # source's hashes with the snapshot as they are.
    hashes_take_salt: ClassVar[bool] = True
    streams_rows_with_hashes: ClassVar[bool] = True
    # ... and `fast=True`: a 64-bit hash of the typed values (hash_record_extended) instead of
    # md5 over the row's text, about a third of the source's work.
    fast_hashes: ClassVar[bool] = True
    streams_key_hash_copy: ClassVar[bool] = True
    # keys_unique: proved from the catalog, when the query reads one table by its unique key.
    proves_unique_keys: ClassVar[bool] = True
    # A read in key order of a table of `readers_from_rows` rows or more is divided between
    # `page_readers` connections, each walking its own range of keys in the same snapshot:
    # the source's work is most of the stage's time, and one connection is one process.
    page_readers: ClassVar[int] = 2
    readers_from_rows: ClassVar[int] = 200_000
    config_fields: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField(
            "url", required=True, secret=True,
            description="postgresql://user:password@host:5432/database",
        ),
    )

    def __init__(self, config: dict[str, Any], **options: Any) -> None:
        super().__init__(config, **options)
        self._streaming: set[psycopg.Connection] = set()
        # Column name → type oid of each query `columns` has described.
        self._column_types: dict[str, dict[str, int]] = {}
        self.url = str(config.get("url") or "")
        if not self.url.startswith(("postgres://", "postgresql://")):
            raise ConnectorError("config url must be a postgresql:// URL")
        target = egress.postgres_target(self.url)
        self._where = f"{target.host}:{target.port}"

    def _connect(
        self, *, repeatable: bool = False, snapshot: str | None = None
    ) -> psycopg.Connection:
        """A connection whose statements run in one read-only transaction; `repeatable`: all
        of them see the same snapshot of the database (REPEATABLE READ); `snapshot`: that of
        another transaction, which exported it (pg_export_snapshot)."""
        try:
            conn = egress.connect_postgres(
                self.url, connect_timeout=10, application_name="retl-source"
            )
        except psycopg.ProgrammingError:
            # libpq quotes the offending part of a malformed URL, which may be the password.
            raise ConnectorError("config url is not a valid Postgres connection URL") from None
        except psycopg.OperationalError as exc:
            message = str(exc).strip()
            if "password authentication failed" in message or "role" in message:
                raise AuthError(f"the source refused the credentials: {message}") from None
            log.info("cannot connect to a source: %s", message)
            raise ConnectorError(f"cannot reach the source at {self._where}") from None
        for type_name in ("date", "timestamp", "timestamptz"):
            _lenient(conn, type_name)
        # Every statement of this connection runs inside one read-only transaction. Its
        # statement timeout is the server's own guard; the query may lift it (set_config), so
        # `watch` enforces the deadline from this side. The role's privileges are read in the
        # same round trip.
        conn.read_only = True
        if repeatable or snapshot is not None:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            if snapshot is not None:  # the transaction's first statement, or refused
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            _, role, superuser, held = conn.execute(
                "SELECT set_config('statement_timeout', %s, true), current_user::text,"
                " current_setting('is_superuser') = 'on',"
                " array(SELECT rolname::text FROM pg_roles WHERE (rolsuper OR rolname = ANY(%s))"
                "  AND rolname <> current_user AND pg_has_role(current_user, oid, 'MEMBER')"
                "  ORDER BY 1)",
                (str(int(self.statement_timeout_s * 1000)), list(PRIVILEGED_ROLES)),
            ).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise ConnectorError(f"cannot use the source: {str(exc).strip()}") from None
        if (superuser or held) and not self.allow_privileged:
            conn.close()
            raise _privileged_refusal(role, superuser, held)
        return conn

    def check_least_privilege(self) -> None:
        self._connect().close()

    def _run(self, query: str, statement: sql.Composable, params: Any = (),
             chunk_size: int = 10_000) -> Iterator[list[tuple]]:
        """Stream `statement` (which wraps the user's `query`) in chunks from a named cursor,
        cancelled at the deadline or when the source is interrupted."""
        conn = self._connect()
        self._streaming.add(conn)
        try:
            with self.watch(conn.cancel_safe) as watch, conn.cursor(name="retl_source") as cur:
                cur.itersize = chunk_size
                try:
                    cur.execute(statement, params)
                    while True:
                        watch.check()
                        chunk = cur.fetchmany(chunk_size)
                        if not chunk:
                            break
                        yield chunk
                except psycopg.Error as exc:
                    raise (watch.error() or _failure(query, exc)) from None
        finally:
            self._streaming.discard(conn)
            _end(conn)

    def close(self) -> None:
        """End every stream still open: a reader that stopped early (an error, a cancelled run)
        must not leave a transaction holding locks in the warehouse."""
        for conn in list(self._streaming):
            self._streaming.discard(conn)
            conn.close()

    @staticmethod
    def _wrapped(query: str) -> sql.Composable:
        """The user's query as a subquery, its text kept as it is: every statement is run with
        parameters (an empty tuple when it has none), so psycopg reads `%%` as a literal `%`
        and `%` in the query (LIKE '%@example.com') is never taken for a placeholder."""
        return sql.SQL("(\n{}\n) AS q").format(sql.SQL(_strip(query).replace("%", "%%")))

    def test(self) -> None:
        conn = self._connect()
        try:
            with self.watch(conn.cancel_safe) as watch:
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error as exc:
                    raise (watch.error() or _failure("SELECT 1", exc)) from None
        finally:
            conn.close()

    def columns(self, query: str) -> list[str]:
        conn = self._connect()
        try:
            with self.watch(conn.cancel_safe) as watch:
                try:
                    described = self._described(conn, query).description or []
                    self._column_types[query] = {c.name: c.type_code for c in described}
                    return [column.name for column in described]
                except psycopg.Error as exc:
                    raise (watch.error() or _failure(query, exc)) from None
        finally:
            _end(conn)

    def keys_unique(self, query: str, key_column: str) -> bool:
        """Whether the catalog proves that no row of the result has a null key or repeats
        another's: the key column is a column of the only table the query's plan scans, each
        of whose rows the plan passes on at most once, and that column is NOT NULL with a
        unique index of its own (a primary key, say). Its type is one whose text tells values
        apart (integers, text, uuid). Planned, never run."""
        conn = self._connect()
        try:
            with self.watch(conn.cancel_safe) as watch:
                try:
                    return self._catalog_proves_unique(conn, query, key_column)
                except psycopg.Error as exc:
                    raise (watch.error() or _failure(query, exc)) from None
        finally:
            _end(conn)

    def _catalog_proves_unique(
        self, conn: psycopg.Connection, query: str, key_column: str
    ) -> bool:
        return self._unique_key_column(conn, query, key_column) is not None

    def _unique_key_column(
        self, conn: psycopg.Connection, query: str, key_column: str
    ) -> tuple[int, int] | None:
        """(table oid, column number) of the key column when the catalog proves its values
        unique and never null (see keys_unique); None otherwise."""
        described = self._described(conn, query)
        names = [column.name for column in described.description or []]
        if names.count(key_column) != 1:
            return None
        position = names.index(key_column)
        result = described.pgresult
        if result is None or described.description[position].type_code not in _KEY_TYPES:
            return None
        # The table and column the key is a plain reference to (0: an expression).
        table, column = result.ftable(position), result.ftablecol(position)
        if not table or not column:
            return None
        plan = conn.execute(
            sql.SQL("EXPLAIN (FORMAT JSON, VERBOSE) SELECT * FROM {}").format(
                self._wrapped(query)
            ), (), prepare=True,
        ).fetchone()[0]
        scanned = _only_table_scanned(plan[0]["Plan"])
        if scanned is None:
            return None
        proved = conn.execute(
            "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) = %s::oid AND EXISTS ("
            " SELECT 1 FROM pg_index i JOIN pg_attribute a"
            "  ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " WHERE i.indrelid = %s::oid AND i.indisunique AND i.indisvalid"
            "  AND i.indnkeyatts = 1 AND i.indkey[0] = %s AND i.indpred IS NULL"
            "  AND i.indexprs IS NULL AND a.attnotnull)",
            (scanned[0], scanned[1], table, table, column),
        ).fetchone()
        return (table, column) if proved[0] else None

    def _described(self, conn: psycopg.Connection, query: str) -> psycopg.Cursor:
        """The query's columns, described without reading a row (LIMIT 0 stops the executor
        first). prepare=True sends one statement by the extended protocol: a query smuggling
        in "; COMMIT; DROP …" is refused instead of leaving the read-only transaction."""
        return conn.execute(
            sql.SQL("SELECT * FROM {} LIMIT 0").format(self._wrapped(query)), (), prepare=True
        )

    def stream(self, query: str, chunk_size: int = 10_000) -> Iterator[list[tuple]]:
        statement = sql.SQL("SELECT * FROM {}").format(self._wrapped(query))
        yield from self._run(query, statement, chunk_size=chunk_size)

    def stream_key_hashes(
        self, query: str, key_column: str | None, columns: list[str], chunk_size: int = 50_000,
        *, salt: str = "", fast: bool = False,
    ) -> Iterator[list[tuple[Any, str]]]:
        """(key as text, md5 of the row's `columns` followed by `salt`, or with `fast` their
        typed 64-bit hash seeded by `salt`). Without a key column the unsalted md5 is the key."""
        statement = sql.SQL("SELECT {}, {} FROM {}").format(
            self._key_expression(key_column, columns),
            self._content_hash(query, columns, salt, fast), self._wrapped(query),
        )
        yield from self._run(query, statement, chunk_size=chunk_size)

    def stream_key_hash_copy(
        self, query: str, key_column: str | None, columns: list[str], chunk_size: int = 50_000,
        *, salt: str = "", fast: bool = False,
    ) -> Iterator[bytes]:
        """stream_key_hashes as blocks of COPY text of up to `chunk_size` rows (see Source).

        When the catalog proves the keys unique and the table's unique index on the key can be
        walked in order, each block is one page of keys after the last page's, its text made
        and joined by Postgres (`_pages_in_key_order`): the worker handles a value per page.
        Otherwise Postgres's own `COPY … TO STDOUT` writes the rows, which stream without a
        cursor's round trip per chunk but reach the worker one by one (about a microsecond of
        its CPU each). Either way in one snapshot (REPEATABLE READ)."""
        key, content_hash = (
            self._key_expression(key_column, columns), self._content_hash(query, columns, salt, fast)
        )
        select = sql.SQL("SELECT {}, {} FROM {}").format(key, content_hash, self._wrapped(query))
        # COPY takes no parameters, so its text keeps the query's `%` as they are.
        copied = sql.SQL("COPY (SELECT {}, {} FROM {}) TO STDOUT").format(
            key, content_hash, sql.SQL("(\n{}\n) AS q").format(sql.SQL(_strip(query)))
        )
        conn = self._connect(repeatable=True)
        self._streaming.add(conn)
        conns = [conn]  # and the other readers' of a divided read

        def cancel() -> None:
            for each in list(conns):
                each.cancel_safe()

        try:
            with self.watch(cancel) as watch:
                try:
                    # COPY is sent as a simple query, which would run a second statement
                    # smuggled into the query's text: the same SELECT is prepared first, which
                    # the server refuses unless it is exactly one statement.
                    conn.execute(sql.SQL("{} LIMIT 0").format(select), (), prepare=True)
                    pages = (
                        self._pages_in_key_order(conn, query, key_column, content_hash, chunk_size)
                        if key_column is not None else None
                    )
                    snapshot = _exported_snapshot(conn) if pages and pages.dividing_keys else None
                    if snapshot is not None:
                        conns += self._other_readers(snapshot, len(pages.dividing_keys))
                    if pages is None:
                        yield from _copy_out(conn.pgconn, copied.as_bytes(conn), chunk_size, watch)
                    elif len(conns) == 1:
                        yield from _read_pages(conn, pages, None, None, chunk_size, watch)
                    else:
                        bounds = [None, *pages.dividing_keys, None]
                        yield from _read_ranges([
                            _read_pages(each, pages, lower, upper, chunk_size, watch)
                            for each, lower, upper in zip(conns, bounds[:-1], bounds[1:], strict=True)
                        ], cancel)
                except psycopg.Error as exc:
                    raise (watch.error() or _failure(query, exc)) from None
        finally:
            for each in conns:
                self._streaming.discard(each)
                _end(each)

    def _other_readers(self, snapshot: str, count: int) -> list[psycopg.Connection]:
        """`count` more connections reading in `snapshot`; none when one cannot be made (the
        server's connections are all taken, say): the first reader then reads alone."""
        readers: list[psycopg.Connection] = []
        try:
            for _ in range(count):
                readers.append(self._connect(snapshot=snapshot))
                self._streaming.add(readers[-1])
        except ConnectorError as exc:
            log.info("one reader reads: another connection to the source failed: %s", exc.message)
            for reader in readers:
                self._streaming.discard(reader)
                _end(reader)
            return []
        return readers

    def _pages_in_key_order(
        self, conn: psycopg.Connection, query: str, key_column: str,
        content_hash: sql.Composable, page_rows: int,
    ) -> _KeyPages | None:
        """The statements reading pages of (key, hash) lines in key order, when the keys are
        proved unique and the first page's plan walks an index in key order (EXPLAIN, never
        run), and the keys at which the walk divides between readers; None otherwise. Unique
        keys make the order of the lines free, and keyset pages in one snapshot read every row
        once."""
        unique = self._unique_key_column(conn, query, key_column)
        if unique is None:
            return None
        described = self._described(conn, query).description or []
        key_type = _KEY_TYPES[next(c.type_code for c in described if c.name == key_column)]
        key = sql.Identifier("q", key_column)
        text = sql.SQL("{}::text").format(key)
        if key_type in ("text", "varchar"):
            # COPY text: a backslash, tab, newline or carriage return in a key is escaped.
            for raw, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
                text = sql.SQL("replace({}, {}, {})").format(text, sql.Literal(raw), sql.Literal(escaped))

        # The page's last key: uuid has no max(), but its text in the C collation sorts as it.
        last = sql.SQL("max(k::text COLLATE \"C\")::uuid" if key_type == "uuid" else "max(k)")
        bound = sql.SQL("%s::{}").format(sql.SQL(key_type))

        def page(after: bool, until: bool) -> sql.Composable:
            conditions = ([sql.SQL("{} > {}").format(key, bound)] if after else []) + (
                [sql.SQL("{} <= {}").format(key, bound)] if until else [])
            where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
            return sql.SQL(
                "SELECT convert_to(string_agg(line, ''), 'UTF8'), {last}, count(*) FROM"
                " (SELECT {key} AS k, {text} || chr(9) || {hash} || chr(10) AS line"
                " FROM {query}{where} ORDER BY {key} LIMIT {rows}) AS page"
            ).format(last=last, key=key, text=text, hash=content_hash, query=self._wrapped(query),
                     where=where, rows=sql.Literal(page_rows))

        statements = {(after, until): page(after, until) for after in (False, True) for until in (False, True)}
        plan = conn.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) {}").format(statements[False, False]), (), prepare=True
        ).fetchone()[0]
        if not _walks_index_in_order(plan[0]["Plan"]):
            return None
        return _KeyPages(statements, self._dividing_keys(conn, *unique, key_type))

    def _dividing_keys(
        self, conn: psycopg.Connection, table: int, column: int, key_type: str
    ) -> list[Any]:
        """Keys that divide the key column's values into `page_readers` ranges of about as
        many rows, from the table's statistics (the quantiles of its histogram); none when the
        table is smaller than `readers_from_rows` or has no statistics."""
        if self.page_readers < 2:
            return []
        row = conn.execute(
            sql.SQL(
                "SELECT c.reltuples, s.histogram_bounds::text::{}[] FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = %s"
                " LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname"
                "  AND s.attname = a.attname AND NOT s.inherited"
                " WHERE c.oid = %s"
            ).format(sql.SQL(key_type)),
            (column, table),
        ).fetchone()
        if row is None or row[0] < self.readers_from_rows or not row[1]:
            return []
        bounds = row[1]  # in the key's own order, which Python's need not be
        picked = [bounds[(len(bounds) - 1) * i // self.page_readers]
                  for i in range(1, self.page_readers)]
        return [key for n, key in enumerate(picked) if n == 0 or key != picked[n - 1]]

    def stream_rows_for_keys(
        self, query: str, key_column: str | None, columns: list[str], keys: list[str] | None,
        chunk_size: int = 10_000,
    ) -> Iterator[list[tuple]]:
        """Rows of `query` as (key text, *columns), only those whose key is in `keys` (all when
        None). The filter runs in Postgres, so rows that stay unchanged never leave it. Without
        a key column the key is the content hash over `columns`, as in stream_key_hashes."""
        selected = [sql.SQL("{} AS __retl_key").format(self._key_expression(key_column, columns))]
        selected += [sql.Identifier("q", c) for c in columns]
        statement = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(selected), self._wrapped(query)
        )
        params: tuple = ()
        key_type = self._key_type(query, key_column) if keys is not None else None
        if key_type is not None:
            # The keys as the column's own values: the filter reaches the query's table, and an
            # index on the key finds the few rows asked for without reading the rest.
            statement = sql.SQL("{} WHERE {} = ANY(%s::{}[])").format(
                statement, sql.Identifier("q", key_column), sql.SQL(key_type)
            )
            params = (keys,)
        elif keys is not None:
            statement = sql.SQL("SELECT * FROM ({}) AS k WHERE k.__retl_key = ANY(%s::text[])").format(
                statement
            )
            params = (keys,)
        yield from self._run(query, statement, params, chunk_size=chunk_size)

    def _key_type(self, query: str, key_column: str | None) -> str | None:
        """The key column's type when its text form reads back as the same value (integers,
        text, uuid), so keys can be compared as values; None otherwise."""
        if key_column is None:
            return None
        if query not in self._column_types:
            self.columns(query)
        return _KEY_TYPES.get(self._column_types[query].get(key_column, 0))

    def stream_rows_with_hashes(
        self, query: str, key_column: str | None, columns: list[str], chunk_size: int = 10_000,
        *, salt: str = "", fast: bool = False,
    ) -> Iterator[list[tuple]]:
        """(key text, content hash, *columns) per row: one read for runs that send every row,
        with the key and the hash as stream_key_hashes computes them."""
        selected = [
            self._key_expression(key_column, columns),
            self._content_hash(query, columns, salt, fast),
            *(sql.Identifier("q", c) for c in columns),
        ]
        statement = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(selected), self._wrapped(query)
        )
        yield from self._run(query, statement, chunk_size=chunk_size)

    def _content_hash(self, query: str, columns: list[str], salt: str, fast: bool) -> sql.Composable:
        if not fast:
            return self._hash_expression(columns, salt)
        types = self._column_types.get(query)
        if types is None:
            self.columns(query)
            types = self._column_types[query]
        values = [
            sql.Identifier("q", c) if types.get(c) in _VALUE_HASHED_TYPES
            else sql.SQL("{}::text").format(sql.Identifier("q", c))
            for c in columns
        ]
        # The column count is hashed in, so (a, NULL) and (a) never meet.
        return sql.SQL("hash_record_extended(row({}, {}), {})::text").format(
            sql.SQL(", ").join(values), sql.Literal(len(columns)), sql.Literal(_seed(salt))
        )

    @staticmethod
    def _hash_expression(columns: list[str], salt: str = "") -> sql.Composable:
        return sql.SQL("md5(row({})::text || {})").format(
            sql.SQL(", ").join(sql.Identifier("q", c) for c in columns), sql.Literal(salt)
        )

    @classmethod
    def _key_expression(cls, key_column: str | None, columns: list[str]) -> sql.Composable:
        if key_column is None:
            return cls._hash_expression(columns)
        return sql.SQL("({})::text").format(sql.Identifier("q", key_column))
