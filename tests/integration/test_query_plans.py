"""A statement's plan follows its table's size (contactsync/db.py, plan_cache_mode).

psycopg prepares a statement after its fifth run; PostgreSQL could then keep one generic plan,
made while the table was small, that scans the whole table however large it grows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from contactsync.db import Database

LOOKUP = "SELECT id FROM plan_probe WHERE id IN (SELECT unnest(CAST(%(ids)s AS varchar[])))"


@pytest.fixture
def probe(db: Database) -> Iterator[Database]:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("plan caching is PostgreSQL's")
    with db.engine.begin() as connection:
        connection.execute(text("CREATE TABLE plan_probe (id varchar(40) PRIMARY KEY)"))
        # A few rows, analyzed: what autovacuum leaves of a new deployment's first minute.
        connection.execute(text("INSERT INTO plan_probe VALUES ('a'), ('b'), ('c')"))
        connection.execute(text("ANALYZE plan_probe"))
    try:
        yield db
    finally:
        with db.engine.begin() as connection:
            connection.execute(text("DROP TABLE plan_probe"))


def test_a_lookup_prepared_on_an_empty_table_uses_the_index_once_it_has_grown(
    probe: Database,
) -> None:
    with probe.engine.connect() as connection:
        driver: Any = connection.connection.driver_connection
        for _ in range(20):  # prepared after the fifth run; five custom plans, then generic
            driver.execute(LOOKUP, {"ids": ["x"]})
        driver.execute("INSERT INTO plan_probe SELECT 'id' || g FROM generate_series(1, 50000) g")
        driver.commit()
        name, generic = driver.execute(
            "SELECT name, generic_plans FROM pg_prepared_statements WHERE statement LIKE "
            "'%plan_probe WHERE id IN%'"
        ).fetchone()
        plan = "\n".join(row[0] for row in driver.execute(
            f"EXPLAIN EXECUTE {name}('{{id7}}')"
        ))
        driver.rollback()
    assert generic == 0
    assert "Index" in plan and "Seq Scan" not in plan, plan
