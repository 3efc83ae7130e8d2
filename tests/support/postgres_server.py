"""A real PostgreSQL server on a free loopback port, for the tests of the Postgres store
(``./run.sh test`` installs the Debian package; ``CANOPY_REQUIRE_POSTGRES=1`` makes its absence an error).

``postgres_server`` (one per test module) runs ``initdb`` into a temporary folder and starts
the server with ``pg_ctl``: TCP on 127.0.0.1 only, its unix socket in that folder, fsync off.
``postgres_url`` gives each test a database of its own (``CREATE DATABASE`` by ``createdb``),
as ``postgresql+asyncpg://canopy@127.0.0.1:PORT/NAME``. Postgres refuses to run as root, so
as root the server runs as the ``postgres`` user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid

import pytest

from tests.support import free_port

SUPERUSER = "canopy"


def _find_bin() -> str | None:
    """The folder holding initdb/pg_ctl/postgres/createdb: on PATH, else Debian's newest /usr/lib/postgresql/<ver>/bin."""
    on_path = shutil.which("initdb")
    if on_path:  # resolved: a symlink on PATH points at the folder that also has createdb
        folder = os.path.dirname(os.path.realpath(on_path))
        if all(os.path.exists(os.path.join(folder, tool)) for tool in ("pg_ctl", "createdb")):
            return folder

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.split("/postgresql/")[1].split("/")[0]))

    candidates = [os.path.dirname(path) for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")
                  if all(os.path.exists(os.path.join(os.path.dirname(path), tool)) for tool in ("pg_ctl", "createdb"))]
    return max(candidates, key=version) if candidates else None


PG_BIN = _find_bin()

if PG_BIN is None and os.environ.get("CANOPY_REQUIRE_POSTGRES") == "1":
    raise RuntimeError("PostgreSQL (initdb, pg_ctl) is required by ./run.sh test but is not installed "
                       "(apt-get install postgresql)")

needs_postgres = [
    pytest.mark.postgres,
    pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL binaries not installed (./run.sh installs them)"),
]


def _as_server_user() -> list[str]:
    """The command prefix that runs the server's programs: as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root and there is no 'postgres' user to run the PostgreSQL server as")
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", "postgres", "--"]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}")
    return result


@pytest.fixture(scope="module")
def postgres_server():
    """(host, port) of a fresh server that trusts ``canopy`` on loopback; stopped and deleted afterwards."""
    prefix = _as_server_user()
    # Not under pytest's tmp folder: that one is 0700 root's, which the postgres user cannot enter.
    workdir = tempfile.mkdtemp(prefix="canopy-postgres-")
    data, log = os.path.join(workdir, "data"), os.path.join(workdir, "server.log")
    if prefix:
        entry = pwd.getpwnam("postgres")
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    port = free_port()
    pg_ctl = os.path.join(PG_BIN, "pg_ctl")
    started = False
    try:
        _run([*prefix, os.path.join(PG_BIN, "initdb"), "-D", data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
              "--locale=C", "--no-sync"])
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={workdir} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        started = True
        _run([*prefix, pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "-t", "30", "start"])
        yield ("127.0.0.1", port)
    except BaseException:
        if os.path.exists(log):
            with open(log, errors="replace") as handle:
                print("postgres server log:\n" + handle.read()[-4000:])
        raise
    finally:
        if started:
            subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A new, empty database on the module's server, as an SQLAlchemy asyncpg URL."""
    host, port = postgres_server
    name = "t_" + uuid.uuid4().hex[:16]
    _run([os.path.join(PG_BIN, "createdb"), "-h", host, "-p", str(port), "-U", SUPERUSER, "-w", name])
    return f"postgresql+asyncpg://{SUPERUSER}@{host}:{port}/{name}"
