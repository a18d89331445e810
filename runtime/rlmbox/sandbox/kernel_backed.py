"""What the Docker and local backends share: session directory, bridge, kernel connection, cell timeouts.

A backend only says how to launch the kernel process, how to end it, and where the session directories
appear to the kernel. Start-up, in order: bind the bridge, write the context and kernel files, launch, wait
for the kernel's readiness signal (racing its exit and the start timeout), check and connect the sockets,
pin them, load ``context`` and the helpers. No model code runs before the last step.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import secrets
import time
from collections.abc import Awaitable
from typing import TypeVar

import structlog

from rlmbox._exceptions import KernelDiedError, SandboxStartError, SandboxStartTimeout
from rlmbox.bridge import BridgeHandler, BridgeServer
from rlmbox.config import SandboxConfig
from rlmbox.kernel import ChannelLost, KernelConnection, RawCell
from rlmbox.protocol import PROTOCOL_VERSION
from rlmbox.sandbox.base import (
    CellError,
    CellResult,
    ContextInput,
    KernelExit,
    SandboxBackend,
    SandboxState,
)
from rlmbox.sandbox.session_dir import SessionDir

__all__ = ["KernelBackedSandbox", "kernel_environment"]

log = structlog.get_logger(__name__)
T = TypeVar("T")

# After a kernel channel breaks: how long its exit may take to explain it (e.g. out of memory) before the
# host looks whether the kernel still runs, and how long a dead kernel's exit report may take.
LOST_GRACE_S = 0.2
EXIT_REPORT_TIMEOUT_S = 10.0
# How often a cell past its time limit is looked at again while it waits for the host's answer, and how
# much waiting (as a multiple of the cell's limit) is not counted against the limit.
WAITING_SLICE_S = 0.5
MAX_WAITING_FACTOR = 10
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def kernel_environment(config: SandboxConfig) -> dict[str, str]:
    """The kernel's whole environment from rlmbox: thread pools within the CPU limit, and a fixed string
    hash seed, so that the same code prints the same output in every session (recorded runs replay)."""
    return {"PYTHONHASHSEED": "0", **dict.fromkeys(THREAD_VARIABLES, str(max(1, int(config.cpus))))}


class KernelBackedSandbox(SandboxBackend):
    """A sandbox whose kernel is ``python -m rlmbox_kernel.launch`` talking Jupyter over ``ipc`` sockets."""

    _session: SessionDir | None = None
    _bridge: BridgeServer | None = None
    _kernel: KernelConnection | None = None
    _exited: asyncio.Future[KernelExit] | None = None
    _judging: asyncio.Future[None] | None = None

    # -- what a backend provides ---------------------------------------------------------------------

    @abc.abstractmethod
    def kernel_paths(self, session: SessionDir) -> tuple[str, str]:
        """Where the kernel sees the session's read-only directory and its ipc directory."""

    @abc.abstractmethod
    async def _launch(self, session: SessionDir, exited: asyncio.Future[KernelExit]) -> None:
        """Start the kernel process; resolve ``exited`` whenever it ends."""

    @abc.abstractmethod
    async def _terminate(self) -> None:
        """End the kernel process and release what ``_launch`` created. Idempotent."""

    async def _kernel_alive(self) -> bool:
        """Whether the kernel's process (or container) is still running."""
        return True

    async def _diagnostics(self) -> str:
        """A few lines on why the kernel failed to start (e.g. its last log lines)."""
        return ""

    # -- lifecycle -----------------------------------------------------------------------------------

    async def _start(self) -> None:
        config = self.config
        started = time.perf_counter()
        self._session = session = SessionDir.create(config.runtime_dir)
        self.misbehaviour.session = session.session_id
        self._bridge = BridgeServer(
            session.bridge_socket,
            token := secrets.token_urlsafe(32),
            self.handler,
            max_prompt_chars=config.max_prompt_chars,
            max_batch_size=config.max_batch_size,
            max_request_bytes=config.max_request_bytes,
            max_request_values=config.max_request_values,
            misbehaviour=self.misbehaviour,
        )
        await self._bridge.start()
        await asyncio.to_thread(session.write_context, self.context)
        ro_dir, ipc_dir = self.kernel_paths(session)
        host_connection = session.write_kernel_files(
            ipc_dir,
            {
                "protocol": PROTOCOL_VERSION,
                "token": token,
                "max_prompt_chars": config.max_prompt_chars,
                "max_batch_size": config.max_batch_size,
                "max_request_bytes": config.max_request_bytes,
                "max_final_chars": config.max_final_chars,
                "max_cell_output_bytes": config.max_cell_output_bytes,
            },
        )
        self._exited = asyncio.get_running_loop().create_future()
        await self._launch(session, self._exited)
        await self._until_ready(config.start_timeout_s)
        session.check_kernel_sockets()
        self._kernel = KernelConnection(
            host_connection,
            max_output_bytes=config.max_cell_output_bytes,
            max_final_chars=config.max_final_chars,
            misbehaviour=self.misbehaviour,
        )
        self._kernel.lost.add_done_callback(self._on_connection_lost)
        try:
            await self._race_exit(self._kernel.connect(config.start_timeout_s))
        except TimeoutError as exc:
            raise SandboxStartTimeout(
                f"the kernel did not answer within {config.start_timeout_s:g}s"
            ) from exc
        session.pin_kernel_sockets()
        setup = await self._race_exit(
            self._kernel.execute(f"__import__('rlmbox_kernel').install({ro_dir!r})", config.start_timeout_s)
        )
        if setup.error is not None or not setup.completed:
            detail = setup.error[2] if setup.error else "timed out"
            raise SandboxStartError(f"loading the context into the kernel failed: {detail}")
        log.debug(
            "sandbox.ready", session=session.session_id, seconds=round(time.perf_counter() - started, 3)
        )

    def _on_connection_lost(self, lost: asyncio.Future[str]) -> None:
        exited = self._exited
        if lost.cancelled() or exited is None or exited.done():
            return
        self._judging = asyncio.ensure_future(self._judge_lost_connection(lost.result(), exited))

    async def _judge_lost_connection(self, reason: str, exited: asyncio.Future[KernelExit]) -> None:
        """A kernel channel broke. If the kernel died, its exit (which says why: out of memory, a signal) is
        on its way; if it lives, it broke the protocol and is given up on."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), LOST_GRACE_S)
            return
        if not await self._kernel_alive():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), EXIT_REPORT_TIMEOUT_S)
        if not exited.done():
            exited.set_result(KernelExit(None, broken=reason))

    async def adopt(self, context: ContextInput, handler: BridgeHandler | None) -> None:
        if self.state is not SandboxState.RUNNING or self._session is None or self._bridge is None:
            raise RuntimeError(f"cannot adopt a session into a sandbox that is {self.state.value}")
        self.context, self.handler = context, handler
        self._bridge.handler = handler
        await asyncio.to_thread(self._session.write_context, context)
        ro_dir, _ = self.kernel_paths(self._session)
        cell = await self.execute(f"__import__('rlmbox_kernel').reload_context({ro_dir!r})")
        if not cell.ok:
            raise SandboxStartError(f"loading the context into a warm kernel failed: {cell.error}")

    async def _until_ready(self, timeout: float) -> None:
        assert self._bridge is not None
        try:
            await self._race_exit(asyncio.wait_for(self._bridge.ready.wait(), timeout))
        except KernelDiedError as exc:
            raise SandboxStartError(
                f"the kernel exited during start-up: {exc}{await self._diagnostics()}"
            ) from exc
        except TimeoutError as exc:
            message = f"the kernel did not become ready within {timeout:.0f}s{await self._diagnostics()}"
            raise SandboxStartTimeout(message) from exc

    async def _stop(self) -> None:
        """Close the kernel connection, end the kernel, close the bridge, remove the session directory:
        every step runs even if an earlier one fails."""
        if self._judging is not None:
            self._judging.cancel()
        kernel, self._kernel = self._kernel, None
        bridge, self._bridge = self._bridge, None
        session, self._session = self._session, None
        async with contextlib.AsyncExitStack() as steps:  # callbacks run last-in, first-out
            if session is not None:
                steps.callback(session.remove)
            if bridge is not None:
                steps.push_async_callback(bridge.aclose)
            steps.push_async_callback(self._terminate)
            if kernel is not None:
                steps.callback(kernel.close)

    # -- cells ---------------------------------------------------------------------------------------

    async def _execute(self, code: str, timeout: float) -> CellResult:
        """Run a cell; its time limit counts its own time, not time spent waiting for the host to answer
        its llm_query and rlm_query calls, up to MAX_WAITING_FACTOR times the limit."""
        assert self._kernel is not None and self._bridge is not None
        bridge = self._bridge
        started = time.perf_counter()
        waited_before = bridge.busy_seconds()
        cell = await self._race_exit(self._kernel.execute(code, timeout))
        while not cell.completed:
            waited = min(bridge.busy_seconds() - waited_before, MAX_WAITING_FACTOR * timeout)
            own = time.perf_counter() - started - waited
            if own >= timeout and not (bridge.busy and waited < MAX_WAITING_FACTOR * timeout):
                break
            await self._race_exit(self._kernel.finish(cell, max(timeout - own, WAITING_SLICE_S)))
        if cell.completed:
            return _to_result(cell, time.perf_counter() - started)
        return await self._recover_from_timeout(cell, timeout, started)

    async def _recover_from_timeout(self, cell: RawCell, timeout: float, started: float) -> CellResult:
        """Interrupt the runaway cell; if the kernel does not come back, replace it."""
        assert self._kernel is not None
        grace = self.config.interrupt_grace_s
        await self._race_exit(self._kernel.interrupt(grace))
        if await self._race_exit(self._kernel.finish(cell, grace)):
            message = f"the cell ran past its {timeout:g}s time limit and was interrupted"
            return _to_result(cell, time.perf_counter() - started, timeout_message=message)
        log.warning("sandbox.restart_after_timeout", session=self._session and self._session.session_id)
        await self.restart()
        message = (
            f"the cell ran past its {timeout:g}s time limit and ignored the interrupt; the kernel was "
            "restarted: every variable except `context` and the helpers is gone"
        )
        return _to_result(cell, time.perf_counter() - started, timeout_message=message, restarted=True)

    async def _race_exit(self, work: Awaitable[T]) -> T:
        """Await ``work`` unless the kernel dies first; then raise KernelDiedError. A channel the kernel broke
        is a death too: it is judged (``_judge_lost_connection``) before the error is raised."""
        assert self._exited is not None
        if self._exited.done():
            if inspect.iscoroutine(work):
                work.close()  # never started: say so, rather than leave it un-awaited
            raise self._death(self._exited.result())
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task, self._exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled() and not isinstance(task.exception(), ChannelLost):
            return task.result()
        await asyncio.shield(self._exited)  # resolved by the judgement of the lost connection
        raise self._death(self._exited.result())

    def _death(self, exit_info: KernelExit) -> KernelDiedError:
        if self.state is SandboxState.RUNNING:
            self.state = SandboxState.DEAD
        message = exit_info.describe(self.config.memory if self.config.backend == "docker" else None)
        return KernelDiedError(message, exit_code=exit_info.exit_code, oom=exit_info.oom_killed)


def _to_result(
    cell: RawCell, duration: float, *, timeout_message: str | None = None, restarted: bool = False
) -> CellResult:
    error = CellError(*cell.error) if cell.error else None
    if timeout_message is not None:
        error = CellError("CellTimeout", timeout_message, f"CellTimeout: {timeout_message}")
    return CellResult(
        stdout=cell.stdout,
        stderr=cell.stderr,
        result=cell.result,
        error=error,
        final=cell.final,
        duration_s=duration,
        timed_out=timeout_message is not None,
        kernel_restarted=restarted,
        truncated_bytes=cell.dropped_bytes,
        displays=cell.displays,
    )
