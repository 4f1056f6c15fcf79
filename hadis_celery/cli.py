"""The ``hadis`` command line: one click group; each ``hadis_celery.commands`` module adds
its own sub-command(s) through a module-level ``command`` (a click command or group)."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import click

from hadis_celery import __version__, commands
from hadis_celery.settings import SettingsError


class _Group(click.Group):
    """A malformed ``HADIS_*`` variable is one ``Error:`` line, whichever command reads it."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hadis")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """HADIS-Celery: hybrid adaptive diffusion serving on Celery and Redis."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for _info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{commands.__name__}.{_info.name}")
    if isinstance(getattr(_module, "command", None), click.Command):
        main.add_command(_module.command)


if __name__ == "__main__":
    main()
