"""Moderation: a pluggable check on the user's input before any miner is called.

Seam: the ``Moderator`` protocol (``check(texts) -> Verdict``), the gateway's moderation
part. The admission step (``api.admission.Admission.moderate``) runs it after auth, body
and rate limits and before a credit is reserved, on ``input_texts`` of the request;
``from_settings`` builds one from ``--api.moderation_*`` (``None``: no check).

- ``BlocklistModerator``: case-insensitive whole-word / whole-phrase matches against a
  list (a file, one term per line, ``#`` comments); empty unless a file is given.
- ``OpenAIModerator``: OpenAI's ``POST {base}/moderations`` (``omni-moderation-latest``)
  with aiohttp; on an error or timeout it fails open (allows, logs a warning) or closed
  (503 ``moderation_unavailable``) by setting. The key is never logged.
- ``ChainModerator``: several in order, the first flag wins.

A flag is a 400 ``content_policy_violation`` (``param`` ``messages`` or ``prompt``),
logged with error ``moderation``; nothing is charged and no miner is called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import aiohttp
from loguru import logger

from api.errors import ModerationUnavailable

OPENAI_URL = "https://api.openai.com/v1"
OPENAI_MODEL = "omni-moderation-latest"


@dataclass(frozen=True)
class Verdict:
    flagged: bool = False
    reason: str = ""
    categories: list[str] = field(default_factory=list)


class Moderator(Protocol):
    async def check(self, texts: list[str]) -> Verdict: ...


class BlocklistModerator:
    """Flags a text holding any listed term as a whole word or phrase, in any case."""

    def __init__(self, terms: Iterable[str] = ()) -> None:
        self.terms = [" ".join(term.split()) for term in terms if term.strip()]
        parts = [r"\s+".join(re.escape(word) for word in term.split()) for term in self.terms]
        self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE) if parts else None

    @classmethod
    def from_file(cls, path: str | Path) -> "BlocklistModerator":
        terms = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            term = line.split("#", 1)[0].strip()
            if term:
                terms.append(term)
        return cls(terms)

    async def check(self, texts: list[str]) -> Verdict:
        if self._pattern is not None and any(self._pattern.search(text) for text in texts):
            return Verdict(True, "the input contains a blocked term", ["blocklist"])
        return Verdict(False)


class OpenAIModerator:
    """OpenAI's moderation endpoint; ``fail_closed`` decides what an outage means."""

    def __init__(self, api_key: Any, *, base_url: str = OPENAI_URL, model: str = OPENAI_MODEL,
                 timeout_s: float = 5.0, fail_closed: bool = False) -> None:
        secret = api_key.get_secret_value() if hasattr(api_key, "get_secret_value") else str(api_key)
        self._key = secret  # never logged: not in repr, not in any message
        self.url = base_url.rstrip("/") + "/moderations"
        self.model, self.timeout_s, self.fail_closed = model, timeout_s, fail_closed

    def __repr__(self) -> str:
        return f"OpenAIModerator(url={self.url!r}, model={self.model!r}, fail_closed={self.fail_closed})"

    async def check(self, texts: list[str]) -> Verdict:
        texts = [text for text in texts if text]
        if not texts:
            return Verdict(False)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session:
                async with session.post(self.url, json={"model": self.model, "input": texts},
                                        headers={"authorization": f"Bearer {self._key}"}) as response:
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}")
                    data = await response.json(content_type=None)
            results = data["results"]
        except Exception as error:  # outage, timeout, bad answer: the setting decides
            problem = "timed out" if isinstance(error, TimeoutError) else f"{type(error).__name__}: {error}"
            if self.fail_closed:
                logger.warning("moderation unavailable ({}); refusing (fail closed)", problem)
                raise ModerationUnavailable("the moderation service is unavailable; retry shortly") from None
            logger.warning("moderation unavailable ({}); allowing (fail open)", problem)
            return Verdict(False)
        categories = sorted({name for result in results if result.get("flagged")
                             for name, hit in (result.get("categories") or {}).items() if hit})
        if any(result.get("flagged") for result in results):
            return Verdict(True, "the input was flagged by moderation" +
                           (f" ({', '.join(categories)})" if categories else ""), categories)
        return Verdict(False)


class ChainModerator:
    """Runs each moderator in order; the first flag is the verdict."""

    def __init__(self, moderators: Iterable[Moderator]) -> None:
        self.moderators = list(moderators)

    async def check(self, texts: list[str]) -> Verdict:
        for moderator in self.moderators:
            verdict = await moderator.check(texts)
            if verdict.flagged:
                return verdict
        return Verdict(False)


def from_settings(settings: Any) -> Moderator | None:
    """The moderator ``--api.moderation_*`` asks for (``ApiSettings``), or ``None`` for none."""
    moderators: list[Moderator] = []
    if settings.moderation_blocklist:
        moderators.append(BlocklistModerator.from_file(settings.moderation_blocklist))
    if settings.moderation_openai_key is not None:
        moderators.append(OpenAIModerator(settings.moderation_openai_key, base_url=settings.moderation_openai_url,
                                          fail_closed=settings.moderation_fail_closed))
    if not moderators:
        return None
    return moderators[0] if len(moderators) == 1 else ChainModerator(moderators)


def input_texts(value: Any) -> list[str]:
    """The user-visible text of ``messages`` (strings, or dicts whose ``content`` is a string
    or a list of parts) or of a ``prompt`` (a string or a list of strings)."""
    texts: list[str] = []
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            content = item.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(part["text"] for part in content
                             if isinstance(part, dict) and isinstance(part.get("text"), str))
    return [text for text in texts if text]

