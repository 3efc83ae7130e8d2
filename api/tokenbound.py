"""The most tokens an organic call can have used, counted by the gateway from what it relayed.

Seam: between the ``usage`` miners report and what scoring credits. ``api.upstream.Call``
feeds every data piece of a miner's reply to a ``ReplyMeter`` and, before the call's
``Invocation`` row is written, credits at most ``completion_bound()`` completion tokens
and ``prompt_bound(payload)`` prompt tokens of the ``usage`` the miner reported (the reply
itself, and the request log, keep the miner's numbers).

Every tokenizer an LLM chute serves (byte-level BPE, SentencePiece with byte fallback) makes
a token of at least one byte of text, so an honest count is never above the UTF-8 bytes of
the text, plus a few tokens that print nothing (end of sequence, a stop string cut off, a
reasoning model's think tags): ``SILENT_TOKENS``.

- completion: the UTF-8 bytes of every string inside ``choices`` (content, reasoning, tool
  calls, legacy ``text``; keys not counted) of the JSON body or of every SSE event, plus
  ``SILENT_TOKENS``; a reply with no ``choices`` at all (not an OpenAI shape) is bounded by
  its whole body;
- prompt: the UTF-8 bytes of the JSON payload the gateway sent, plus ``SILENT_TOKENS`` (the
  prompt is in it, and a chat template adds fewer tokens per message than the JSON around it).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pydantic_core

SILENT_TOKENS = 16
MAX_JSON_BYTES = 16 * 2**20  # a larger JSON reply is not parsed: its whole body bounds it
_EVENT_END = re.compile(r"\r?\n\r?\n")


def text_bytes(value: Any) -> int:
    """UTF-8 bytes of every string in ``value`` (nested dicts and lists; dict keys not counted)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, dict):
        return sum(text_bytes(item) for item in value.values())
    if isinstance(value, list):
        return sum(text_bytes(item) for item in value)
    return 0


def prompt_bound(payload: Any) -> int:
    return len(pydantic_core.to_json(payload, fallback=str)) + SILENT_TOKENS


class ReplyMeter:
    """Fed a reply's data pieces in order; ``completion_bound()`` once it ended."""

    def __init__(self, content_type: str | None) -> None:
        self.sse = (content_type or "").startswith("text/event-stream")
        self.body_bytes = 0
        self.choice_bytes = 0
        self.has_choices = False
        self._pending = ""  # SSE: the event not complete yet
        self._parts: list[str] | None = []  # otherwise: the body so far (None: too large to parse)

    def feed(self, data: str) -> None:
        self.body_bytes += len(data.encode())
        if self.sse:
            *events, self._pending = _EVENT_END.split(self._pending + data)
            for event in events:
                self._event(event)
        elif self._parts is not None:
            self._parts.append(data)
            if self.body_bytes > MAX_JSON_BYTES:
                self._parts = None

    def _choices(self, document: Any) -> None:
        if isinstance(document, dict) and isinstance(document.get("choices"), list):
            self.has_choices = True
            self.choice_bytes += text_bytes(document["choices"])

    def _event(self, event: str) -> None:
        for line in event.splitlines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                try:
                    self._choices(json.loads(line[5:]))
                except ValueError:
                    pass  # not JSON: it adds nothing

    def completion_bound(self) -> int:
        """The most completion tokens the reply's text can hold (call once, when it ended)."""
        if self.sse and self._pending:
            self._event(self._pending)
        elif self._parts:
            try:
                self._choices(json.loads("".join(self._parts)))
            except ValueError:
                pass  # not JSON: its whole body bounds it
        self._pending, self._parts = "", None
        return (self.choice_bytes if self.has_choices else self.body_bytes) + SILENT_TOKENS
