"""The local backend: the same kernel as a plain subprocess, with NO isolation.

For machines without Docker, and only when chosen explicitly: model-written code runs with the user's rights.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import warnings

from rlmbox.protocol import CONNECTION_FILE
from rlmbox.sandbox.base import KernelExit
from rlmbox.sandbox.kernel_backed import KernelBackedSandbox, kernel_environment
from rlmbox.sandbox.reaper import reap_orphans_once
from rlmbox.sandbox.session_dir import SessionDir

__all__ = ["LocalSandbox", "UnisolatedBackendWarning"]

PR_SET_PDEATHSIG = 1


class UnisolatedBackendWarning(RuntimeWarning):
    """Model-written code is about to run without a sandbox."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalSandbox(KernelBackedSandbox):
    """An IPython kernel in a subprocess of this Python, for development on machines without Docker."""

    _process: asyncio.subprocess.Process | None = None
    _watch: asyncio.Task[None] | None = None

    def kernel_paths(self, session: SessionDir) -> tuple[str, str]:
        return str(session.ro), str(session.ipc)

    async def _launch(self, session: SessionDir, exited: asyncio.Future[KernelExit]) -> None:
        warnings.warn(
            "the local backend runs model-written code WITHOUT isolation, with your user's rights",
            UnisolatedBackendWarning,
            stacklevel=2,
        )
        await asyncio.to_thread(reap_orphans_once, None, self.config.runtime_dir)
        home = session.path / "home"
        home.mkdir(mode=0o700)
        env = {
            "HOME": str(home),
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            **kernel_environment(self.config),
        }
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rlmbox_kernel.launch",
            str(session.ro / CONNECTION_FILE),
            env=env,
            cwd=home,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so an interrupt reaches its children too
            preexec_fn=_die_with_parent,
        )
        self._watch = asyncio.create_task(_watch_exit(self._process, exited))

    async def _kernel_alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 10)


async def _watch_exit(process: asyncio.subprocess.Process, exited: asyncio.Future[KernelExit]) -> None:
    code = await process.wait()
    if not exited.done():
        exited.set_result(KernelExit(code, oom_killed=False))
