"""Live progress on a terminal: what a run (or an evaluation's runs) is doing, as one line redrawn in place.

``Progress`` counts from the events a run emits (``RLM.arun(..., on_event=progress)``); ``StatusLine`` draws
it on a terminal and draws nothing anywhere else, so piped output stays clean and machine-readable.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TextIO

__all__ = ["Progress", "StatusLine"]


class Progress:
    """Counts turns, cells, sub-calls (done and in flight), nodes, tokens and spend across runs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.turns = self.cells = self.sub_calls_done = self.sub_calls_started = self.nodes = 0
        self.tokens = 0
        self.cost_usd = 0.0
        self.prefix = ""  # e.g. an evaluation's "[3/20]"

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "root_call":
            self.turns += 1
            self._charge(event)
        elif kind == "cell":
            self.cells += 1
        elif kind == "sub_calls_started":
            self.sub_calls_started += int(event.get("count", 0))
        elif kind == "sub_call":
            self.sub_calls_done += 1
            self._charge(event)
        elif kind == "node_started":
            self.nodes += 1

    def _charge(self, event: dict[str, Any]) -> None:
        self.tokens += (event.get("prompt_tokens") or 0) + (event.get("completion_tokens") or 0)
        self.cost_usd += event.get("cost_usd") or 0.0

    @property
    def in_flight(self) -> int:
        return max(0, self.sub_calls_started - self.sub_calls_done)

    def line(self) -> str:
        parts = [
            self.prefix,
            f"turn {self.turns}",
            f"cells {self.cells}",
            f"sub-calls {self.sub_calls_done:,} done, {self.in_flight:,} in flight",
            f"nodes {self.nodes}" if self.nodes > 1 else "",
            f"tokens {self.tokens:,}",
            f"${self.cost_usd:.4f}",
            f"{self._clock() - self.started:.1f}s",
        ]
        return " · ".join(part for part in parts if part)


class StatusLine:
    """``async with StatusLine(sys.stderr, progress.line):`` redraws one line every ``interval`` seconds
    while the block runs, and clears it at the end. On a stream that is not a terminal, or when ``plain``
    output was asked for (``--json``, ``-v``, ``--debug``), it draws nothing."""

    def __init__(
        self, stream: TextIO, render: Callable[[], str], *, plain: bool = False, interval: float = 0.25
    ) -> None:
        self.stream = stream
        self.render = render
        self.interval = interval
        self.enabled = stream.isatty() and not plain
        self._ticker: asyncio.Task[None] | None = None
        self._width = 0

    async def __aenter__(self) -> Self:
        if self.enabled:
            self._ticker = asyncio.ensure_future(self._tick())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._clear()

    def print_above(self, text: str) -> None:
        """Print a line of its own (an evaluation's result, say) without breaking the status line."""
        self._clear()
        print(text, file=self.stream, flush=True)
        self._draw()

    async def _tick(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(self.interval)

    def _draw(self) -> None:
        if not self.enabled:
            return
        # One row: a line that wrapped could not be redrawn in place.
        text = self.render()[: max(10, shutil.get_terminal_size().columns - 1)]
        self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
        self.stream.flush()
        self._width = len(text)

    def _clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
