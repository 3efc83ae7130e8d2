"""Settings: bittensor-style flags, CANOPY_* env, a TOML file, and one-line errors."""

from __future__ import annotations

import pytest

from node.config import ConfigError, load_settings, load_settings_or_exit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("CANOPY_CONFIG", "CANOPY_NETUID", "CANOPY_WALLET__NAME", "CANOPY_NETWORK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CANOPY_HOME", str(tmp_path / "home"))


def test_bittensor_style_flags():
    settings = load_settings([
        "--netuid", "7", "--network", "test", "--wallet.name", "cold", "--wallet.hotkey", "hot",
        "--wallet.path", "/w", "--axon.port", "9001", "--axon.external_ip", "1.2.3.4", "--logging.debug",
    ])
    assert (settings.netuid, settings.network) == (7, "test")
    assert (settings.wallet.name, settings.wallet.hotkey, settings.wallet.path) == ("cold", "hot", "/w")
    assert (settings.axon.port, settings.published_ip, settings.published_port) == (9001, "1.2.3.4", 9001)
    assert settings.logging.debug is True


def test_network_defaults_pick_wallet_folder(tmp_path):
    devnet = load_settings([])
    assert devnet.is_devnet and devnet.wallet.path == str(tmp_path / "home" / "wallets")
    assert devnet.published_ip == "127.0.0.1"
    finney = load_settings(["--network", "finney"])
    assert finney.wallet.path == "~/.bittensor/wallets" and finney.axon.external_ip is None
    assert load_settings(["--network", "ws://10.0.0.1:9944"]).network == "ws://10.0.0.1:9944"


def test_precedence_flags_over_env_over_file(tmp_path, monkeypatch):
    config = tmp_path / "canopy.toml"
    config.write_text('netuid = 3\nnetwork = "test"\n[wallet]\nname = "from_file"\nhotkey = "file_hot"\n')
    monkeypatch.setenv("CANOPY_WALLET__NAME", "from_env")
    settings = load_settings(["--config", str(config), "--netuid", "9"])
    assert settings.netuid == 9  # flag beats file
    assert settings.wallet.name == "from_env"  # env beats file
    assert settings.wallet.hotkey == "file_hot" and settings.network == "test"  # file beats default


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--network", "mars"], "--network: unknown network 'mars'"),
        (["--axon.port", "70000"], "--axon.port"),
        (["--netuid", "-1"], "--netuid"),
        (["--wallet.name", "a/b"], "--wallet.name: must be a plain name"),
        (["--redis_url", "http://x"], "--redis_url: must start with redis://"),
        (["--devnet.block_time", "0"], "--devnet.block_time"),
    ],
)
def test_bad_values_name_the_flag(argv, message):
    with pytest.raises(ConfigError) as error:
        load_settings(argv)
    assert message in str(error.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(["--config", str(tmp_path / "missing.toml")])
    broken = tmp_path / "broken.toml"
    broken.write_text("netuid = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(["--config", str(broken)])
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("netuidd = 3")
    with pytest.raises(ConfigError, match="--netuidd: is not a known setting"):
        load_settings(["--config", str(unknown)])


def test_entry_points_exit_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_settings_or_exit(["--network", "mars"], prog="miner")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("miner: error: --network: unknown network")


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_settings(["--help"], prog="miner")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--netuid", "--network", "--wallet.name", "--wallet.hotkey", "--wallet.path",
                 "--axon.port", "--axon.external_ip", "--logging.debug", "--config"):
        assert flag in text
