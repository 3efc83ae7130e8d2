"""The ``Image`` builder: a chute's container image, rendered as a deterministic Dockerfile.

Seam: chute authors describe the image in Python (shaped after the Chutes SDK ``Image``) and
pass it as ``Chute(image=...)``; ``canopy build module:chute --local`` (canopy/cli/build.py)
renders it and runs ``docker build``; ``canopy.chute.image_reference`` names it in ChuteInfo
(``username/name:tag``, the same as ``Image.ref``).

Every method validates its input (``ValueError`` naming the value and the fix), records one
directive and returns the image, so calls chain::

    image = (
        Image(username="me", name="llm", tag="0.1")
        .from_base("debian:bookworm-slim")
        .apt_install(["git", "curl"])
        .with_python("3.11")
        .with_env("HF_HUB_OFFLINE", "1")
        .add("app/", "/app/")
        .set_workdir("/app")
        .set_user("nobody")
        .with_entrypoint(["python", "-m", "canopy.instance", "serve", "app:chute"])
    )
    print(image.render())

The same calls always render byte-identical text: nothing depends on the time, the machine or
dict order; ``apt_install`` sorts and de-duplicates its packages.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Iterable

#: Base used when ``from_base`` was never called.
DEFAULT_BASE = "python:3.11-slim-bookworm"
#: The CPython release ``with_python("3.X")`` builds (pinned so renders never drift).
PYTHON_RELEASES = {"3.10": "3.10.18", "3.11": "3.11.13", "3.12": "3.12.11", "3.13": "3.13.5"}
#: Debian packages needed to compile CPython in ``with_python``.
PYTHON_BUILD_DEPS = (
    "build-essential", "ca-certificates", "curl", "libbz2-dev", "libffi-dev", "libgdbm-dev", "liblzma-dev",
    "libncursesw5-dev", "libreadline-dev", "libsqlite3-dev", "libssl-dev", "tk-dev", "uuid-dev", "xz-utils",
    "zlib1g-dev",
)

# Docker reference grammar (distribution/reference): path components and tags.
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::\d+)?$")
#: an environment variable's name (``with_env``; ``canopy.image_environment`` checks announced ones)
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_APT_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?(?:=[A-Za-z0-9.+:~_-]+)?$")
_USER = re.compile(r"^(?:[a-z_][a-z0-9_-]*\$?|\d+)(?::(?:[a-z_][a-z0-9_-]*|\d+))?$")
_PYTHON = re.compile(r"^3\.(\d+)(?:\.(\d+))?$")
# A requirement from the package index (PEP 508 name, extras, version specifiers; no URL, path or option)
_VERSION_CLAUSE = r"(?:===|==|>=|<=|~=|!=|>|<)\s*[A-Za-z0-9.*+!_-]+"
_REQUIREMENT = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\])?"
                          rf"(?:{_VERSION_CLAUSE}(?:,{_VERSION_CLAUSE})*)?$")


def _text(value: object, what: str, fix: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}; {fix}")
    value = value.strip()
    if not value:
        raise ValueError(f"{what} must not be empty; {fix}")
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ValueError(f"{what} {value!r} must be a single line; {fix}")
    return value


def _component(value: object, what: str) -> str:
    text = _text(value, what, "use lowercase letters, digits and . _ - (e.g. 'my-llm')")
    if not _COMPONENT.match(text):
        raise ValueError(
            f"{what} {text!r} is not a valid Docker repository name: use lowercase letters and digits, "
            f"separated by '.', '_', '__' or '-' (e.g. {re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-') or 'my-llm'!r})"
        )
    return text


def validate_tag(tag: object) -> str:
    """A Docker tag: up to 128 of ``[A-Za-z0-9_.-]``, not starting with '.' or '-'."""
    text = _text(tag, "image tag", "use e.g. '0.1' or 'latest'")
    if not _TAG.match(text):
        raise ValueError(f"image tag {text!r} is invalid: up to 128 letters, digits, '_', '.', '-', "
                         f"not starting with '.' or '-' (e.g. '0.1')")
    return text


def validate_reference(ref: object) -> str:
    """A full image reference such as ``nvidia/cuda:12.4.1-runtime-ubuntu22.04`` or ``name@sha256:...``."""
    text = _text(ref, "base image", "give a reference such as 'debian:bookworm-slim'")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise ValueError(f"base image {text!r} has an invalid digest {digest!r} (expected e.g. sha256:<64 hex>)")
    name, tag = rest, None
    if ":" in rest.rsplit("/", 1)[-1]:
        name, tag = rest.rsplit(":", 1)
    if tag is not None:
        validate_tag(tag)
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if not _HOST.match(parts[0]):
            raise ValueError(f"base image {text!r} has an invalid registry host {parts[0]!r}")
        parts = parts[1:]
    if not parts or not all(_COMPONENT.match(p) for p in parts):
        raise ValueError(f"base image {text!r} is not a valid Docker reference: path parts must be lowercase "
                         f"letters/digits separated by '.', '_', '__' or '-' (e.g. 'debian:bookworm-slim')")
    return text


def check_requirement(value: object) -> str:
    """``value`` when it is a requirement pip takes from the package index (``name[extra]==1.2``),
    else ValueError naming the rule: no options, paths or URLs."""
    text = re.sub(r"\s*(===|==|>=|<=|~=|!=|>|<|,)\s*", r"\1", _text(value, "pip requirement", "give e.g. 'cowsay==6.1'"))
    if not _REQUIREMENT.match(text):
        raise ValueError(f"pip requirement {text!r} is not a package from the index: give a name with optional "
                         f"[extras] and version specifiers (e.g. 'cowsay==6.1', 'httpx>=0.27,<1'), no options, "
                         f"paths or URLs")
    return text


def _quote(value: str) -> str:
    """A double-quoted Dockerfile word (ENV values): backslash, quote and ``$`` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


