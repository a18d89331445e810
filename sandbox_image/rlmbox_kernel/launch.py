"""Start the sandbox's IPython kernel and tell the host, over the bridge, once its sockets are bound.

Usage: ``python -m rlmbox_kernel.launch CONNECTION_FILE`` (the session file sits beside it).

As a container's first process (pid 1) the launcher is also the init: it forks the kernel, reaps every
orphan, and exits with the kernel's status. Before anything else it makes itself non-dumpable, which the
kernel inherits: a process of the same user can then neither ptrace it nor read its memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from pathlib import Path

from rlmbox_kernel._bridge import BridgeClient
from rlmbox_kernel._wire import BRIDGE_SOCKET, SESSION_FILE

KERNEL_ARGS = [
    "--HistoryManager.enabled=False",  # no sqlite history on disk
    "--InteractiveShell.cache_size=0",  # Out[] must not pin large results in memory
    "--InteractiveShell.colors=nocolor",
    "--IPKernelApp.quiet=True",
]
PR_SET_DUMPABLE = 4


def forbid_ptrace() -> None:
    """Mark this process (and what it forks) non-dumpable: closed to ptrace and /proc/PID/mem."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def run_kernel(connection_file: Path) -> None:
    session_dir = connection_file.parent
    session = json.loads((session_dir / SESSION_FILE).read_text())

    from ipykernel.kernelapp import IPKernelApp

    # The host connects to the kernel's ipc sockets as another user: create them world-connectable (their
    # directory is what keeps others out), then go back to a private umask for everything the code writes.
    previous = os.umask(0)
    app = IPKernelApp.instance()
    app.initialize(["-f", str(connection_file), *KERNEL_ARGS])
    os.umask(previous | 0o077)

    BridgeClient(str(session_dir / BRIDGE_SOCKET), session["token"]).request("ready")
    app.start()


def run_as_init(connection_file: Path) -> int:
    """Fork the kernel into its own process group, reap every child, return the kernel's exit status."""
    kernel = os.fork()
    if kernel == 0:
        os.setpgid(0, 0)  # the kernel's interrupts (sent to its group) never reach the init
        run_kernel(connection_file)
        os._exit(0)

    def forward(number: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # the kernel has just ended
            os.kill(kernel, number)

    for forwarded in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(forwarded, forward)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == kernel:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m rlmbox_kernel.launch CONNECTION_FILE")
    forbid_ptrace()
    connection_file = Path(argv[1])
    if os.getpid() == 1:
        sys.exit(run_as_init(connection_file))
    run_kernel(connection_file)


if __name__ == "__main__":
    main(sys.argv)
