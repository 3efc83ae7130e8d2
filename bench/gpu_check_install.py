"""Install the GPU check kit's wheels without network: ``python3 bench/gpu_check_install.py WHEELS TARGET``.

``./run.sh gpu-check`` runs it on a GPU host whose interpreter lacks the few packages of
``bench/gpu_check_wheels.txt``. Stdlib only (it runs before any of them exists). With pip:
``pip install --no-index --find-links WHEELS --target TARGET -r bench/gpu_check_wheels.txt``
(a target folder put on PYTHONPATH, so the host's own site-packages are left alone and no
root is needed: a distribution's Python often refuses ``pip install`` outside a venv,
PEP 668). Without pip: each requirement's wheel for this interpreter is unzipped into
TARGET (they are all pure Python but pydantic-core, which has one wheel per CPython
version: a wheel is a zip of what site-packages holds).
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().with_name("gpu_check_wheels.txt")


def requirements() -> list[tuple[str, str]]:
    """(distribution, version) of each line whose marker holds for this interpreter."""
    wanted = []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, _, marker = line.partition(";")
        if marker and not _marker_holds(marker.strip()):
            continue
        name, _, version = spec.strip().partition("==")
        wanted.append((name.strip(), version.strip()))
    return wanted


def _marker_holds(marker: str) -> bool:
    found = re.fullmatch(r'python_version\s*(<|<=|>|>=|==|!=)\s*"(\d+)\.(\d+)"', marker)
    if found is None:
        raise SystemExit(f"gpu_check_install: cannot evaluate the marker {marker!r}")
    here, there = sys.version_info[:2], (int(found.group(2)), int(found.group(3)))
    return {"<": here < there, "<=": here <= there, ">": here > there, ">=": here >= there, "==": here == there,
            "!=": here != there}[found.group(1)]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_for(folder: Path, name: str, version: str) -> Path:
    """The wheel of name==version in ``folder`` that this interpreter can use."""
    python = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    machine = platform.machine()
    for path in sorted(folder.glob("*.whl")):
        parts = path.name[:-4].split("-")
        if len(parts) < 5 or _normal(parts[0]) != _normal(name) or parts[1] != version:
            continue
        tags, abis, platforms = parts[-3].split("."), parts[-2].split("."), parts[-1].split(".")
        if not ("py3" in tags or python in tags):
            continue
        if not ("none" in abis or python in abis or "abi3" in abis):
            continue
        if "any" in platforms or any(tag.endswith(machine) and tag.startswith("manylinux") for tag in platforms):
            return path
    raise SystemExit(f"gpu_check_install: no wheel of {name}=={version} for {python} on {machine} in {folder}; "
                     "run ./run.sh gpu-check-wheels again where there is network")


def unpack(folder: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name, version in requirements():
        wheel = wheel_for(folder, name, version)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
        print(f"unpacked {wheel.name}", file=sys.stderr)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python3 bench/gpu_check_install.py WHEELS_FOLDER TARGET_FOLDER")
    folder, target = Path(argv[0]), Path(argv[1])
    if not folder.is_dir():
        raise SystemExit(f"gpu_check_install: no wheel folder {folder}: run ./run.sh gpu-check-wheels where there is "
                         "network and copy the folder to this host")
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                        "--find-links", str(folder), "--target", str(target), "--upgrade", "-r", str(REQUIREMENTS)],
                       check=True)
    else:
        unpack(folder, target)


if __name__ == "__main__":
    main(sys.argv[1:])
