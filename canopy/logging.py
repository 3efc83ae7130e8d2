"""Logging seam: loguru for every process, with secrets redacted before any sink sees them.

A process calls ``setup_logging`` once at start-up. bittensor and uvicorn log through the
standard library; their records are routed into loguru here so one format, one level and one
redaction rule apply to everything.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from loguru import Record

#: Things that must never reach a log: bearer tokens, Canopy API keys, hex seeds and
#: private keys, btauth signatures, and 12/24-word mnemonics after "mnemonic".
_SECRET_PATTERNS = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1[redacted]"),
    (re.compile(r"\bcpk_[A-Za-z0-9_-]{8,}"), "cpk_[redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "sk-[redacted]"),  # OpenAI keys (--api.moderation_openai_key)
    (re.compile(r"(?i)(x-bittensor-signature['\"]?\s*[:=]\s*['\"]?)0x[0-9a-f]+"), r"\1[redacted]"),
    (re.compile(r"\b0x[0-9a-fA-F]{64,}\b"), "0x[redacted]"),
    (re.compile(r"(?i)(mnemonic\W{0,3})((?:[a-z]+\s+){11,23}[a-z]+)"), r"\1[redacted]"),
)


class LoggingSettings(BaseModel):
    debug: bool = Field(False, description="Log debug lines.")
    trace: bool = Field(False, description="Log trace lines (very verbose).")
    logging_dir: str | None = Field(None, description="Also write rotating log files here.")


FORMAT = "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | <cyan>{extra[role]}</cyan> | {message}"


def redact(text: str) -> str:
    """``text`` with every secret pattern replaced by a marker."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redacting_patcher(record: Record) -> None:
    record["message"] = redact(record["message"])


class _InterceptHandler(logging.Handler):
    """Forwards standard-library records (bittensor, uvicorn, aiohttp) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info, depth=6).log(level, record.getMessage())


def setup_logging(settings: LoggingSettings, role: str) -> None:
    """Configure loguru for this process: level from the flags, optional rotating file."""
    level = "TRACE" if settings.trace else "DEBUG" if settings.debug else "INFO"
    logger.remove()
    logger.configure(extra={"role": role}, patcher=_redacting_patcher)
    logger.add(sys.stderr, level=level, format=FORMAT, backtrace=False, diagnose=False)
    if settings.logging_dir:
        folder = Path(settings.logging_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        logger.add(folder / f"{role}.log", level=level, format=FORMAT, rotation="50 MB", retention=5,
                   backtrace=False, diagnose=False, enqueue=True)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.DEBUG if settings.debug else logging.INFO, force=True)
    for noisy in ("websockets", "asyncio", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
