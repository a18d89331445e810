"""Start the sandbox's IPython kernel and tell the host, over the bridge, once its sockets are bound.

Usage: ``python -m rlmbox_kernel.launch CONNECTION_FILE`` (the session file sits beside it).
"""

from __future__ import annotations

import json
import os
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


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m rlmbox_kernel.launch CONNECTION_FILE")
    connection_file = Path(argv[1])
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


if __name__ == "__main__":
    main(sys.argv)
