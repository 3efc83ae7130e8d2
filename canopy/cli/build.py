"""``canopy build module:chute --local``: render a chute's Image and build it with Docker.

Seam: the CLI side of canopy/image.py. Mounted as the ``build`` command by canopy/cli/main.py.
It loads the chute with ``canopy.chute.load_chute``, writes ``Dockerfile`` and
``.dockerignore`` (plus copies of the local files the image ``add()``s) into the output
folder, then runs ``docker build -t <ref> <folder>`` when a Docker engine answers
(``docker info`` succeeds). Without an engine it says which command installs or starts one
and exits 0, or 1 with ``--require-docker``. A chute whose image is a plain string names a
prebuilt image: there is nothing to build.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from canopy.paths import canopy_home
from canopy.image import Image, validate_tag

console = Console()

DOCKERIGNORE = "\n".join([".git", ".venv", ".canopy", "**/__pycache__", "**/*.pyc", ".pytest_cache", ""])
INSTALL_HINT = ("install Docker (Debian/Ubuntu: `sudo apt-get install docker.io`), then start the engine "
                "(`sudo systemctl start docker`, or `sudo dockerd &` where systemd is absent)")
START_HINT = ("start the engine (`sudo systemctl start docker`, or `sudo dockerd &` where systemd is absent) "
              "and make sure this user may use it (`sudo usermod -aG docker $USER`, then log in again)")


def _load_chute(ref: str) -> Any:
    """The chute named by ``ref`` (canopy.chute.load_chute); a ChuteLoadError ends the command."""
    from canopy.chute import ChuteLoadError, load_chute

    try:
        return load_chute(ref)
    except ChuteLoadError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def docker_status() -> tuple[bool, str]:
    """(True, version) when ``docker info`` answers; else (False, what to do about it)."""
    docker = shutil.which("docker")
    if docker is None:
        return False, f"the `docker` command is not installed: {INSTALL_HINT}"
    try:
        proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"`docker info` failed ({exc}); {START_HINT}"
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        return False, f"no Docker engine answers ({reason[-1] if reason else 'docker info failed'}); {START_HINT}"
    return True, proc.stdout.strip() or "unknown version"


def write_context(image: Image, output: Path, source_root: Path | None = None) -> Path:
    """Write the build context for ``image`` into ``output``: Dockerfile, .dockerignore and the
    files ``image.add()`` names (copied from ``source_root``, default the current directory).
    Returns the Dockerfile path. Raises FileNotFoundError naming a missing source."""
    root = (source_root or Path.cwd()).resolve()
    output.mkdir(parents=True, exist_ok=True)
    for source in image.sources():
        src = (root / source).resolve()
        if not src.exists():
            raise FileNotFoundError(f"image.add({source!r}, ...) names {src}, which does not exist")
        dest = output / source
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".venv"))
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    dockerfile = output / "Dockerfile"
    dockerfile.write_text(image.render())
    (output / ".dockerignore").write_text(DOCKERIGNORE)
    return dockerfile


def _docker_build(tag: str, context: Path) -> int:
    """Run ``docker build -t tag context``, echoing its output under a status line."""
    command = ["docker", "build", "-t", tag, str(context)]
    console.print(f"[bold]$ {' '.join(command)}[/bold]")
    with console.status(f"building {tag} ...") as status:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                console.print(line, markup=False, highlight=False)
                status.update(f"building {tag}: {line[:80]}")
        return proc.wait()


def build(
    ref: str = typer.Argument(..., help="The chute: MODULE:ATTR or path/to/file.py:ATTR (ATTR defaults to chute)."),
    local: bool = typer.Option(False, "--local", help="Build on this machine with Docker (the only mode)."),
    tag: str | None = typer.Option(None, "--tag", help="Override the image tag (default: the Image's)."),
    output: Path | None = typer.Option(None, "--output", help="Folder for the Dockerfile and build context "
                                       "(default: $CANOPY_HOME/builds/USERNAME-NAME-TAG)."),
    require_docker: bool = typer.Option(False, "--require-docker", help="Fail (exit 1) when no Docker engine answers."),
) -> None:
    """Render a chute's Image as a Dockerfile and build it with `docker build`."""
    if not local:
        console.print("[red]error:[/red] canopy builds images on this machine only: add --local "
                      f"(canopy build {ref} --local)")
        raise typer.Exit(2)
    chute = _load_chute(ref)
    image = getattr(chute, "image", None)
    name = f"{getattr(chute, 'username', '?')}/{getattr(chute, 'name', '?')}"
    if image is None:
        console.print(f"chute {name} has no image (Chute(image=None)): nothing to build; give it "
                      f"image=Image(...) to build one")
        return
    if isinstance(image, str):
        console.print(f"chute {name} uses the prebuilt image [bold]{image}[/bold]: nothing to build "
                      f"(`docker pull {image}` fetches it)")
        return
    if not isinstance(image, Image):
        console.print(f"[red]error:[/red] chute {name} has image of type {type(image).__name__}; "
                      f"use canopy.image.Image or an image reference string")
        raise typer.Exit(2)
    if tag is not None:
        try:
            image.tag = validate_tag(tag)
        except ValueError as exc:
            console.print(f"[red]error:[/red] --tag: {exc}")
            raise typer.Exit(2) from exc
    out = output or canopy_home() / "builds" / f"{image.username}-{image.name}-{image.tag}"
    try:
        dockerfile = write_context(image, out)
    except (FileNotFoundError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"[green]wrote[/green] {dockerfile} ({len(image.directives)} directives after FROM {image.base})")
    ok, detail = docker_status()
    if not ok:
        color = "red" if require_docker else "yellow"
        console.print(f"[{color}]docker build skipped:[/{color}] {detail}")
        console.print(f"once Docker runs: docker build -t {image.ref} {out}")
        if require_docker:
            raise typer.Exit(1)
        return
    console.print(f"Docker engine {detail} answers")
    code = _docker_build(image.ref, out)
    if code != 0:
        console.print(f"[red]docker build failed[/red] (exit {code})")
        raise typer.Exit(code)
    console.print(f"[green]built[/green] {image.ref}")
