"""canopy.image.Image: validated directives and a deterministic Dockerfile."""

from __future__ import annotations

import pytest

from canopy.image import DEFAULT_BASE, PYTHON_RELEASES, Image


def _full() -> Image:
    return (
        Image(username="me", name="llm", tag="0.1", readme="an LLM")
        .from_base("nvidia/cuda:12.4.1-runtime-ubuntu22.04")
        .apt_install(["git", "curl", "git"])
        .apt_install("wget ca-certificates")
        .with_python("3.11")
        .with_env("HF_HUB_OFFLINE", "1")
        .with_env("GREETING", 'say "hi" to $USER \\o/')
        .add("app/", "/app/")
        .set_workdir("/app")
        .run_command("pip install -r requirements.txt")
        .set_user("chutes")
        .with_entrypoint(["python", "-m", "canopy.instance", "serve", "app:chute"])
    )


def test_render_is_deterministic_and_ordered() -> None:
    one, two = _full().render(), _full().render()
    assert one == two and str(_full()) == one
    lines = one.splitlines()
    assert lines[0] == "# syntax=docker/dockerfile:1"
    assert lines[2] == "FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04"
    assert lines[3] == ("RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
                        "--no-install-recommends curl git && rm -rf /var/lib/apt/lists/*")
    assert "--no-install-recommends ca-certificates wget &&" in lines[4]
    assert f"Python-{PYTHON_RELEASES['3.11']}.tar.xz" in one
    assert 'ENV HF_HUB_OFFLINE="1"' in lines
    assert 'ENV GREETING="say \\"hi\\" to \\$USER \\\\o/"' in lines
    assert 'ADD ["app/", "/app/"]' in lines
    assert lines[-1] == 'ENTRYPOINT ["python", "-m", "canopy.instance", "serve", "app:chute"]'
    assert lines.index("WORKDIR /app") < lines.index("RUN pip install -r requirements.txt") < lines.index("USER chutes")
    assert one.endswith("\n")


def test_ref_defaults_and_chaining() -> None:
    image = Image("me", "echo", "latest")
    assert image.ref == image.reference == "me/echo:latest"
    assert image.render().splitlines()[2] == f"FROM {DEFAULT_BASE}"
    assert image.run_command("true") is image
    assert image.from_base("debian:bookworm-slim").from_base("python:3.12-slim").base == "python:3.12-slim"
    assert Image("me", "x", "1").with_entrypoint("python -m 'my app'").directives == ['ENTRYPOINT ["python", "-m", "my app"]']
    assert Image("me", "x", "1").with_python("3.12.4").python == "3.12.4"
    assert Image("me", "x", "1").add("a.py", "/a.py").add("https://example.invalid/x.tgz", "/x").add(
        "a.py", "/b.py").sources() == ["a.py"]


def test_apt_install_sorts_and_dedupes() -> None:
    a = Image("me", "x", "1").apt_install(["vim", "git", "vim", "libssl-dev=3.0.1"]).render()
    b = Image("me", "x", "1").apt_install("libssl-dev=3.0.1 git vim").render()
    assert a == b and "install -y --no-install-recommends git libssl-dev=3.0.1 vim &&" in a


@pytest.mark.parametrize("args", [("Me", "x", "1"), ("me", "", "1"), ("me", "my llm", "1"), ("me", "x-", "1"),
                                  ("me", "x", "-1"), ("me", "x", ".1"), ("me", "x", "a" * 129), ("me", "x", "a b"),
                                  ("me", "x", "")])
def test_bad_identity_is_refused(args: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError):
        Image(*args)


@pytest.mark.parametrize("call", [
    lambda i: i.from_base("UPPER:1"),
    lambda i: i.from_base(""),
    lambda i: i.from_base("debian:-bad"),
    lambda i: i.run_command(""),
    lambda i: i.run_command("echo a\necho b"),
    lambda i: i.apt_install([]),
    lambda i: i.apt_install(["Bad_Pkg"]),
    lambda i: i.apt_install("git; rm -rf /"),
    lambda i: i.with_python("2.7"),
    lambda i: i.with_python("3.99"),
    lambda i: i.with_python("three"),
    lambda i: i.with_env("1BAD", "x"),
    lambda i: i.with_env("A-B", "x"),
    lambda i: i.with_env("", "x"),
    lambda i: i.with_env("OK", "two\nlines"),
    lambda i: i.with_env("OK", None),
    lambda i: i.add("/etc/passwd", "/x"),
    lambda i: i.add("../secret", "/x"),
    lambda i: i.add("a.py", ""),
    lambda i: i.set_workdir("relative/dir"),
    lambda i: i.set_workdir(""),
    lambda i: i.set_user("root; rm -rf /"),
    lambda i: i.set_user(""),
    lambda i: i.with_entrypoint([]),
    lambda i: i.with_entrypoint(""),
    lambda i: i.with_entrypoint([1, 2]),
])
def test_bad_directives_are_refused(call) -> None:  # noqa: ANN001
    image = Image("me", "x", "1")
    with pytest.raises(ValueError):
        call(image)
    assert image.directives == []


def test_valid_references_and_users() -> None:
    for ref in ("debian", "debian:bookworm-slim", "localhost:5000/team/img:1.0", "ghcr.io/a/b",
                "python@sha256:" + "a" * 64):
        assert Image("me", "x", "1").from_base(ref).base == ref
    for user in ("nobody", "1000", "1000:1000", "chutes:chutes"):
        assert Image("me", "x", "1").set_user(user).directives == [f"USER {user}"]


def test_the_chutes_sdk_keywords_and_varargs_entrypoint_work() -> None:
    """A chute written for the Chutes SDK ports by changing imports: same keyword names."""
    image = (
        Image(username="me", name="x", tag="1", readme="r")
        .from_base(base_image="python:3.12-slim")
        .apt_install(package=["git"])
        .run_command(command="pip install aiohttp")
        .with_env(key="HF_HOME", value="/cache")
        .add(source="app.py", dest="/app/app.py")
        .set_workdir(directory="/app")
        .set_user(user="nobody")
        .with_entrypoint("python", "-m", "app")
    )
    assert image.base == "python:3.12-slim"
    assert image.directives[-1] == 'ENTRYPOINT ["python", "-m", "app"]'
    assert "WORKDIR /app" in image.directives and "RUN pip install aiohttp" in image.directives
    with pytest.raises(ValueError):
        Image("me", "x", "1").with_entrypoint()
    with pytest.raises(ValueError):
        Image("me", "x", "1").with_entrypoint("python", 1)
