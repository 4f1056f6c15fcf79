"""``hadis db``: run and inspect the Alembic migrations of the SQL record."""

from __future__ import annotations

import click

url_option = click.option(
    "--url", "url", default=None, metavar="URL",
    help="Database URL (default: HADIS_DATABASE_URL, else sqlite:///var/hadis.sqlite).")


def _fail(url: str | None, exc: Exception) -> click.ClickException:
    from hadis_celery.db import database_url

    text = str(getattr(exc, "orig", None) or exc).strip()
    return click.ClickException(
        f"database {database_url(url)}: {text.splitlines()[0] if text else type(exc).__name__}")


@click.group("db")
def command() -> None:
    """SQL schema: migrations (Alembic, migrations/ at the repository root)."""


@command.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@url_option
def upgrade(revision: str, url: str | None) -> None:
    """Migrate the database up to REVISION (creates the tables on a fresh database)."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from hadis_celery import db

    try:
        engine = db.make_engine(url)
        try:
            before = db.current_revision(engine)
            db.upgrade(engine, revision)
            after = db.current_revision(engine)
        finally:
            engine.dispose()
    except (SQLAlchemyError, CommandError, FileNotFoundError) as exc:
        raise _fail(url, exc) from exc
    if before == after:
        click.echo(f"database at {after} (nothing to do)")
    else:
        click.echo(f"database upgraded {before or 'empty'} -> {after}")


@command.command("downgrade")
@click.argument("revision")
@url_option
def downgrade(revision: str, url: str | None) -> None:
    """Migrate the database down to REVISION ("base" drops every table)."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from hadis_celery import db

    try:
        engine = db.make_engine(url)
        try:
            db.downgrade(engine, revision)
            after = db.current_revision(engine)
        finally:
            engine.dispose()
    except (SQLAlchemyError, CommandError, FileNotFoundError) as exc:
        raise _fail(url, exc) from exc
    click.echo(f"database at {after or 'base'}")


@command.command("current")
@url_option
def current(url: str | None) -> None:
    """The database's revision and the code's head."""
    from sqlalchemy.exc import SQLAlchemyError

    from hadis_celery import db

    try:
        engine = db.make_engine(url)
        try:
            rev = db.current_revision(engine)
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        raise _fail(url, exc) from exc
    click.echo(f"database: {rev or 'empty'}; code head: {db.head_revision()}")
