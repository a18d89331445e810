"""Settings, built once at the edge (CLI or caller) and passed down.

Precedence: explicit constructor arguments (the CLI passes its flags this way) > ``RLMBOX_*`` environment
variables (nested with ``__``, e.g. ``RLMBOX_SANDBOX__MEMORY=2g``) > defaults. Nothing else in rlmbox reads
the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "Backend",
    "LLMSettings",
    "Limits",
    "SandboxConfig",
    "Settings",
    "parse_size",
]

VERSION = "0.1.0"
DEFAULT_IMAGE = f"rlmbox-sandbox:{VERSION}"
Backend = Literal["docker", "local"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: int | str) -> int:
    """Parse ``512m``, ``2g``, ``1.5GiB`` or a byte count into bytes (binary units)."""
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise ValueError(f"not a size: {value!r} (use e.g. 512m, 2g or a number of bytes)")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size


ByteSize = Annotated[int, BeforeValidator(parse_size)]


def _default_runtime_dir() -> Path:
    # Short on purpose: Unix socket paths must stay under ~107 bytes.
    return Path("/tmp") / f"rlmbox-{os.getuid()}"


class SandboxConfig(BaseModel):
    """One sandbox: its backend, image and every resource limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = "docker"
    image: str = DEFAULT_IMAGE
    docker_runtime: str | None = Field(None, description="OCI runtime, e.g. runsc for gVisor")
    memory: ByteSize = Field(parse_size("1g"), description="memory limit; swap is set equal (no swap)")
    cpus: float = Field(1.0, gt=0, le=64)
    pids_limit: int = Field(256, ge=16)
    nofile_limit: int = Field(1024, ge=64)
    tmp_size: ByteSize = Field(parse_size("256m"), description="size of the /tmp tmpfs")
    home_size: ByteSize = Field(parse_size("64m"), description="size of the $HOME tmpfs")
    user: str = Field("10001:10001", pattern=r"^\d+:\d+$", description="uid:gid inside the container")
    cell_timeout_s: float = Field(120.0, gt=0)
    interrupt_grace_s: float = Field(3.0, gt=0, description="wait after an interrupt before restarting")
    start_timeout_s: float = Field(60.0, gt=0)
    runtime_dir: Path = Field(default_factory=_default_runtime_dir)
    max_cell_output_bytes: int = Field(2_000_000, ge=1024, description="host-side cap per stream and cell")
    max_prompt_chars: int = Field(2_000_000, ge=1, description="largest prompt a cell may send a sub-model")
    max_batch_size: int = Field(4096, ge=1, description="most prompts in one llm_query_batched call")
    max_request_bytes: int = Field(32 * 2**20, ge=4096, description="largest bridge request (one batch)")
    max_request_values: int = Field(
        100_000, ge=1000, description="most JSON values in one bridge request (bounds its parsing cost)"
    )
    max_final_chars: int = Field(1_000_000, ge=1, description="largest final answer accepted")

    @field_validator("runtime_dir")
    @classmethod
    def _short_enough(cls, value: Path) -> Path:
        # The longest socket path is "<runtime_dir>/<12 hex>/ipc/kernel-NNNNN" (about 32 bytes more).
        if len(os.fsencode(value)) > 64:
            raise ValueError(
                f"runtime_dir {value} is too long for Unix socket paths (keep it under 64 bytes)"
            )
        return value


