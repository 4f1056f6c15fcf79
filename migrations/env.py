"""Alembic environment: target metadata is ``hadis_celery.tables.Base.metadata``.

URL, first found: a connection handed over by ``hadis_celery.db.upgrade`` (so a caller's
engine, search_path included, is used as is), ``-x url=...``, ``sqlalchemy.url`` of the
config, ``HADIS_DATABASE_URL`` through ``hadis_celery.settings``.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from hadis_celery.db import make_engine
from hadis_celery.settings import settings
from hadis_celery.tables import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return (context.get_x_argument(as_dictionary=True).get("url")
            or config.get_main_option("sqlalchemy.url")
            or settings().database_url)


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True, **kwargs)


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
