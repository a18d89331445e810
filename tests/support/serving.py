"""``rlmbox serve`` as a real server process, the way a user starts it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from support.scripted_run import cli_env, wait_for

__all__ = ["start_serve"]


def start_serve(
    flags: Sequence[str],
    *,
    runtime_dir: Path,
    runs: Path,
    log: TextIO,
    preexec_fn: Callable[[], object] | None = None,
) -> tuple[subprocess.Popen, str]:
    """``rlmbox serve --port 0 FLAGS``, its stderr written to ``log`` and its trajectories to ``runs``;
    returns the process and its base URL once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rlmbox.cli", "serve", "--port", "0", *flags],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**cli_env(runtime_dir), "RLMBOX_TRAJECTORY_DIR": str(runs)},
        preexec_fn=preexec_fn,  # noqa: PLW1509 - only resource limits, set in a single-threaded test
    )
    text = Path(log.name).read_text
    wait_for(lambda: "listening on" in text() or process.poll() is not None, timeout=60)
    line = next((x for x in text().splitlines() if "listening on" in x), None)
    if line is None:
        raise RuntimeError(f"rlmbox serve exited with {process.returncode}:\n{text()}")
    return process, line.split("listening on ", 1)[1].split("/v1", 1)[0]
