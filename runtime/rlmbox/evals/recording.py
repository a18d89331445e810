"""Record and replay model calls, so that an evaluation can run again offline, bit for bit.

Each answer is stored as one JSON file named by the SHA-256 of (model, messages, parameters, and the
parameters of that call alone when it had any); the API key and base URL are not part of the key (they do not
change the answer) and never stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from rlmbox._exceptions import LLMError
from rlmbox.files import read_regular_file
from rlmbox.llm import Completion

__all__ = ["CompletionClient", "RecordingLMClient", "ReplayMiss"]


class CompletionClient(Protocol):
    async def complete(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        timeout_s: float | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Completion: ...


class ReplayMiss(LLMError):
    """``--replay`` was asked for, and no recorded answer matches this call."""


class RecordingLMClient:
    """Answers from ``directory`` when it can; otherwise asks ``inner`` and stores the answer there.
    With ``replay``, never asks: a call with no recorded answer raises ReplayMiss."""

    def __init__(
        self, inner: CompletionClient | None, directory: Path, *, params: dict[str, Any], replay: bool
    ) -> None:
        if inner is None and not replay:
            raise ValueError("recording needs a client to record from")
        self._inner = inner
        self._directory = directory
        self._params = params
        self._replay = replay
        self.hits = self.misses = 0

    def key(self, model: str, messages: list[dict[str, str]], params: Mapping[str, Any] | None = None) -> str:
        material: dict[str, Any] = {"model": model, "messages": messages, "params": self._params}
        if params:  # absent otherwise: recordings made before calls had parameters of their own still match
            material["call_params"] = dict(params)
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    async def complete(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        timeout_s: float | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Completion:
        key = self.key(model, messages, params)
        path = self._directory / key[:2] / f"{key}.json"
        recorded = await asyncio.to_thread(_read_recorded, path)
        if recorded is not None:
            self.hits += 1
            return recorded
        if self._replay or self._inner is None:
            raise ReplayMiss(f"no recorded answer for this call to {model} (key {key[:16]}); record it first")
        self.misses += 1
        completion = await self._inner.complete(model, messages, timeout_s=timeout_s, params=params)
        text = json.dumps(dataclasses.asdict(completion), ensure_ascii=False)
        await asyncio.to_thread(_write_atomically, path, text)
        return completion


def _read_recorded(path: Path) -> Completion | None:
    """The answer recorded at ``path``, or None when there is none (only a regular file is read)."""
    try:
        data = read_regular_file(path, name=f"recorded answer {path}")
    except FileNotFoundError:
        return None
    return Completion(**json.loads(data))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
