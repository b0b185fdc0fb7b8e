"""Postgres destination: rows into a table, keyed by a column with a unique index.

One connection per connector instance (reopened when broken), one transaction per batch. A batch
first runs as one pipelined executemany; if Postgres refuses any row (a NOT NULL or CHECK
violation, a bad value), the transaction is rolled back and the batch runs again row by row
inside savepoints, so each refused row gets Postgres' own message and the others are written.
Identifiers are always quoted with psycopg.sql; type names come from the catalog.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from connectors.destinations.base import (
    ConfigField,
    Destination,
    DestinationField,
    DestinationObject,
    Operation,
    RateLimit,
    Record,
    RecordResult,
)
from connectors.errors import AuthError, ConnectorError, RetryableError

_TYPES = {
    "text": "string",
    "character varying": "string",
    "character": "string",
    "uuid": "string",
    "citext": "string",
    "smallint": "integer",
    "integer": "integer",
    "bigint": "integer",
    "numeric": "number",
    "real": "number",
    "double precision": "number",
    "boolean": "boolean",
    "date": "date",
    "timestamp without time zone": "datetime",
    "timestamp with time zone": "datetime",
    "json": "json",
    "jsonb": "json",
}

# Connection failures that are the credentials' fault, by libpq's wording (it gives no SQLSTATE
# for a refused login).
_AUTH_FAILURES = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",  # role "x" does not exist (a missing database is told apart below)
    "pg_hba.conf",
    "permission denied to connect",
)

_TABLES = """
SELECT c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
  AND has_table_privilege(c.oid, 'INSERT')
