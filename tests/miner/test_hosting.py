"""miner.hosting: the hosting config file, describing chutes in a child process, placement."""

from __future__ import annotations

import pytest

from canopy.chute import ChuteInfo
from node.config import ConfigError, load_settings
from canopy.node_selector import NodeSelector
from miner.hosting import (
    ChuteEntry, DescribeError, HostingConfig, HostingConfigError, describe_chute, load_hosting_config,
    parse_hosting_config, plan_hosting,
)
from tests.support import ROOT
from tests.support.chutes import BROKEN_IMPORT, ECHO, GPU_ONLY, cpu_devices, fake_h100s


def test_a_valid_config_parses_with_defaults_and_overrides(tmp_path):
    path = tmp_path / "chutes.toml"
    path.write_text('[[chutes]]\nref = "examples.echo_chute:chute"\n\n'
                    '[[chutes]]\nref = "my/llm.py:chute"\ninstances = 4\nconcurrency = 8\n')
    config = load_hosting_config(path)
    assert config.chutes == [ChuteEntry(ref="examples.echo_chute:chute"),
                             ChuteEntry(ref="my/llm.py:chute", instances=4, concurrency=8)]
    assert config.chutes[0].instances == 1 and config.chutes[0].concurrency is None
    assert parse_hosting_config("") == HostingConfig(chutes=[])


def test_a_missing_file_names_the_flag(tmp_path):
    with pytest.raises(HostingConfigError, match=r"does not exist: fix --chutes.config"):
        load_hosting_config(tmp_path / "nope.toml")


def test_bad_toml_names_the_line(tmp_path):
    path = tmp_path / "chutes.toml"
    path.write_text('[[chutes]]\nref = "a:chute"\ninstances = = 2\n')
    with pytest.raises(HostingConfigError, match=r"chutes.toml is not valid TOML: .*line 3"):
        load_hosting_config(path)


@pytest.mark.parametrize(("text", "message"), [
    ('[[chutes]]\nref = "a:chute"\ninstance = 2\n', r"chutes\[1\]\.instance: unknown key \(allowed: ref, instances, concurrency\)"),
    ('replicas = 3\n', r"replicas: unknown key \(allowed: chutes\)"),
    ('[[chutes]]\nref = "a:chute"\n[[chutes]]\nref = "b:chute"\ninstances = 0\n', r"chutes\[2\]\.instances: .*greater than or equal to 1"),
    ('[[chutes]]\nref = "a:chute"\ninstances = 65\n', r"chutes\[1\]\.instances: .*less than or equal to 64"),
    ('[[chutes]]\ninstances = 1\n', r"chutes\[1\]\.ref: Field required"),
    ('[[chutes]]\nref = "a:chute"\nconcurrency = 0\n', r"chutes\[1\]\.concurrency"),
])
def test_invalid_entries_are_named(text, message):
    with pytest.raises(HostingConfigError, match=message):
        parse_hosting_config(text, "chutes.toml")


def test_the_miner_settings_take_the_chutes_flags():
    settings = load_settings(["--chutes.config", "chutes.toml", "--chutes.port_min", "20000", "--chutes.port_max",
                              "20009", "--chutes.invoke_timeout_s", "30", "--chutes.max_payload_bytes", "4096"])
    chutes = settings.chutes
    assert (chutes.config, chutes.port_min, chutes.port_max) == ("chutes.toml", 20000, 20009)
    assert chutes.invoke_timeout_s == 30 and chutes.max_payload_bytes == 4096
    assert load_settings([]).chutes.config is None
    with pytest.raises(ConfigError, match="port range is empty"):
        load_settings(["--chutes.port_min", "20000", "--chutes.port_max", "19999"])


# --- describe (a real child process) ------------------------------------------------------------


async def test_describe_runs_in_a_child_process_and_returns_the_chute_info():
    info = await describe_chute(ECHO, cwd=ROOT)
    assert info.name == "echo" and info.username == "tests" and info.concurrency == 2
    assert {cord.path for cord in info.cords} >= {"/echo", "/tokens", "/sleep"}
    echo = next(cord for cord in info.cords if cord.path == "/echo")
    assert echo.input_schema["required"] == ["text"] and echo.public_api_path == "/v1/echo"


async def test_describe_reports_why_a_module_does_not_import():
    with pytest.raises(DescribeError, match="this_module_does_not_exist"):
        await describe_chute(BROKEN_IMPORT, cwd=ROOT)


async def test_a_broken_or_unsatisfiable_chute_is_refused_with_its_reason_and_the_rest_hosted():
    config = HostingConfig(chutes=[ChuteEntry(ref=BROKEN_IMPORT), ChuteEntry(ref=ECHO, instances=2),
                                   ChuteEntry(ref=GPU_ONLY)])
    plan = await plan_hosting(config, cpu_devices(1), describe=lambda ref: describe_chute(ref, cwd=ROOT))
    assert [chute.info.name for chute in plan.hosted] == ["echo"]
    assert len(plan.hosted[0].devices) == 2, "the CPU pseudo-device is shared between instances"
    broken, gpu_only = plan.refused
    assert broken.ref == BROKEN_IMPORT and "does not load" in broken.reason and "this_module_does_not_exist" in broken.reason
    assert gpu_only.ref == GPU_ONLY and gpu_only.chute_id is not None
    assert "needs 2 GPU(s) with >= 80 GB" in gpu_only.reason
    [hosted] = plan.hosted_chutes()
    assert hosted.instances == 2 and hosted.concurrency == 2 and hosted.ref == ECHO
    specs = plan.instance_specs()
    assert [spec.ref for spec in specs] == [ECHO, ECHO] and not any(spec.concurrency_override for spec in specs)


