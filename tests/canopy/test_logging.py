"""Secrets never reach a log line, from loguru or from the standard library."""

from __future__ import annotations

import logging
import sys

import pytest
from loguru import logger

from canopy.logging import LoggingSettings
from canopy.logging import redact, setup_logging

SEED = "0x" + "ab" * 32
SIGNATURE = "0x" + "cd" * 64
MNEMONIC = "abandon " * 11 + "about"


def test_redact_masks_every_secret_kind():
    text = redact(
        f"Authorization: Bearer cpk_live_1234567890abcdef seed {SEED} "
        f"X-Bittensor-Signature: {SIGNATURE} mnemonic: {MNEMONIC}"
    )
    for secret in ("cpk_live_1234567890abcdef", SEED, SIGNATURE, "abandon abandon"):
        assert secret not in text
    assert text.count("[redacted]") >= 4


def test_hotkey_addresses_and_short_hex_stay_readable():
    text = "hotkey 5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY block 0x1a2b"
    assert redact(text) == text


@pytest.fixture
def restored_logging():
    """setup_logging binds capsys's stream; later tests must not write to it once closed."""
    yield
    logger.remove()
    logger.configure(extra={}, patcher=None)
    logger.add(sys.__stderr__, level="DEBUG")
    logging.basicConfig(handlers=[logging.StreamHandler(sys.__stderr__)], level=logging.WARNING, force=True)


def test_sinks_and_stdlib_records_are_redacted(tmp_path, capsys, restored_logging):
    setup_logging(LoggingSettings(debug=True, logging_dir=str(tmp_path)), role="test")
    logger.info("loaded key {}", SEED)
    logging.getLogger("bittensor.transport").warning("signed with %s", "Bearer cpk_secret_value_123")
    logger.complete()
    err = capsys.readouterr().err
    assert SEED not in err and "cpk_secret_value_123" not in err
    assert "0x[redacted]" in err and "Bearer [redacted]" in err
    written = (tmp_path / "test.log").read_text()
    assert SEED not in written and "0x[redacted]" in written
