"""Engine factory and the unit of work: the only place that commits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, TextClause, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from contactsync.settings import Settings

_WRITE = "contactsync_write"
# A statement left to run with the COMMIT (`write_with_commit`), in the session's `info`.
_WITH_COMMIT = "contactsync_with_commit"
# A pooled connection used this recently is not pinged before its next use (see `_ping_idle`).
IDLE_PING_SECONDS = 1.0


def make_engine(settings: Settings, lock_timeout_ms: int | None = None) -> Engine:
    """Create an engine; on SQLite, a unit of work takes the write lock when it begins.

    `lock_timeout_ms` bounds every PostgreSQL lock wait of the engine's sessions (set once per
    connection: a `SET LOCAL` per transaction would cost a round trip each).
    """
    url = settings.database_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not settings.is_sqlite:
        # psycopg prepares a statement after its fifth run, and PostgreSQL may then keep one
        # generic plan for it. Made while a table was nearly empty (a new deployment, a fresh
        # bench), that plan scans the whole table, and keeps doing so as the table grows until
        # the next ANALYZE: looking up a batch's update records took 27 ms at 60,000 records
        # instead of 0.03 (docs/benchmarks.md, "the default-mode tail"). A plan made for each
        # run sees the table's size as it is; it costs at most ~0.1 ms a statement more.
        options = "-c plan_cache_mode=force_custom_plan"
        # Sessions in `UTC` by that name: psycopg then returns times with `datetime.UTC`, not a
        # `ZoneInfo` (which a server's default `Etc/UTC` gives), which cost a conversion, about
        # a microsecond, at each `timeutil.isoformat`. It also makes every server-side text
        # of a time (`to_char`, `::date`) UTC, whatever the server's own zone.
        options += " -c TimeZone=UTC"
        if lock_timeout_ms is not None:
            options += f" -c lock_timeout={int(lock_timeout_ms)}"
        engine = create_engine(
            url, pool_size=5, max_overflow=10, hide_parameters=True,
            connect_args={"options": options},
            # psycopg decodes json and jsonb with the standard library's json by default: a
            # bulk batch reads four JSONB columns a contact, and orjson decodes them ~5x faster.
            json_deserializer=orjson.loads,
        )
        _ping_idle(engine)
        _end_pipeline_begins(engine)
        return engine
    # hide_parameters: a statement's values are personal data; errors must not print them.
    engine = create_engine(
        url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (SQLAlchemy's recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A deferred transaction that reads, then writes, fails at once with SQLITE_BUSY when
        # another writer holds the lock; taking the lock up front makes it wait its turn.
        write = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _ping_idle(engine: Engine) -> None:
    """Ping a pooled connection before use only if it sat idle for `IDLE_PING_SECONDS`.

    SQLAlchemy's `pool_pre_ping` pings at every checkout: one round trip of the few a lone
    update pays. A connection back in the pool for less than a second is almost surely alive;
    if the server went away in that second, the statement fails as a lost connection (retried
    like any transient failure) and SQLAlchemy drops the pool's connections.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return  # new, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("connection lost while idle") from exc  # a fresh one


def _end_pipeline_begins(engine: Engine) -> None:
    """Turn psycopg's autocommit off again once a transaction whose BEGIN went in a pipeline
    is over (`pg_batch._begins_here` turns it on; this engine never uses it otherwise).

    At the next transaction's begin on the same connection, not only when it goes back to the
    pool: a second transaction in one checkout would otherwise run each statement alone.
    """

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        driver: Any = connection.connection.driver_connection
        if driver.autocommit and driver.info.transaction_status == TransactionStatus.IDLE:
            driver.autocommit = False

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        # The pool has rolled back whatever the transaction left open.
        if dbapi_connection is not None and dbapi_connection.autocommit:
            try:
                dbapi_connection.autocommit = False
            except psycopg.Error:
                record.invalidate()


class Database:
    """An engine with its session factory."""

    def __init__(self, settings: Settings, *, lock_timeout_ms: int | None = None) -> None:
        self.settings = settings
        self.engine = make_engine(settings, lock_timeout_ms)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """Yield a session; commit when the block ends cleanly, roll back otherwise."""
        with self._sessions() as session:
            try:
                session.connection(execution_options={_WRITE: True})
                yield session
                last = session.info.pop(_WITH_COMMIT, None)
                if last is not None:
                    session.flush()  # the ORM's pending writes go first
                    _commit_with(session.connection(), *last)
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @staticmethod
    def write_with_commit(
        session: Session, statement: TextClause, params: dict[str, Any]
    ) -> None:
        """Run `statement` when the unit of work commits, sent with the COMMIT: one round trip
        for both on PostgreSQL. Its errors then come from the commit (as SQLAlchemy's errors,
        and the transaction rolled back). At most one per unit of work; elsewhere it runs now.
        """
        if session.get_bind().dialect.name != "postgresql":
            session.execute(statement, params)
            return
        assert _WITH_COMMIT not in session.info, "one statement with the commit"
        session.info[_WITH_COMMIT] = (statement, params)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """Yield a session for reads only."""
        with self._sessions() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


# The few statements sent with a commit, as psycopg reads them.
_COMPILED: dict[TextClause, str] = {}


def _commit_with(connection: Connection, statement: TextClause, params: dict[str, Any]) -> None:
    """Send `statement` and COMMIT together (psycopg's pipeline); SQLAlchemy's own commit that
    follows finds the transaction over and sends nothing."""
    driver: Any = connection.connection.driver_connection
    sql = _COMPILED.get(statement)
    if sql is None:  # compiling costs about as much as the statement's round trip
        sql = _COMPILED[statement] = str(statement.compile(dialect=connection.dialect))
    try:
        with driver.pipeline():
            driver.execute(sql, params)
            # As a statement: psycopg's commit() would wait for its answer before the pipeline's
            # end waits again, a second round trip.
            driver.execute("COMMIT")
    except psycopg.Error as exc:
        raise driver_error(connection, exc) from exc


def driver_error(connection: Connection, exc: psycopg.Error) -> BaseException:
    """Return an error psycopg raised to a statement sent beneath SQLAlchemy as SQLAlchemy
    would have (IntegrityError, OperationalError, ...), which the retry policy reads; a
    connection that broke is dropped from the pool."""
    driver: Any = connection.connection.driver_connection
    invalidated = bool(driver.closed or driver.broken)
    wrapped = DBAPIError.instance(
        None, None, exc, psycopg.Error, hide_parameters=True, connection_invalidated=invalidated,
        dialect=connection.dialect,
    )
    if invalidated:
        connection.invalidate(exc)
    return wrapped
