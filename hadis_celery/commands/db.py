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


class Duration(click.ParamType):
    """A duration such as ``30d``, ``12h``, ``1d12h`` or plain seconds, more than 0."""

    name = "DURATION"

    def convert(self, value, param, ctx) -> float:
        from hadis_celery.retention import parse_duration

        if isinstance(value, float):
            return value
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be more than 0 (e.g. 30d)", param, ctx)
        return seconds


@command.command("prune")
@click.option("--older-than", "age", type=Duration(), required=True,
              help="Remove what ended or was made longer ago than this (30d, 12h, 1d12h, "
                   "or seconds).")
@click.option("--images", is_flag=True,
              help="Also remove image files no query row references, and .tmp leftovers.")
@click.option("--plans", is_flag=True,
              help="Also remove old plan rows (never the active plan, the latest, or one an "
                   "open query references).")
@click.option("--dry-run", is_flag=True, help="Count what would go; remove nothing.")
@url_option
def prune(age: float, images: bool, plans: bool, dry_run: bool, url: str | None) -> None:
    """Remove finished queries older than --older-than with their images, and dead Redis
    messages (of queries that ended or are gone); open queries are never touched.
    HADIS_PRUNE_AFTER makes the beat do this periodically (with --images and --plans)."""
    from sqlalchemy.exc import SQLAlchemyError

    from hadis_celery import db
    from hadis_celery.imagestore import image_store
    from hadis_celery.retention import format_duration
    from hadis_celery.retention import prune as run_prune
    from hadis_celery.settings import settings

    s = settings()
    try:
        engine = db.make_engine(url)
        try:
            db.ensure_schema(engine)
            live, queues = _redis(s)
            rep = run_prune(engine, age, store=image_store(s), live=live, queues=queues,
                            images=images, plans=plans, dry_run=dry_run)
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        raise _fail(url, exc) from exc
    click.echo(rep.line(format_duration(age)))


def _redis(s):
    """The live state and the model queues, or (None, ()) with a note when Redis or the
    deployment cannot be read (SQL and files are still pruned)."""
    try:
        from hadis_celery.deployment import load_table, model_queues
        from hadis_celery.live import LiveState

        live = LiveState.from_url(s.state_url)
        live.ping()
        return live, model_queues(load_table(s).registry)
    except Exception as exc:  # any reason: say it, and prune SQL and files anyway
        click.echo(f"note: Redis at {s.state_url} not pruned ({type(exc).__name__}: "
                   f"{str(exc).splitlines()[0][:160] if str(exc) else ''})", err=True)
        return None, ()
