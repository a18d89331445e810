"""``AsyncSandbox`` and its blocking twin ``Sandbox``: the public way to run code in a sandbox."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from rlmbox.bridge import BridgeHandler
from rlmbox.config import Backend, SandboxConfig
from rlmbox.sandbox.base import CellResult, ContextInput, SandboxBackend
from rlmbox.sandbox.docker import DockerSandbox
from rlmbox.sandbox.local import LocalSandbox

__all__ = ["BACKENDS", "AsyncSandbox", "Sandbox", "create_backend"]

BACKENDS: dict[Backend, type[SandboxBackend]] = {"docker": DockerSandbox, "local": LocalSandbox}


def create_backend(
    config: SandboxConfig | None = None, context: ContextInput = None, handler: BridgeHandler | None = None
) -> SandboxBackend:
    """The backend the config names, not yet started."""
    config = config or SandboxConfig()
    return BACKENDS[config.backend](config=config, context=context, handler=handler)


class AsyncSandbox:
    """``async with AsyncSandbox(config, context) as sb: await sb.execute(code)``.

    ``context`` (str, list or dict) becomes the kernel's ``context`` variable. ``handler`` answers
    ``llm_query`` from the cells; without one, ``llm_query`` raises inside the kernel.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        context: ContextInput = None,
        *,
        handler: BridgeHandler | None = None,
        backend: SandboxBackend | None = None,
    ) -> None:
        self.backend = backend or create_backend(config, context, handler)

    async def __aenter__(self) -> Self:
        await self.backend.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.backend.aclose()

    async def execute(self, code: str, timeout: float | None = None) -> CellResult:
        return await self.backend.execute(code, timeout)

    async def restart(self) -> None:
        await self.backend.restart()

    async def aclose(self) -> None:
        await self.backend.aclose()


class Sandbox:
    """The blocking twin of AsyncSandbox: ``with Sandbox(config, context) as sb: sb.execute(code)``."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        context: ContextInput = None,
        *,
        handler: BridgeHandler | None = None,
    ) -> None:
        self._runner = asyncio.Runner()
        self._sandbox = AsyncSandbox(config, context, handler=handler)

    def __enter__(self) -> Self:
        try:
            self._runner.run(self._sandbox.backend.start())
        except BaseException:
            self._runner.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def execute(self, code: str, timeout: float | None = None) -> CellResult:
        return self._runner.run(self._sandbox.execute(code, timeout))

    def restart(self) -> None:
        self._runner.run(self._sandbox.restart())

    def close(self) -> None:
        try:
            self._runner.run(self._sandbox.aclose())
        finally:
            self._runner.close()
