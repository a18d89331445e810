"""What the whole-run tests share: model names, the scripted root model's code replies, settings for a run
against the scripted OpenAI-compatible server, and polling for what another process does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rlmbox import Settings

from support.openai_server import Reply

__all__ = [
    "API_KEY",
    "ROOT",
    "ROOT_SEEN",
    "SUB",
    "SUB_SEEN",
    "cli_env",
    "repl",
    "scripted_settings",
    "wait_for",
]

ROOT, SUB = "openai/root-model", "openai/sub-model"
# What the server sees: litellm strips the provider prefix.
ROOT_SEEN, SUB_SEEN = ROOT.removeprefix("openai/"), SUB.removeprefix("openai/")
API_KEY = "sk-canary-7f3a9c1e5b2d4086a1c3e5f7b9d0e2f4"


def repl(code: str, prose: str = "Next step.") -> Reply:
    """A root-model reply that runs ``code``."""
    return Reply(text=f"{prose}\n```repl\n{code}\n```")


def scripted_settings(
    api_base: str,
    runtime_dir: Path,
    tmp_path: Path,
    *,
    llm: Mapping[str, Any] | None = None,
    sandbox: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] | None = None,
) -> Settings:
    """A run's settings against the scripted server: root and sub-model, fast retries, a 512 MiB sandbox."""
    return Settings(
        llm={
            "model": ROOT,
            "sub_model": SUB,
            "api_base": api_base,
            "api_key": API_KEY,
            "retry_backoff_s": 0.01,
            **(llm or {}),
        },
        sandbox={"runtime_dir": runtime_dir, "cell_timeout_s": 30, "memory": "512m", **(sandbox or {})},
        limits=dict(limits or {}),
        trajectory_dir=tmp_path / "runs",
    )


def cli_env(runtime_dir: Path) -> dict[str, str]:
    """The environment of an ``rlmbox`` subprocess: nothing of this one's but PATH and HOME."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "RLMBOX_SANDBOX__RUNTIME_DIR": str(runtime_dir),
        "OPENAI_API_KEY": API_KEY,
    }


def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll a condition owned by another process or thread (a container appearing), bounded in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)
