"""Engine, sessions and migrations for the SQL record (PostgreSQL or SQLite, by URL).

The URL comes from the caller or ``settings().database_url`` (``HADIS_DATABASE_URL``).
Tables are created and evolved only by the Alembic migrations in ``migrations/`` at the
repository root; ``upgrade()`` runs them on a live connection, which keeps whatever
``search_path`` the URL sets (``?options=-csearch_path%3Dmyschema`` on PostgreSQL).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from hadis_celery.settings import settings

MIGRATIONS_DIR = Path(
    os.environ.get("HADIS_MIGRATIONS", Path(__file__).resolve().parent.parent / "migrations")
)


def database_url(url: str | None = None) -> str:
    return url or settings().database_url


def normalize_url(url: str | None = None) -> URL:
    """The URL with a driver we have: plain ``postgresql://`` means psycopg (v3) to
    SQLAlchemy 2.1; it becomes ``postgresql+psycopg2://`` when only psycopg2 is installed."""
    u = make_url(database_url(url))
    if u.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        u = u.set(drivername="postgresql+psycopg2")
    return u


def make_engine(url: str | None = None, echo: bool = False) -> Engine:
    """An engine for ``url``: SQLite gets its folder created and foreign keys switched on."""
    u = normalize_url(url)
    kwargs: dict = {"echo": echo}
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(u, **kwargs)
    if u.get_backend_name() == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One session, one transaction: committed on success, rolled back on any error."""
    with session_factory(engine)() as session, session.begin():
        yield session


def alembic_config(url: str | None = None):
    """The Alembic config of ``migrations/`` for ``url`` (no ini lookup in the cwd)."""
    from alembic.config import Config

    ini = MIGRATIONS_DIR / "alembic.ini"
    if not ini.is_file():
        raise FileNotFoundError(f"{ini}: Alembic config not found (set HADIS_MIGRATIONS)")
    cfg = Config(str(ini))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url(url).replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to ``revision`` in one transaction on ``engine``."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def ensure_schema(engine: Engine) -> None:
    """Upgrade to head when the database is behind (commands call this before SQL work)."""
    if current_revision(engine) != head_revision():
        upgrade(engine)


@contextmanager
def temporary_schema(pg_url: str, prefix: str = "hadis_tmp") -> Iterator[str]:
    """A migrated, empty PostgreSQL schema of its own on ``pg_url`` (dropped afterwards):
    the URL to use, for tests and benchmarks that must not touch each other's rows."""
    import uuid

    from sqlalchemy import text

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(pg_url)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{pg_url}?options=-csearch_path%3D{schema}"
    try:
        e = make_engine(url)
        upgrade(e)
        e.dispose()
        yield url
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
