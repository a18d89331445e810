"""rlmbox: Recursive Language Models with the model-written code locked in a hardened sandbox."""

from rlmbox._exceptions import (
    BridgeError,
    BudgetExceeded,
    ConfigError,
    DockerUnavailableError,
    ImageMissingError,
    KernelDiedError,
    LLMAuthError,
    LLMBadRequestError,
    LLMContextWindowError,
    LLMError,
    LLMModelNotFoundError,
    LLMRateLimitError,
    LLMReplyError,
    LLMTimeoutError,
    RLMBoxError,
    SandboxError,
    SandboxStartError,
    SandboxStartTimeout,
)
from rlmbox.config import VERSION, Limits, LLMSettings, SandboxConfig, Settings
from rlmbox.rlm import RLM, RunResult
from rlmbox.sandbox import AsyncSandbox, CellError, CellResult, FakeSandbox, Sandbox, SandboxPool
from rlmbox.tree import NodeSummary, TreeSummary

__version__ = VERSION

__all__ = [
    "RLM",
    "AsyncSandbox",
    "BridgeError",
    "BudgetExceeded",
    "CellError",
    "CellResult",
    "ConfigError",
    "DockerUnavailableError",
    "FakeSandbox",
    "ImageMissingError",
    "KernelDiedError",
    "LLMAuthError",
    "LLMBadRequestError",
    "LLMContextWindowError",
    "LLMError",
    "LLMModelNotFoundError",
    "LLMRateLimitError",
    "LLMReplyError",
    "LLMSettings",
    "LLMTimeoutError",
    "Limits",
    "NodeSummary",
    "RLMBoxError",
    "RunResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxPool",
    "SandboxStartError",
    "SandboxStartTimeout",
    "Settings",
    "TreeSummary",
    "__version__",
]
