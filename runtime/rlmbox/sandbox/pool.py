"""A warm pool: sandboxes started ahead of time, kernel ready, each handed to exactly one session.

    async with SandboxPool(config, size=4) as pool:
        sandbox = await pool.claim(context, handler)   # running, with this session's context loaded
        async with sandbox:                            # closed (destroyed) when the session ends
            await sandbox.execute("len(context)")

A claimed sandbox leaves the pool for good: it is destroyed when its session ends, and the pool starts a
replacement in the background. Pool sandboxes are ordinary sandboxes of ``config`` (same limits, same
labels, reaped like any other); no model code runs in one before a session claims it. When none is ready,
``claim`` returns a new, not yet started sandbox instead (a cold start), unless the caller asks to wait for
one being started.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

import structlog

from rlmbox._exceptions import RLMBoxError
from rlmbox.bridge import BridgeHandler
from rlmbox.config import SandboxConfig
from rlmbox.sandbox.base import ContextInput, SandboxBackend
from rlmbox.sandbox.facade import create_backend

__all__ = ["SandboxPool"]

log = structlog.get_logger(__name__)


class SandboxPool:
    """Keeps up to ``size`` started, unclaimed sandboxes of ``config``; ``size=0`` turns the pool off."""

    def __init__(self, config: SandboxConfig | None = None, size: int = 2) -> None:
        if size < 0:
            raise ValueError("pool size must be >= 0")
        self.config = config or SandboxConfig()
        self.size = size
        self._ready: list[SandboxBackend] = []
        self._starting: set[asyncio.Task[None]] = set()
        self._closed = False
        self.claimed = 0
        self.cold_starts = 0
        self.started = 0  # sandboxes the pool itself started

    async def __aenter__(self) -> Self:
        self.fill()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def ready(self) -> int:
        """Sandboxes started and waiting to be claimed."""
        return len(self._ready)

    def fill(self) -> None:
        """Start sandboxes in the background until ready + starting reaches ``size``."""
        while not self._closed and len(self._ready) + len(self._starting) < self.size:
            task = asyncio.ensure_future(self._start_one())
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def wait_ready(self, count: int | None = None, timeout: float | None = None) -> None:
        """Wait until ``count`` (default: ``size``) sandboxes are ready, or nothing more is starting."""
        wanted = self.size if count is None else count
        async with asyncio.timeout(timeout):
            while len(self._ready) < wanted and self._starting:
                await asyncio.wait(set(self._starting), return_when=asyncio.FIRST_COMPLETED)

    async def claim(
        self, context: ContextInput, handler: BridgeHandler | None = None, *, wait: bool = False
    ) -> SandboxBackend:
        """A sandbox for one session, holding ``context`` and answering ``llm_query`` through ``handler``.

        A warm one when ready (running already), else a new one the caller starts (``async with`` does).
        With ``wait``, a claim that finds none ready waits for one being started instead, so that no more
        sandboxes run than the pool's size and its sessions.
        """
        if self._closed:
            raise RuntimeError("the sandbox pool is closed")
        if wait and not self._ready and self._starting:
            await self.wait_ready(count=1)
        while self._ready:
            sandbox = self._ready.pop()
            self.fill()
            try:
                await sandbox.adopt(context, handler)
            except (RLMBoxError, RuntimeError) as exc:  # its kernel died while it waited: try the next
                log.warning("pool.warm_sandbox_unusable", error=str(exc))
                await sandbox.aclose()
                continue
            except BaseException:
                await sandbox.aclose()
                raise
            self.claimed += 1
            return sandbox
        self.cold_starts += 1
        return create_backend(self.config, context, handler)

    async def aclose(self) -> None:
        """Stop starting sandboxes and destroy the unclaimed ones. Claimed ones belong to their sessions."""
        self._closed = True
        for task in self._starting:
            task.cancel()
        if self._starting:
            await asyncio.wait(set(self._starting))
        ready, self._ready = self._ready, []
        results = await asyncio.gather(*(sandbox.aclose() for sandbox in ready), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("pool.close_failed", error=str(result))

    async def _start_one(self) -> None:
        sandbox = create_backend(self.config)
        try:
            await sandbox.start()  # cleans up after itself when it fails or is cancelled
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("pool.start_failed", error=str(exc))
            return
        self.started += 1
        if self._closed:
            with contextlib.suppress(Exception):
                await sandbox.aclose()
            return
        self._ready.append(sandbox)