# --- placement (described chutes stand in for the child process) --------------------------------------------


def fake_info(name: str, *, gpus: int = 1, vram: int = 16, include: list[str] | None = None, concurrency: int = 1) -> ChuteInfo:
    selector = NodeSelector(gpu_count=gpus, min_vram_gb_per_gpu=vram, include=include)
    return ChuteInfo(chute_id=f"id-{name}", username="u", name=name, tagline="", readme="", image="",
                     node_selector=selector, concurrency=concurrency, max_instances=1, cords=[])


def describer(**infos: ChuteInfo):
    async def describe(ref: str) -> ChuteInfo:
        return infos[ref.split(":")[0]]
    return describe


async def test_gpus_are_never_shared_between_instances():
    infos = describer(a=fake_info("a"), b=fake_info("b", gpus=2), c=fake_info("c", concurrency=3))
    config = HostingConfig(chutes=[ChuteEntry(ref="a:chute", instances=2), ChuteEntry(ref="b:chute"),
                                   ChuteEntry(ref="c:chute", instances=3, concurrency=5)])
    plan = await plan_hosting(config, fake_h100s(5), describe=infos)
    a, b, c = plan.hosted
    assert [[d.index for d in devices] for devices in a.devices] == [[0], [1]]
    assert [[d.index for d in devices] for devices in b.devices] == [[2, 3]]
    assert [[d.index for d in devices] for devices in c.devices] == [[4]], "only one GPU was left for c"
    assert c.concurrency == 5 and all(spec.concurrency_override for spec in c.instance_specs())
    assert plan.refused == []
    uuids = [d.uuid for spec in plan.instance_specs() for d in spec.devices]
    assert len(uuids) == len(set(uuids)) == 5


async def test_a_chute_left_without_free_gpus_is_refused():
    infos = describer(a=fake_info("a"), b=fake_info("b"), c=fake_info("c", include=["a100_80gb"]))
    config = HostingConfig(chutes=[ChuteEntry(ref="a:chute", instances=2), ChuteEntry(ref="b:chute"),
                                   ChuteEntry(ref="c:chute"), ChuteEntry(ref="a:again")])
    plan = await plan_hosting(config, fake_h100s(2), describe=infos)
    assert [chute.info.name for chute in plan.hosted] == ["a"]
    taken, wrong_model, duplicate = plan.refused
    assert taken.ref == "b:chute" and "taken by the chutes listed before it" in taken.reason
    assert wrong_model.ref == "c:chute" and "include=['a100_80gb']" in wrong_model.reason
    assert duplicate.ref == "a:again" and "already listed as a:chute" in duplicate.reason


async def test_no_devices_refuses_everything():
    plan = await plan_hosting(HostingConfig(chutes=[ChuteEntry(ref="a:chute")]), [], describe=describer(a=fake_info("a")))
    assert plan.hosted == [] and "no devices are available" in plan.refused[0].reason


async def test_the_miner_entry_point_refuses_a_bad_config_and_hosts_nothing_without_one(tmp_path):
    from node.config import ChutesSettings
    from node.runtime import StartupError
    from neurons.miner import hosting_plan

    with pytest.raises(StartupError, match="does not exist: fix --chutes.config"):
        await hosting_plan(ChutesSettings(config=str(tmp_path / "missing.toml")), cpu_devices(1))
    plan = await hosting_plan(ChutesSettings(), cpu_devices(1))
    assert plan.hosted == [] and plan.refused == []


async def test_hosting_file_chutes_are_pinned_and_carry_the_revision_canopy_deploy_gives(tmp_path):
    from canopy.bundle import build_bundle
    from node.config import ChutesSettings
    from neurons.miner import hosting_plan

    config = tmp_path / "chutes.toml"
    config.write_text('[[chutes]]\nref = "tests/miner/chutes/echo.py:chute"\n\n'
                      '[[chutes]]\nref = "tests.miner.chutes.stubborn:chute"\n')
    plan = await hosting_plan(ChutesSettings(config=str(config)), cpu_devices(1))
    echo, stubborn = plan.hosted
    assert echo.revision == build_bundle(f"{ROOT}/tests/miner/chutes/echo.py:chute").revision
    assert stubborn.revision == "", "a module ref bundles the whole working directory: too big here"
    [spec] = echo.instance_specs()
    assert spec.pinned and spec.revision == echo.revision and spec.cwd is None
    assert [chute.revision for chute in plan.hosted_chutes()] == [echo.revision, ""]