class Image:
    """A container image for a chute: ``Image(username, name, tag, readme="")`` plus chained directives.

    ``ref`` (and ``reference``) is ``"username/name:tag"``; ``render()`` (and ``str()``) is the
    Dockerfile; ``directives`` is the list of rendered instructions after ``FROM``.
    """

    def __init__(self, username: str, name: str, tag: str, readme: str = "") -> None:
        self.username = _component(username, "image username")
        self.name = _component(name, "image name")
        self.tag = validate_tag(tag)
        if not isinstance(readme, str):
            raise ValueError(f"readme must be a string, got {type(readme).__name__}")
        self.readme = readme
        self.base = DEFAULT_BASE
        self.python: str | None = None
        self.directives: list[str] = []
        # (method, argument) per call, in call order: what ``canopy.image_environment`` reads to
        # tell the steps a sandbox runtime serves (from_base, pip, env) from those needing root
        self.steps: list[tuple[str, str]] = []

    # -- identity ----------------------------------------------------------------------------

    @property
    def ref(self) -> str:
        """``username/name:tag``: what ``docker build -t`` gets and ChuteInfo.image shows."""
        return f"{self.username}/{self.name}:{self.tag}"

    reference = ref

    def __repr__(self) -> str:
        return f"Image({self.ref!r}, base={self.base!r}, directives={len(self.directives)})"

    def __str__(self) -> str:
        return self.render()

    # -- directives --------------------------------------------------------------------------

    def from_base(self, base_image: str) -> "Image":
        """Start from ``base_image`` (a Docker reference). Calling it again replaces the base."""
        self.base = validate_reference(base_image)
        return self

    def run_command(self, command: str) -> "Image":
        """``RUN command`` (one shell line; chain with ``&&`` or call again for more)."""
        command = _text(command, "run_command", "join steps with '&&' or call run_command again")
        self.directives.append("RUN " + command)
        self.steps.append(("run_command", command))
        return self

    def pip_install(self, packages: str | Iterable[str]) -> "Image":
        """``RUN pip install --no-cache-dir ...`` of requirement specifiers from the package index
        (``"cowsay==6.1"``, ``["httpx>=0.27", "orjson"]``; no options, paths or URLs). The
        sandbox runtime serves them from a cached environment per image on the miner."""
        names = packages.split() if isinstance(packages, str) else list(packages) if packages is not None else []
        if not names:
            raise ValueError("pip_install needs at least one requirement (e.g. pip_install('cowsay==6.1'))")
        names = [check_requirement(name) for name in names]
        self.run_command("pip install --no-cache-dir " + " ".join(names))
        return self

    def apt_install(self, package: str | Iterable[str]) -> "Image":
        """Install Debian packages (space-separated string or list), sorted and de-duplicated,
        with ``--no-install-recommends``, cleaning the apt lists in the same layer."""
        names = package.split() if isinstance(package, str) else list(package) if package is not None else []
        if not names:
            raise ValueError("apt_install needs at least one package name (e.g. apt_install(['git', 'curl']))")
        for pkg in names:
            if not isinstance(pkg, str) or not _APT_PACKAGE.match(pkg):
                raise ValueError(f"apt package {pkg!r} is not a valid Debian package name "
                                 f"(lowercase letters, digits, '+', '-', '.', optional '=VERSION')")
        self.directives.append(_apt_run(names))
        self.steps.append(("apt_install", " ".join(sorted(set(names)))))
        return self

    def with_python(self, version: str = "3.11") -> "Image":
        """Build CPython ``version`` (``3.X`` -> the pinned release in PYTHON_RELEASES, or ``3.X.Y``)
        from source into /usr/local, with ``python``/``python3``/``pip`` pointing at it."""
        text = _text(version, "python version", "use e.g. '3.11' or '3.11.13'")
        match = _PYTHON.match(text)
        if not match:
            raise ValueError(f"python version {text!r} is invalid: use '3.X' or '3.X.Y' (e.g. '3.11')")
        minor = f"3.{match.group(1)}"
        full = text if match.group(2) is not None else PYTHON_RELEASES.get(minor)
        if full is None:
            raise ValueError(f"python {text!r} has no pinned release; give the full version (e.g. '{minor}.0') "
                             f"or one of {', '.join(sorted(PYTHON_RELEASES))}")
        self.python = full
        self.directives.append(_apt_run(PYTHON_BUILD_DEPS))
        self.directives.append(
            "RUN set -eux; "
            f"curl -fsSL https://www.python.org/ftp/python/{full}/Python-{full}.tar.xz -o /tmp/python.tar.xz; "
            "mkdir -p /usr/src/python; tar -xJf /tmp/python.tar.xz -C /usr/src/python --strip-components=1; "
            "cd /usr/src/python; ./configure --prefix=/usr/local --with-ensurepip=install --enable-shared "
            "LDFLAGS=-Wl,-rpath=/usr/local/lib; "
            'make -j"$(nproc)"; make altinstall; cd /; rm -rf /usr/src/python /tmp/python.tar.xz; '
            f"ln -sf /usr/local/bin/python{minor} /usr/local/bin/python3; "
            f"ln -sf /usr/local/bin/python{minor} /usr/local/bin/python; "
            f"ln -sf /usr/local/bin/pip{minor} /usr/local/bin/pip3; "
            f"ln -sf /usr/local/bin/pip{minor} /usr/local/bin/pip; "
            "python --version"
        )
        self.steps.append(("with_python", full))
        return self

    def with_env(self, key: str, value: str) -> "Image":
        """``ENV key="value"`` (key: letters, digits, '_', not starting with a digit)."""
        key = _text(key, "env key", "use e.g. 'HF_HOME'")
        if not ENV_KEY.match(key):
            raise ValueError(f"env key {key!r} is invalid: letters, digits and '_', not starting with a digit")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"env value for {key} must be a string or number, got {type(value).__name__}")
        value = str(value)
        if "\n" in value or "\r" in value or "\x00" in value:
            raise ValueError(f"env value for {key} must be a single line")
        self.directives.append(f"ENV {key}={_quote(value)}")
        self.steps.append(("with_env", f"{key}={value}"))
        return self

    def add(self, source: str, dest: str) -> "Image":
        """``ADD ["source", "dest"]``: source relative to the build context (``canopy build``
        copies it there) or an http(s) URL; dest inside the image."""
        source = _text(source, "add() source", "give a path relative to the current directory or a URL")
        dest = _text(dest, "add() dest", "give a path inside the image (e.g. '/app/')")
        if not source.startswith(("http://", "https://")):
            parts = source.replace("\\", "/").split("/")
            if source.startswith(("/", "~")) or ".." in parts:
                raise ValueError(f"add() source {source!r} must be relative to the build context "
                                 f"(inside the current directory, no '..' or absolute paths) or an http(s) URL")
        self.directives.append("ADD " + json.dumps([source, dest]))
        self.steps.append(("add", f"{source} -> {dest}"))
        return self

    def set_workdir(self, directory: str) -> "Image":
        """``WORKDIR directory`` (an absolute path)."""
        path = _text(directory, "workdir", "give an absolute path such as '/app'")
        if not path.startswith("/"):
            raise ValueError(f"workdir {path!r} must be an absolute path (e.g. '/app')")
        self.directives.append(f"WORKDIR {path}")
        return self

    def set_user(self, user: str) -> "Image":
        """``USER user`` (``name``, ``uid``, ``name:group`` or ``uid:gid``)."""
        text = _text(user, "user", "give e.g. 'nobody' or '1000:1000'")
        if not _USER.match(text):
            raise ValueError(f"user {text!r} is invalid: use a lowercase name or a numeric uid, "
                             f"optionally ':group' (e.g. 'chutes' or '1000:1000')")
        self.directives.append(f"USER {text}")
        return self

    def with_entrypoint(self, *args: str | list[str]) -> "Image":
        """``ENTRYPOINT [...]`` in exec form, from a list, one string (split like a shell would)
        or several strings (``with_entrypoint("python", "-m", "app")``, as in the Chutes SDK)."""
        if len(args) == 1:
            entrypoint: object = args[0]
        elif len(args) > 1 and all(isinstance(a, str) for a in args):
            entrypoint = list(args)
        else:
            raise ValueError("with_entrypoint takes a list of strings, one string or several strings")
        argv: list[object]
        if isinstance(entrypoint, str):
            try:
                argv = list(shlex.split(entrypoint))
            except ValueError as exc:
                raise ValueError(f"entrypoint {entrypoint!r} cannot be split: {exc}") from exc
        elif isinstance(entrypoint, (list, tuple)):
            argv = list(entrypoint)
        else:
            raise ValueError(f"entrypoint must be a list of strings or a string, got {type(entrypoint).__name__}")
        words = [a for a in argv if isinstance(a, str)]
        if not argv or len(words) != len(argv) or not words[0].strip():
            raise ValueError("entrypoint must be a non-empty list of strings (e.g. ['python', '-m', 'app'])")
        if any("\n" in a or "\x00" in a for a in words):
            raise ValueError("entrypoint arguments must be single lines")
        self.directives = [d for d in self.directives if not d.startswith("ENTRYPOINT ")]
        self.directives.append("ENTRYPOINT " + json.dumps(words))
        return self

    # -- output ------------------------------------------------------------------------------

    def sources(self) -> list[str]:
        """Local paths named by ``add()`` (what the build context must hold), in call order."""
        out: list[str] = []
        for directive in self.directives:
            if directive.startswith("ADD "):
                source = json.loads(directive[4:])[0]
                if not source.startswith(("http://", "https://")) and source not in out:
                    out.append(source)
        return out

    def render(self) -> str:
        """The Dockerfile: a header comment, ``FROM``, then each directive in call order."""
        lines = [
            "# syntax=docker/dockerfile:1",
            f"# {self.ref}: rendered by canopy.image.Image; edit the chute's Image, not this file.",
            f"FROM {self.base}",
        ]
        lines.extend(self.directives)
        return "\n".join(lines) + "\n"


def _apt_run(names: Iterable[str]) -> str:
    packages = " ".join(sorted(set(names)))
    return (
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        f"{packages} && rm -rf /var/lib/apt/lists/*"
    )