class LLMSettings(BaseSettings):
    """Which models to call and how. Model strings are litellm's (``openai/gpt-5-mini``, ``ollama/...``).

    Also read from the short variables ``RLMBOX_MODEL``, ``RLMBOX_SUB_MODEL``, ``RLMBOX_API_BASE``, ...
    """

    model_config = SettingsConfigDict(env_prefix="RLMBOX_", extra="forbid", frozen=True)

    model: str | None = None
    sub_model: str | None = Field(None, description="model behind llm_query; defaults to model")
    api_base: str | None = None
    sub_api_base: str | None = Field(None, description="the sub-model's base URL, when not api_base")
    root_window: int | None = Field(
        None, gt=0, description="the root model's context window in tokens, for models litellm does not know"
    )
    sub_window: int | None = Field(
        None, gt=0, description="the sub-model's context window in tokens, for models litellm does not know"
    )
    prompt: Literal["brief", "examples"] = Field(
        "examples", description="the built-in system prompt: examples (worked examples) or brief"
    )
    prompt_template: str | None = Field(
        None, description="a system prompt of your own: a string.Template with rlmbox's $placeholders"
    )
    api_key: SecretStr | None = None
    completion_kwargs: dict[str, Any] = Field(default_factory=dict)
    request_timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    retry_backoff_s: float = Field(1.0, ge=0)
    max_concurrency: int = Field(
        16, ge=1, le=1024, description="model calls in flight at once, over the whole call tree"
    )

    @property
    def effective_sub_model(self) -> str | None:
        return self.sub_model or self.model

    @model_validator(mode="after")
    def _one_place_and_window_per_model(self) -> Self:
        if self.effective_sub_model == self.model and self.model is not None:
            if self.sub_api_base is not None and self.sub_api_base != self.api_base:
                raise ValueError("the root and sub-model are the same model: give one api_base, not two")
            if None not in (self.root_window, self.sub_window) and self.root_window != self.sub_window:
                raise ValueError("the root and sub-model are the same model: give one window, not two")
        return self

    @field_validator("prompt_template")
    @classmethod
    def _fillable(cls, template: str | None) -> str | None:
        if template is not None:
            from rlmbox.prompts import check_template

            check_template(template)
        return template

    @property
    def system_prompt_template(self) -> str:
        """The template of the root model's system prompt: the user's own, or the chosen built-in one."""
        from rlmbox.prompts import PROMPTS

        return self.prompt_template if self.prompt_template is not None else PROMPTS[self.prompt]

    def api_base_for(self, model: str) -> str | None:
        """Where ``model`` is served: ``sub_api_base`` for the sub-model when set, else ``api_base``."""
        if self.sub_api_base is not None and model == self.effective_sub_model:
            return self.sub_api_base
        return self.api_base

    def window_tokens(self, model: str) -> int | None:
        """The context window given for ``model`` (as root or sub-model), if any."""
        if model == self.effective_sub_model and self.sub_window is not None:
            return self.sub_window
        if model == self.model:
            return self.root_window or (self.sub_window if model == self.effective_sub_model else None)
        return None


class Limits(BaseModel):
    """The run's budget, charged in one ledger for the whole call tree (the root and its child RLMs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_iterations: int = Field(
        30, ge=1, description="turns that run code, over the whole call tree (plus one last answer a node)"
    )
    max_sub_calls: int = Field(1000, ge=0, description="llm_query and rlm_query calls, over the tree")
    max_tokens: int | None = Field(None, ge=1)
    max_cost_usd: float | None = Field(None, gt=0)
    max_wall_s: float | None = Field(3600.0, gt=0)
    max_kernel_restarts: int = Field(3, ge=0)
    max_output_chars: int = Field(20_000, ge=200, description="cell output fed back to the root model")
    max_depth: int = Field(
        1, ge=1, le=16, description="levels of RLMs: 1 is the root alone; rlm_query starts children below it"
    )
    max_sandboxes: int = Field(8, ge=1, le=1024, description="sandboxes running at once in the tree")
    child_share: float = Field(
        0.5, gt=0, le=1, description="share of its remainder a node lends one rlm_query call's children"
    )

    @model_validator(mode="after")
    def _room_for_every_level(self) -> Self:
        if self.max_sandboxes < self.max_depth:
            raise ValueError(
                f"max_sandboxes ({self.max_sandboxes}) must be at least max_depth ({self.max_depth}): "
                "each level of the tree needs a sandbox"
            )
        return self


class Settings(BaseSettings):
    """All of rlmbox's settings."""

    model_config = SettingsConfigDict(
        env_prefix="RLMBOX_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    limits: Limits = Field(default_factory=Limits)
    trajectory_dir: Path = Path("rlmbox-runs")
    warm_sandboxes: int = Field(
        2, ge=0, le=64, description="sandboxes kept started for child RLMs when max_depth > 1"
    )
