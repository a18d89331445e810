"""The run's trajectory: one JSON line per event, flushed as it happens so a crash keeps what came before.

Long texts (prompts, replies to sub-calls) are cut to a preview; their full length and SHA-256 are kept so
two runs can still be compared. Nothing secret is written: settings go through ``model_dump`` with
``SecretStr`` fields masked.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

__all__ = ["EventLog", "NodeLog", "TrajectoryWriter", "text_digest"]

PREVIEW_CHARS = 2_000


def text_digest(text: str, preview_chars: int = PREVIEW_CHARS) -> dict[str, Any]:
    """A bounded stand-in for a long text: a preview, its length and its hash."""
    return {
        "chars": len(text),
        "sha256": hashlib.sha256(text.encode("utf-8", "replace")).hexdigest(),
        "preview": text[:preview_chars],
        "truncated": len(text) > preview_chars,
    }


def _json_line(record: dict[str, Any]) -> str:
    """``record`` as one line of strict JSON: a NaN or an infinity (which no JSON reader accepts) is null."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False, default=str) + "\n"
    except ValueError:
        return json.dumps(_finite(record), ensure_ascii=False, allow_nan=False, default=str) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class EventLog(Protocol):
    """Where a run's events go: ``write("cell", iteration=1, ...)``; ``notify`` tells only the listener
    (live progress), writing nothing."""

    def write(self, event: str, **fields: Any) -> None: ...

    def notify(self, event: str, **fields: Any) -> None: ...


class TrajectoryWriter:
    """Appends events to a JSONL file; ``with TrajectoryWriter(path) as t: t.write("event", ...)``."""

    def __init__(self, path: Path, listener: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self.listener = listener  # also told of every event (live progress), after it is written
        self._handle: Any = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        # Untrusted text is cleaned where it enters; should a lone surrogate slip through anyway, it is
        # written as "?" rather than lose the run its record.
        self._handle = os.fdopen(fd, "a", encoding="utf-8", errors="replace")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def write(self, event: str, **fields: Any) -> None:
        if self._handle is None:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        self._handle.write(_json_line(record))
        self._handle.flush()
        if self.listener is not None:
            self.listener(record)

    def notify(self, event: str, **fields: Any) -> None:
        if self.listener is not None:
            self.listener({"event": event, **fields})

    def for_node(self, node: str) -> NodeLog:
        """The events of one node of the call tree: each is written with ``node`` set to its id."""
        return NodeLog(self, node)


class NodeLog:
    """A TrajectoryWriter's view for one node of the call tree."""

    def __init__(self, writer: TrajectoryWriter, node: str) -> None:
        self._writer = writer
        self.node = node

    def write(self, event: str, **fields: Any) -> None:
        self._writer.write(event, node=self.node, **fields)

    def notify(self, event: str, **fields: Any) -> None:
        self._writer.notify(event, node=self.node, **fields)
