"""Which rlmbox process owns a session, and whether that process still lives (pid reuse included)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict

__all__ = ["ProcessIdentity"]


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[19])


class ProcessIdentity(BaseModel):
    """A process, identified so that a recycled pid does not pass for it."""

    model_config = ConfigDict(frozen=True)

    host: str
    pid: int
    start_ticks: int | None

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls(host=socket.gethostname(), pid=os.getpid(), start_ticks=_start_ticks(os.getpid()))

    def is_local(self) -> bool:
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """True while the process runs; processes of other hosts are assumed alive."""
        if not self.is_local():
            return True
        return _start_ticks(self.pid) == self.start_ticks and self.start_ticks is not None

    def as_labels(self, prefix: str) -> dict[str, str]:
        return {
            f"{prefix}.host": self.host,
            f"{prefix}.pid": str(self.pid),
            f"{prefix}.start": str(self.start_ticks),
        }

    @classmethod
    def from_labels(cls, labels: dict[str, str], prefix: str) -> ProcessIdentity | None:
        try:
            start = labels[f"{prefix}.start"]
            return cls(
                host=labels[f"{prefix}.host"],
                pid=int(labels[f"{prefix}.pid"]),
                start_ticks=None if start == "None" else int(start),
            )
        except (KeyError, ValueError):
            return None