ORDER BY c.relname
"""

_COLUMNS = """
SELECT a.attname,
       format_type(a.atttypid, a.atttypmod),
       t.typname,
       ty.data_type,
       a.attnotnull,
       a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
       a.attgenerated <> '',
       EXISTS (
         SELECT 1 FROM pg_index i
         WHERE i.indrelid = c.oid AND i.indisunique AND i.indnkeyatts = 1
           AND i.indkey[0] = a.attnum AND i.indpred IS NULL AND i.indexprs IS NULL
       )
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN information_schema.columns ty
  ON ty.table_schema = n.nspname AND ty.table_name = c.relname AND ty.column_name = a.attname
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
ORDER BY a.attnum
"""


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # as format_type prints it, e.g. "character varying(20)"
    data_type: str  # one of DATA_TYPES
    required: bool
    generated: bool
    unique: bool


class PostgresDestination(Destination):
    type: ClassVar[str] = "postgres"
    label: ClassVar[str] = "PostgreSQL table"
    config_fields: ClassVar[tuple[ConfigField, ...]] = (
        ConfigField(
            "url",
            required=True,
            secret=True,
            description="postgresql://user:password@host:5432/database (holds the password).",
        ),
        ConfigField("schema", default="public", description="Schema whose tables are objects."),
        ConfigField("timeoutSeconds", default=60, description="Statement timeout per batch."),
    )
    supported_modes: ClassVar[frozenset[str]] = frozenset(
        {"upsert", "insert", "update", "delete", "mirror"}
    )
    batch_size: ClassVar[int] = 1000
    rate_limit: ClassVar[RateLimit] = RateLimit(100, 1.0)
    max_concurrency: ClassVar[int] = 4

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.url = str(config.get("url") or "")
        if not self.url:
            raise ConnectorError("config url is required")
        self.schema = str(config.get("schema") or "public")
        self.timeout_seconds = float(config.get("timeoutSeconds") or 60)
        self._conn: psycopg.Connection[Any] | None = None
        self._columns: dict[str, dict[str, Column]] = {}
        # One connection carries one transaction at a time: calls from several threads queue.
        self._lock = threading.RLock()

    # -- connection ----------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._conn = None
        if self._conn is None:
            try:
                conn = psycopg.connect(self.url, connect_timeout=10, autocommit=False)
            except psycopg.OperationalError as exc:
                raise self._connect_error(exc) from None
            except psycopg.ProgrammingError:  # a malformed URL; libpq's words may quote the password
                raise ConnectorError("invalid Postgres url: not a valid connection URL") from None
            # Datetimes arrive in UTC; a timestamp column must store that wall time too.
            conn.execute("SET TIME ZONE 'UTC'")
            timeout_ms = int(self.timeout_seconds * 1000)
            conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(timeout_ms)))
            conn.commit()
            self._conn = conn
        return self._conn

    @staticmethod
    def _connect_error(exc: psycopg.OperationalError) -> ConnectorError:
        text = str(exc)
        lowered = text.lower()
        if 'database "' in lowered and "does not exist" in lowered:
            return ConnectorError(f"Postgres database does not exist: {text}")
        if any(marker in lowered for marker in _AUTH_FAILURES):
            return AuthError(
                f"Postgres refused the login: {text.strip()}; fix the user and password in url"
            )
        return RetryableError(f"cannot connect to Postgres: {text.strip()}")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run_error(self, exc: psycopg.Error) -> ConnectorError:
        """A failure of the whole batch, outside per-row data errors."""
        # Whatever went wrong may come from a table changed under us: read it afresh next time.
        self._columns.clear()
        if self._conn is not None and (self._conn.broken or self._conn.closed):
            self._conn = None
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return RetryableError(f"Postgres statement timed out: {exc}", code="TIMEOUT")
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            # Lost connections, deadlocks, serialization failures, admin shutdowns.
            return RetryableError(f"Postgres: {str(exc).strip()}")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return ConnectorError(f"Postgres permission denied: {exc}; grant the user access")
        return ConnectorError(f"Postgres refused the batch: {str(exc).strip()}")

    # -- discovery -----------------------------------------------------------------------------

    def test(self) -> None:
        with self._lock:
            self._test()

    def _test(self) -> None:
        try:
            conn = self._connection()
            conn.execute("SELECT 1")
            exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
            ).fetchone()
            conn.rollback()
        except psycopg.Error as exc:
            raise self._run_error(exc) from None
        if not exists:
            raise ConnectorError(f"schema {self.schema!r} does not exist")

    def list_objects(self) -> list[DestinationObject]:
        with self._lock:
            return self._list_objects()

    def _list_objects(self) -> list[DestinationObject]:
        try:
            conn = self._connection()
            names = [row[0] for row in conn.execute(_TABLES, (self.schema,)).fetchall()]
            conn.rollback()
        except psycopg.Error as exc:
            raise self._run_error(exc) from None
        objects = []
        for name in names:
            columns = self._load_columns(name)
            objects.append(
                DestinationObject(
                    api_name=name,
                    label=f"{self.schema}.{name}",
                    supports_upsert=any(column.unique for column in columns.values()),
                )
            )
        return objects

    def list_fields(self, object_name: str) -> list[DestinationField]:
        with self._lock:
            columns = self._load_columns(object_name)
        return [
            DestinationField(
                name=column.name,
                label=column.name,
                data_type=column.data_type,
                required=column.required,
                updateable=not column.generated,
                external_id=column.unique,
            )
            for column in columns.values()
        ]

    def _load_columns(self, table: str) -> dict[str, Column]:
        try:
            conn = self._connection()
            rows = conn.execute(_COLUMNS, (self.schema, table)).fetchall()
            conn.rollback()
        except psycopg.Error as exc:
            raise self._run_error(exc) from None
        if not rows:
            raise ConnectorError(f"table {self.schema}.{table} does not exist or has no columns")
        columns: dict[str, Column] = {}
        for name, sql_type, type_name, data_type, not_null, has_default, generated, unique in rows:
            normalized = _TYPES.get(data_type or "") or _TYPES.get(type_name, "string")
            columns[name] = Column(
                name=name,
                sql_type=sql_type,
                data_type=normalized,
                required=bool(not_null and not has_default),
                generated=bool(generated),
                unique=bool(unique),
            )
        self._columns[table] = columns
        return columns

    def _columns_for(self, table: str) -> dict[str, Column]:
        return self._columns.get(table) or self._load_columns(table)

    # -- values --------------------------------------------------------------------------------

    def format_value(self, value: Any, field: DestinationField) -> Any:
        # psycopg sends Python dates, datetimes, numbers and booleans in their native types.
        return value

    # -- writes --------------------------------------------------------------------------------

    def write_batch(
        self, object_name: str, operation: Operation, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        if not records:
            return []
        with self._lock:
            return self._write_batch(object_name, operation, key_field, records)

    def _write_batch(
        self, object_name: str, operation: Operation, key_field: str, records: list[Record]
    ) -> list[RecordResult]:
        if operation == "insert" and not key_field:
            return self._insert_without_key(object_name, records)
        columns = self._columns_for(object_name)
        mapped = {name for record in records for name in record.fields} | {key_field}
        key = columns.get(key_field)
        if not mapped <= columns.keys() or (operation == "upsert" and not (key and key.unique)):
            # The table may have changed since it was read (a new column or unique index).
            columns = self._load_columns(object_name)
            key = columns.get(key_field)
        if key is None:
            raise ConnectorError(
                f"column {key_field!r} does not exist in {self.schema}.{object_name}"
            )
        if operation == "upsert" and not key.unique:
            raise ConnectorError(
                f"upsert into {self.schema}.{object_name} needs a unique index or primary key on "
                f"column {key_field!r}; create one or use insert mode"
            )
        table = sql.Identifier(self.schema, object_name)
        if operation == "delete":
            return self._delete(table, key, records)
        names = self._column_names(records, columns, object_name)
        if key_field not in names:
            names = [key_field, *names]
        rows = [self._row(record, names, key_field, columns) for record in records]
        statement, returns_row = self._statement(operation, table, names, key)
        if operation == "update":
            # The UPDATE names its placeholders: SET columns first, the key in WHERE.
            params: list[Any] = [dict(zip(names, row, strict=True)) for row in rows]
        else:
            params = rows
        return self._execute_rows(statement, params, operation, returns_row)

    def _insert_without_key(self, object_name: str, records: list[Record]) -> list[RecordResult]:
        """An insert-only sync without a key mapping: every record is a new row."""
        columns = self._columns_for(object_name)
        if not {name for record in records for name in record.fields} <= columns.keys():
            columns = self._load_columns(object_name)
        names = self._column_names(records, columns, object_name)
        table = sql.Identifier(self.schema, object_name)
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING 1").format(
            table, sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names)),
        )
        rows = [self._row(record, names, "", columns) for record in records]
        return self._execute_rows(statement, rows, "insert", True)

    def _column_names(
        self, records: list[Record], columns: dict[str, Column], table: str
    ) -> list[str]:
        names: list[str] = []
        seen: set[str] = set()
        for record in records:
            for name in record.fields:
                if name not in seen:
                    seen.add(name)
                    names.append(name)
        unknown = [name for name in names if name not in columns]
        if unknown:
            raise ConnectorError(
                f"columns {', '.join(unknown)} do not exist in {self.schema}.{table}"
            )
        generated = [name for name in names if columns[name].generated]
        if generated:
            raise ConnectorError(
                f"columns {', '.join(generated)} are generated and cannot be written"
            )
        return names

    @staticmethod
    def _row(
        record: Record, names: list[str], key_field: str, columns: dict[str, Column]
    ) -> list[Any]:
        fields = record.fields
        row = []
        for name in names:
            value = fields.get(name)
            if name == key_field and value is None:
                value = record.key
            if value is not None and columns[name].data_type == "json":
                value = Jsonb(value)
            row.append(value)
        return row

    def _statement(
        self, operation: Operation, table: sql.Identifier, names: list[str], key: Column
    ) -> tuple[sql.Composed, bool]:
        """The one-row statement for `operation` and whether it returns a row on success."""
        key_id = sql.Identifier(key.name)
        column_ids = sql.SQL(", ").join(map(sql.Identifier, names))
        placeholders = sql.SQL(", ").join(sql.Placeholder() * len(names))
        others = [name for name in names if name != key.name]
        if operation == "upsert":
            if others:
                action = sql.SQL("DO UPDATE SET {}").format(
                    sql.SQL(", ").join(
                        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name))
                        for name in others
                    )
                )
            else:
                action = sql.SQL("DO NOTHING")
            query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
                table, column_ids, placeholders, key_id, action
            )
            return query, False
        if operation == "insert":
            if key.unique:
                query = sql.SQL(
                    "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO NOTHING RETURNING 1"
                ).format(table, column_ids, placeholders, key_id)
            else:
                # Without a unique index there is no conflict to detect: every row goes in.
                query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING 1").format(
                    table, column_ids, placeholders
                )
            return query, True
        if operation == "update":
            if others:
                assignments = sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name))
                    for name in others
                )
                query = sql.SQL("UPDATE {} SET {} WHERE {} = {} RETURNING 1").format(
                    table, assignments, key_id, sql.Placeholder(key.name)
                )
            else:
                query = sql.SQL("SELECT 1 FROM {} WHERE {} = {}").format(
                    table, key_id, sql.Placeholder(key.name)
                )
            return query, True
        raise ConnectorError(f"unknown operation {operation!r}")

    def _execute_rows(
        self, statement: sql.Composed, params: list[Any], operation: Operation, returns_row: bool
    ) -> list[RecordResult]:
        try:
            conn = self._connection()
        except psycopg.Error as exc:
            raise self._run_error(exc) from None
        try:
            with conn.cursor() as cur:
                cur.executemany(statement, params, returning=returns_row)
                outcomes = (
                    [cur.fetchone() is not None for _ in cur.results()] if returns_row else []
                )
            conn.commit()
            if not returns_row:
                return [RecordResult.success()] * len(params)
            return [self._outcome(operation, found) for found in outcomes]
        except (psycopg.DataError, psycopg.IntegrityError):
            self._rollback(conn)
        except psycopg.Error as exc:
            self._rollback(conn)
            raise self._run_error(exc) from None
        return self._row_by_row(conn, statement, params, operation, returns_row)

    def _row_by_row(
        self,
        conn: psycopg.Connection[Any],
        statement: sql.Composed,
        params: list[Any],
        operation: Operation,
        returns_row: bool,
    ) -> list[RecordResult]:
        """The batch again, each row in a savepoint, so refused rows do not sink the others."""
        results: list[RecordResult] = []
        try:
            with conn.cursor() as cur:
                for row in params:
                    cur.execute("SAVEPOINT retl_row")
                    try:
                        cur.execute(statement, row)
                    except (psycopg.DataError, psycopg.IntegrityError) as exc:
                        cur.execute("ROLLBACK TO SAVEPOINT retl_row")
                        results.append(
                            RecordResult.failure("DESTINATION_VALIDATION", _message(exc))
                        )
                        continue
                    found = cur.fetchone() is not None if returns_row else True
                    cur.execute("RELEASE SAVEPOINT retl_row")
                    results.append(self._outcome(operation, found))
            conn.commit()
        except psycopg.Error as exc:
            self._rollback(conn)
            raise self._run_error(exc) from None
        return results

    @staticmethod
    def _outcome(operation: Operation, found: bool) -> RecordResult:
        if found:
            return RecordResult.success()
        if operation == "insert":
            return RecordResult.failure(
                "DESTINATION_VALIDATION", "a row with this key already exists"
            )
        return RecordResult.failure("NOT_FOUND", "no row with this key")

    def _delete(
        self, table: sql.Identifier, key: Column, records: list[Record]
    ) -> list[RecordResult]:
        keys = [record.key for record in records]
        statement = sql.SQL("DELETE FROM {} WHERE {} = ANY({}::{}[])").format(
            table, sql.Identifier(key.name), sql.Placeholder(), sql.SQL(_base_type(key.sql_type))
        )
        try:
            conn = self._connection()
        except psycopg.Error as exc:
            raise self._run_error(exc) from None
        try:
            conn.execute(statement, (keys,))
            conn.commit()
        except psycopg.DataError:
            # A key that cannot be a value of the column (e.g. "abc" for an integer key):
            # find which, delete the rest.
            self._rollback(conn)
            return self._row_by_row(
                conn,
                sql.SQL("DELETE FROM {} WHERE {} = {}").format(
                    table, sql.Identifier(key.name), sql.Placeholder()
                ),
                [(k,) for k in keys],
                "delete",
                returns_row=False,
            )
        except psycopg.Error as exc:
            self._rollback(conn)
            raise self._run_error(exc) from None
        # A key that was already absent is as deleted as one that was removed.
        return [RecordResult.success()] * len(records)

    def _rollback(self, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.rollback()
        except psycopg.Error:
            self._conn = None


def _base_type(sql_type: str) -> str:
    """The type without its modifier (`character varying(20)` → `character varying`), for an
    array cast that must not truncate or reject keys before they are compared."""
    return sql_type.split("(", 1)[0] if not sql_type.endswith("[]") else sql_type


def _message(exc: psycopg.Error) -> str:
    """Postgres' own words for a refused row, with the column or constraint it names."""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip()
    where = diag.column_name or diag.constraint_name
    if where and where not in message:
        message = f"{message} ({where})"
    return message
