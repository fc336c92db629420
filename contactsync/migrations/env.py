"""Alembic environment: the database URL comes from the settings object."""

from __future__ import annotations

from alembic import context

from contactsync.db import make_engine
from contactsync.models import Base
from contactsync.settings import get_settings

config = context.config


def run_migrations() -> None:
    url = config.attributes.get("database_url")
    settings = get_settings()
    if url:
        settings = settings.model_copy(update={"database_url": url})
    engine = make_engine(settings)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=settings.is_sqlite,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
