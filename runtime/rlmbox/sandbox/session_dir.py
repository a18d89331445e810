"""The per-session directory on the host, and what the kernel finds in it.

    <runtime_dir>/            0700, owned by the host user (checked: never a symlink, never someone else's)
      <session id>/           0700
        owner.json            pid and start time of the rlmbox process that owns the session (for reaping)
        ro/                   0755 -> /rlmbox (read-only): kernel.json, session.json, context, bridge.sock
        ipc/                  1777 until the kernel has bound its sockets, then 0755 -> /rlmbox-ipc

Paths stay short: Unix socket paths are limited to about 107 bytes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlmbox._exceptions import ConfigError, SandboxStartError
from rlmbox.protocol import BRIDGE_SOCKET, CONNECTION_FILE, CONTEXT_JSON, CONTEXT_TEXT, SESSION_FILE
from rlmbox.sandbox.base import ContextInput
from rlmbox.sandbox.owner import ProcessIdentity
from rlmbox.sandbox.reaper import OWNER_FILE

__all__ = ["KERNEL_PORTS", "OWNER_FILE", "SessionDir", "ensure_runtime_dir", "longest_socket_path"]

KERNEL_PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
IPC_PREFIX = "k"
MAX_SOCKET_PATH = 107
SESSION_ID_BYTES = 6


def longest_socket_path(runtime_dir: Path) -> int:
    """Bytes in the longest kernel socket path a session under ``runtime_dir`` will use."""
    session = runtime_dir / ("0" * 2 * SESSION_ID_BYTES)
    return len(os.fsencode(session / "ipc" / f"{IPC_PREFIX}-{max(KERNEL_PORTS.values())}"))


def ensure_runtime_dir(path: Path) -> Path:
    """Create the runtime directory 0700, or check that the existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"runtime directory {path} is not a plain directory")
    if info.st_uid != os.getuid():
        raise ConfigError(f"runtime directory {path} belongs to another user (uid {info.st_uid})")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


@dataclass(frozen=True)
class SessionDir:
    """One session's directory; ``create`` makes it, ``remove`` deletes it whatever it contains."""

    path: Path
    session_id: str

    @classmethod
    def create(cls, runtime_dir: Path) -> SessionDir:
        if longest_socket_path(runtime_dir) > MAX_SOCKET_PATH:
            raise ConfigError(f"socket paths under {runtime_dir} are too long; choose a shorter runtime_dir")
        root = ensure_runtime_dir(runtime_dir)
        session_id = secrets.token_hex(SESSION_ID_BYTES)
        path = root / session_id
        path.mkdir(mode=0o700)
        session = cls(path, session_id)
        session.ro.mkdir(mode=0o755)
        os.chmod(session.ro, 0o755)  # explicit: the umask may have narrowed mkdir's mode
        session.ipc.mkdir()
        os.chmod(session.ipc, 0o1777)
        (path / OWNER_FILE).write_text(ProcessIdentity.current().model_dump_json())
        return session

    @property
    def ro(self) -> Path:
        return self.path / "ro"

    @property
    def ipc(self) -> Path:
        return self.path / "ipc"

    @property
    def bridge_socket(self) -> Path:
        return self.ro / BRIDGE_SOCKET

    @property
    def connection_file(self) -> Path:
        return self.ro / CONNECTION_FILE

    def write_public(self, name: str, data: bytes) -> Path:
        """Write a file the kernel may read (0644) into the read-only mount."""
        target = self.ro / name
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(target, 0o644)
        return target

    def write_context(self, context: ContextInput) -> None:
        """Store the context, replacing any earlier one; the kernel loads it as ``context`` (JSON when it is a
        list or dict)."""
        for name in (CONTEXT_TEXT, CONTEXT_JSON):
            (self.ro / name).unlink(missing_ok=True)
        if context is None:
            return
        if isinstance(context, str):
            self.write_public(CONTEXT_TEXT, context.encode("utf-8", "replace"))
        elif isinstance(context, list | dict):
            try:
                text = json.dumps(context, ensure_ascii=False, allow_nan=False)
            except ValueError as exc:  # NaN or infinity: not JSON, and no reader would take it back
                raise ConfigError(f"the context cannot be stored as JSON: {exc}") from None
            self.write_public(CONTEXT_JSON, text.encode("utf-8", "replace"))
        else:
            raise ConfigError(f"context must be str, list or dict, not {type(context).__name__}")

    def write_kernel_files(self, ipc_dir_in_kernel: str, session: dict[str, Any]) -> dict[str, Any]:
        """Write the kernel's connection and session files; returns the host's connection info."""
        key = secrets.token_hex(32)
        common = {**KERNEL_PORTS, "transport": "ipc", "key": key, "signature_scheme": "hmac-sha256"}
        kernel_side = {**common, "ip": f"{ipc_dir_in_kernel}/{IPC_PREFIX}", "kernel_name": "rlmbox"}
        self.write_public(CONNECTION_FILE, json.dumps(kernel_side).encode())
        self.write_public(SESSION_FILE, json.dumps(session).encode())
        return {**common, "ip": f"{self.ipc}/{IPC_PREFIX}"}

    def check_kernel_sockets(self) -> None:
        """Fail unless every kernel socket is a real socket (not a symlink) in the ipc directory."""
        for port in KERNEL_PORTS.values():
            candidate = self.ipc / f"{IPC_PREFIX}-{port}"
            try:
                mode = candidate.lstat().st_mode
            except FileNotFoundError as exc:
                raise SandboxStartError(f"kernel socket {candidate.name} is missing") from exc
            if not stat.S_ISSOCK(mode):
                raise SandboxStartError(f"kernel socket {candidate.name} is not a socket")

    def pin_kernel_sockets(self) -> None:
        """Take write access to the ipc directory away from the kernel: its sockets can't be swapped."""
        os.chmod(self.ipc, 0o755)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
