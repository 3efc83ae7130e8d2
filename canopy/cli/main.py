"""The ``canopy`` console script: the root Typer app, whose command groups load only when run.

The seam between the shell and every command group (``canopy.cli.*``). A group's module
(and what it imports: the validator's store, bittensor, torch...) is imported only when
that command runs or its own ``--help`` is asked for, so ``canopy --help`` and
``canopy run`` start without the operator stack. Each entry names its module, the Typer
app or function it holds, and the one-line help ``canopy --help`` lists.
"""

from __future__ import annotations

import importlib
from typing import Any

import click
import typer
import typer.main
from typer.core import TyperGroup

from canopy import __version__

#: name -> (module, attribute, one-line help). The attribute is a Typer app (a group) or a
#: function (a single command).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("canopy.cli.build", "build", "Render a chute's Image and build it with Docker."),
    "devices": ("canopy.cli.devices", "app", "GPU ownership in the validator's store: list, reassign or pin, release."),
    "devnet": ("canopy.cli.devnet", "app", "The embedded devnet: a local chain in one SQLite file."),
    "graval": ("canopy.cli.graval", "app", "GraVal, the open GPU verification: calibration of local devices."),
    "keys": ("canopy.cli.keys", "app", "API keys of the public gateway: create, list, edit, disable/enable, delete."),
    "logs": ("canopy.cli.logs", "logs", "Show the API's request log, newest first (UTC times)."),
    "run": ("canopy.cli.run", "run", "Serve a chute over HTTP (Ctrl-C stops it; shutdown hooks run)."),
}


def load_command(name: str) -> click.Command:
    """The click command of one entry of COMMANDS (imports its module)."""
    module, attribute, _ = COMMANDS[name]
    target: Any = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):  # a group even with one command: `canopy graval calibrate`
        command: click.Command = typer.main.get_group(target)
    else:
        single = typer.Typer()
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A root group that imports a command's module only when that command is used; while
    it lists its commands (``canopy --help``) each is a stub holding its one-line help."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return super().get_command(ctx, name)
        if self._listing:
            help_ = COMMANDS[name][2]
            return click.Command(name, help=help_, short_help=help_)
        return load_command(name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    cls=LazyGroup,
    help="Canopy: a Bittensor subnet of verified GPUs serving chutes. `canopy COMMAND --help` explains each command.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def root() -> None:
    """Canopy: a Bittensor subnet of verified GPUs serving chutes. `canopy COMMAND --help` explains each command."""


@app.command()
def version() -> None:
    """Print the Canopy version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
