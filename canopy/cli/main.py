"""The ``canopy`` console script: the root Typer app that mounts each command group."""

from __future__ import annotations

import typer

from canopy import __version__
from canopy.cli import build as build_cli
from canopy.cli import devices, devnet, graval, keys, logs, run

app = typer.Typer(
    help="Canopy: a Bittensor subnet of verified GPUs serving chutes. `canopy COMMAND --help` explains each command.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(devices.app, name="devices")
app.add_typer(devnet.app, name="devnet")
app.add_typer(graval.app, name="graval")
app.add_typer(keys.app, name="keys")
app.command("logs")(logs.logs)
app.command("run")(run.run)
app.command(name="build")(build_cli.build)


@app.command()
def version() -> None:
    """Print the Canopy version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
