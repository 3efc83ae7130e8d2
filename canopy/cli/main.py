"""The ``canopy`` console script: the root Typer app, whose command groups load only when run.

The seam between the shell and every command group: the SDK's (``canopy.cli.*``) and the
node's (``neurons.cli.*``, which need the ``node`` extra). A group's module (and what it
imports: the validator's store, bittensor, torch...) is imported only when that command
runs or its own ``--help`` is asked for, so ``canopy --help`` and ``canopy run`` start
without the operator stack, and a node command where only the SDK is installed ends with
one line naming ``pip install "canopy[node]"``. Each entry names its module, the Typer
app or function it holds, and the one-line help ``canopy --help`` lists.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:  # typer's own click (vendored as typer._click): the types its classes declare
    from typer._click import Command, Context, HelpFormatter

from canopy import __version__
from canopy.extras import MissingExtra

#: name -> (module, attribute, one-line help). The attribute is a Typer app (a group) or a
#: function (a single command).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("canopy.cli.build", "build", "Render a chute's Image and build it with Docker."),
    "chutes": ("canopy.cli.chutes", "app", "Your chutes in the API's registry: list, get, delete."),
    "deploy": ("canopy.cli.deploy", "deploy", "Bundle a chute's source and deploy it to the API (public URLs)."),
    "devices": ("neurons.cli.devices", "app", "GPU ownership in the validator's store: list, reassign or pin, release."),
    "devnet": ("neurons.cli.devnet", "app", "The embedded devnet: a local chain in one SQLite file."),
    "graval": ("neurons.cli.graval", "app", "GraVal, the open GPU verification: calibration of local devices."),
    "keys": ("neurons.cli.keys", "app", "API keys of the public gateway: create, list, edit, disable/enable, delete."),
    "logs": ("neurons.cli.logs", "logs", "Show the API's request log, newest first (UTC times)."),
    "run": ("canopy.cli.run", "run", "Serve a chute over HTTP (Ctrl-C stops it; shutdown hooks run)."),
    "warmup": ("canopy.cli.chutes", "warmup", "Ask the network to start an instance of a deployed chute."),
}


def load_command(name: str) -> Command:
    """The click command of one entry of COMMANDS (imports its module)."""
    module, attribute, _ = COMMANDS[name]
    try:
        target: Any = getattr(importlib.import_module(module), attribute)
    except MissingExtra as missing:  # a node command where only the SDK is installed
        typer.echo(f"Error: {missing}", err=True)
        raise typer.Exit(1) from None
    if isinstance(target, typer.Typer):  # a group even with one command: `canopy graval calibrate`
        command: Command = typer.main.get_group(target)
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

    def list_commands(self, ctx: Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: Context, name: str) -> Command | None:
        if name not in COMMANDS:
            return super().get_command(ctx, name)
        if self._listing:
            help_ = COMMANDS[name][2]
            return TyperCommand(name, help=help_, short_help=help_)
        return load_command(name)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
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
