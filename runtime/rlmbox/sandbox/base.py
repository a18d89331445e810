"""The sandbox interface every backend implements, and the result of running a cell."""

from __future__ import annotations

import abc
import asyncio
import enum
import signal
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from rlmbox.bridge import BridgeHandler
from rlmbox.config import SandboxConfig
from rlmbox.log import ensure_logging
from rlmbox.misbehaviour import Misbehaviour

__all__ = ["CellError", "CellResult", "ContextInput", "KernelExit", "SandboxBackend", "SandboxState"]

ContextInput = str | list | dict | None
CLOSE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class CellError:
    """An exception raised by the cell's code (or the time limit), as the kernel reported it."""

    ename: str
    evalue: str
    traceback: str

    def __str__(self) -> str:
        return self.traceback or f"{self.ename}: {self.evalue}"


@dataclass(frozen=True)
class CellResult:
    """What one cell produced. ``final`` is set when the code called ``FINAL``/``FINAL_VAR``."""

    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    error: CellError | None = None
    final: str | None = None
    duration_s: float = 0.0
    timed_out: bool = False
    kernel_restarted: bool = False
    truncated_bytes: int = 0
    displays: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class KernelExit:
    """How the kernel's process (or container) ended, or why the host gave up on it (``broken``)."""

    exit_code: int | None
    oom_killed: bool = False
    broken: str | None = None

    def describe(self, memory_limit: int | None = None) -> str:
        if self.oom_killed:
            limit = f" of {memory_limit // 2**20} MiB" if memory_limit else ""
            return f"the kernel was killed for exceeding the memory limit{limit} (out of memory)"
        if self.broken is not None:
            return f"{self.broken}; it was stopped"
        signal_number = _signal_of(self.exit_code)
        if signal_number is not None:
            return f"the kernel was killed by signal {signal_number} ({_signal_name(signal_number)})"
        return f"the kernel exited unexpectedly (exit code {self.exit_code})"


def _signal_of(exit_code: int | None) -> int | None:
    """The signal behind an exit code: negative from subprocess, 128 + n from a shell or an init."""
    if exit_code is None:
        return None
    if exit_code < 0:
        return -exit_code
    return exit_code - 128 if 128 < exit_code < 128 + 65 else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


class SandboxState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    DEAD = "dead"
    CLOSED = "closed"


class SandboxBackend(abc.ABC):
    """An isolated IPython kernel with ``context`` loaded and a bridge for ``llm_query``.

    Backends implement ``_start``, ``_execute``, ``_stop``; the base supplies the lifecycle: ``start()``
    once, ``execute()`` while running, ``restart()`` after a death or a stuck cell, and an idempotent
    ``aclose()`` that every exit path reaches through ``async with``.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        context: ContextInput = None,
        handler: BridgeHandler | None = None,
    ) -> None:
        self.config = config or SandboxConfig()
        self.context = context
        self.handler = handler
        self.state = SandboxState.NEW
        self.misbehaviour = Misbehaviour()  # what the sandbox did against the protocol, over its life

    async def __aenter__(self) -> Self:
        if self.state is SandboxState.NEW:  # one handed out already running (by a pool) is used as it is
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the kernel and load the context; on failure everything started is cleaned up."""
        if self.state is not SandboxState.NEW:
            raise RuntimeError(f"cannot start a sandbox that is {self.state.value}")
        ensure_logging()
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        self.state = SandboxState.RUNNING

    async def execute(self, code: str, timeout: float | None = None) -> CellResult:
        """Run one cell. Exceptions in the code come back in ``CellResult.error``; a cell past its time
        limit is interrupted (and the kernel replaced if the interrupt fails). Raises KernelDiedError when
        the kernel dies; ``restart()`` then brings a fresh one."""
        if self.state is not SandboxState.RUNNING:
            raise RuntimeError(f"cannot execute in a sandbox that is {self.state.value}")
        return await self._execute(code, timeout or self.config.cell_timeout_s)

    async def adopt(self, context: ContextInput, handler: BridgeHandler | None) -> None:
        """Give a running sandbox that holds no session yet (a warm one) its context and bridge handler."""
        raise NotImplementedError(f"{type(self).__name__} cannot be pre-started")

    async def restart(self) -> None:
        """Replace the kernel with a fresh one holding the same context (all other state is lost)."""
        if self.state is SandboxState.CLOSED:
            raise RuntimeError("cannot restart a closed sandbox")
        try:
            await self._stop()
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        self.state = SandboxState.RUNNING

    async def aclose(self) -> None:
        """Stop the kernel and remove everything the sandbox created. Safe to call more than once."""
        if self.state is SandboxState.CLOSED:
            return
        self.state = SandboxState.CLOSED
        # Cleanup runs to its end even when the caller is cancelled (a second Ctrl-C, a deadline):
        # wait for it, bounded, then let the cancellation through.
        stopping = asyncio.ensure_future(self._stop())
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            await asyncio.wait({stopping}, timeout=CLOSE_TIMEOUT_S)
            raise

    @abc.abstractmethod
    async def _start(self) -> None: ...

    @abc.abstractmethod
    async def _execute(self, code: str, timeout: float) -> CellResult: ...

    @abc.abstractmethod
    async def _stop(self) -> None:
        """Tear down; must tolerate partial starts and repeated calls."""
