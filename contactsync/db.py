"""Engine factory and the unit of work: the only place that commits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from contactsync.settings import Settings

_WRITE = "contactsync_write"


def make_engine(settings: Settings, lock_timeout_ms: int | None = None) -> Engine:
    """Create an engine; on SQLite, a unit of work takes the write lock when it begins.

    `lock_timeout_ms` bounds every PostgreSQL lock wait of the engine's sessions (set once per
    connection: a `SET LOCAL` per transaction would cost a round trip each).
    """
    url = settings.database_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not settings.is_sqlite:
        options = {} if lock_timeout_ms is None else {
            "options": f"-c lock_timeout={int(lock_timeout_ms)}"
        }
        return create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=10, hide_parameters=True,
            connect_args=options,
        )
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
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """Yield a session for reads only."""
        with self._sessions() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
