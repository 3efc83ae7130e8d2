"""Inspect: what a bundled chute declares, read in a child process.

The seam between an uploaded bundle (``canopy.bundle``) and the API that accepts it: the
chute's code is imported only in a child, ``python -m canopy.inspect FOLDER ENTRY``, which
prints one JSON line on stdout::

    {"ok": true, "chute": {...ChuteInfo...}}                         # exit 0
    {"ok": false, "error": "<the problem, one line>", "detail": "<traceback tail>"}   # exit 1

``inspect_bundle(data, revision=...)`` unpacks a bundle into a temporary folder, runs that
child (``sys.executable``, cwd and ``PYTHONPATH`` the folder, an environment holding only
PATH, HOME, the locale and TMPDIR: no ``CANOPY_*`` secrets; through ``wrap`` when given: the
API passes the node's bubblewrap sandbox, ``node.sandbox.inspection_sandbox``), kills its process group on
timeout, and returns the ``ChuteInfo`` or raises ``ChuteInspectionError`` (a bad bundle
raises ``canopy.bundle.BundleError`` before anything runs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import IO, Any, Callable

from pydantic import ValidationError

from canopy.bundle import unpack_bundle
from canopy.chute import ChuteInfo

__all__ = ["ChuteInspectionError", "Wrap", "inspect_bundle", "inspect_folder", "main"]

#: Wraps the child's command line in a sandbox: ``wrap(command, folder)`` (the node's bubblewrap).
Wrap = Callable[[list[str], Path], list[str]]

DETAIL_LINES = 12  # how much of a traceback ``detail`` keeps (its last lines)
_MAX_OUTPUT = 16 * 1024 * 1024  # the most of the child's stdout read back
_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SYSTEMROOT")


class ChuteInspectionError(Exception):
    """The bundled chute cannot be loaded: ``str()`` is the problem in one line, ``detail``
    the last lines of the traceback (or of the child's stderr), "" when there is none."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


# -- the calling side --------------------------------------------------------------------


def inspect_bundle(data: bytes, *, revision: str | None = None, timeout_s: float = 60,
                   wrap: Wrap | None = None) -> ChuteInfo:
    """The ChuteInfo of the chute in bundle ``data``, read by a child process (run through
    ``wrap``, a sandbox, when given)."""
    with tempfile.TemporaryDirectory(prefix="canopy-inspect-") as tmp:
        folder = Path(tmp, "bundle")
        entry = unpack_bundle(data, folder, revision=revision)
        return inspect_folder(folder, entry, timeout_s=timeout_s, wrap=wrap)


def inspect_folder(folder: Path, entry: str, *, timeout_s: float = 60, wrap: Wrap | None = None) -> ChuteInfo:
    """The ChuteInfo of ``entry`` (``module:attr``) in the unpacked bundle ``folder``."""
    folder = Path(folder).resolve()
    env = {key: os.environ[key] for key in _KEPT_ENV if key in os.environ}
    env.update(PYTHONPATH=str(folder), PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
    command = [sys.executable, "-m", "canopy.inspect", str(folder), entry]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(wrap(command, folder) if wrap else command, cwd=folder,
                                   env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   start_new_session=True)
        finished = _wait_then_kill_group(process, timeout_s)
        if not finished:
            raise ChuteInspectionError(f"the chute took longer than {timeout_s:g} s to import; it was stopped "
                                       f"(load models in @chute.on_startup(), not at import)", _tail(err))
        out.seek(0)
        try:  # the whole of stdout is the one result: the chute's own prints went to stderr
            result = json.loads(out.read(_MAX_OUTPUT))
        except ValueError:
            result = None
        if not isinstance(result, dict) or "ok" not in result:
            code = process.returncode
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
            raise ChuteInspectionError(f"the inspection of the chute {how} without a result", _tail(err))
    if not result["ok"]:
        raise ChuteInspectionError(str(result.get("error") or "the chute cannot be loaded"), str(result.get("detail") or ""))
    try:
        return ChuteInfo.model_validate(result.get("chute"))
    except ValidationError as exc:
        raise ChuteInspectionError(f"the inspection printed an invalid ChuteInfo ({exc.error_count()} error(s))",
                                   _one_line(str(exc))) from None


def _wait_then_kill_group(process: subprocess.Popen, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the child, then SIGKILL its process group (what it left
    running, or the child itself on timeout); True when it finished in time. The child is
    reaped only after the kill, so the group id cannot have been reused meanwhile."""
    deadline = time.monotonic() + timeout_s
    if hasattr(os, "waitid"):
        while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        finished = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    else:  # macOS: no waitid; the group is killed on timeout only
        try:
            process.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            finished = False
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    return finished


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(stream: IO[bytes], size: int = 16384) -> str:
    stream.seek(0, os.SEEK_END)
    stream.seek(max(0, stream.tell() - size))
    return "\n".join(stream.read().decode(errors="replace").strip().splitlines()[-DETAIL_LINES:])


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the child ---------------------------------------------------------------------------


def describe_entry(folder: Path, entry: str) -> dict[str, Any]:
    """Load ``entry`` from ``folder`` in this process: the JSON result the child prints."""
    from canopy.chute import ChuteLoadError, load_chute
    from canopy.cord import CordDefinitionError

    prefixes = sorted({str(folder) + os.sep, str(Path(folder).resolve()) + os.sep}, key=len, reverse=True)

    def relative(text: str) -> str:
        for prefix in prefixes:
            text = text.replace(prefix, "")
        return text

    def failed(message: str, exc: BaseException | None) -> dict[str, Any]:
        lines = _traceback_lines(exc) if exc else []
        return {"ok": False, "error": _one_line(relative(message)),
                "detail": relative("\n".join(lines[-DETAIL_LINES:]))}

    try:
        chute = load_chute(entry)
        info = chute.describe()
    except ChuteLoadError as exc:
        cause = exc.__cause__
        if isinstance(cause, CordDefinitionError):
            return failed(f"invalid cord: {cause}", cause)
        return failed(str(exc), cause)
    except Exception as exc:  # noqa: BLE001 - e.g. a schema pydantic cannot build
        return failed(f"describing the chute {entry} failed: {type(exc).__name__}: {exc}", exc)
    seen: dict[tuple[str, str], str] = {}
    for cord in chute.cords.values():
        for route in ((cord.method, cord.path), ("public API " + cord.public_api_method, cord.public_api_path)):
            if route in seen:
                return failed(f"cord path clash: {' '.join(route)} is both the cord {seen[route]!r} "
                              f"and the cord {cord.name!r}; give one of them another path", None)
            seen[route] = cord.name
    return {"ok": True, "chute": info.model_dump(mode="json")}


def _traceback_lines(exc: BaseException) -> list[str]:
    """``exc``'s traceback without the import machinery's and the loader's own frames."""
    import importlib

    import canopy.chute

    machinery = (os.path.abspath(canopy.chute.__file__), os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep)
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if not frame.filename.startswith("<frozen") and not os.path.abspath(frame.filename).startswith(machinery)]
    text = "".join(["Traceback (most recent call last):\n", *traceback.format_list(frames),
                    *traceback.format_exception_only(exc)])
    return text.rstrip().splitlines()


def main(argv: list[str] | None = None) -> int:
    """``python -m canopy.inspect FOLDER ENTRY``: the one JSON line on stdout; exit 0 or 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m canopy.inspect FOLDER MODULE:ATTR", file=sys.stderr)
        return 2
    folder = Path(args[0]).resolve()
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the chute prints goes to stderr, never into the result
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    try:
        result = describe_entry(folder, args[1])
    except BaseException as exc:  # noqa: BLE001 - SystemExit in a factory, anything else: still one result
        result = {"ok": False, "error": _one_line(f"{type(exc).__name__}: {exc}"),
                  "detail": "\n".join(traceback.format_exc().rstrip().splitlines()[-DETAIL_LINES:])}
    sys.stdout.flush()
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # threads or atexit hooks the chute left must not keep the child alive
