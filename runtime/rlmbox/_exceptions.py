"""Every error rlmbox raises on purpose.

RLMBoxError                       base: the CLI prints its message, no traceback
├── ConfigError                   bad settings, bad context file, bad model name
├── SandboxError                  something wrong with the sandbox itself
│   ├── DockerUnavailableError    the Docker daemon cannot be reached
│   ├── ImageMissingError         the sandbox image is not built
│   ├── SandboxStartError         the container or kernel did not come up
│   │   └── SandboxStartTimeout   ... within the start timeout (also a TimeoutError)
│   └── KernelDiedError           the kernel process ended during a session (OOM included)
├── BridgeError                   the kernel sent the host something it refuses
├── LLMError                      the model provider failed, after retries where they make sense
│   ├── LLMAuthError              bad or missing credentials
│   ├── LLMModelNotFoundError     the provider does not know the model
│   ├── LLMRateLimitError         rate limited past the retry budget
│   ├── LLMTimeoutError           the provider did not answer in time (also a TimeoutError)
│   ├── LLMBadRequestError        the provider refused the request as invalid
│   │   └── LLMContextWindowError the prompt does not fit the model's context window
│   └── LLMReplyError             the model keeps replying with nothing rlmbox can use
├── BudgetExceeded                a limit of the run's ledger was reached
└── LocalModelError               the local model server could not be started or stopped
    ├── LocalModelMissingError    its venv or weights are missing (`make local-model`); also a ConfigError
    └── LocalModelStartTimeout    it did not answer within the start timeout (also a TimeoutError)
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "BudgetExceeded",
    "ConfigError",
    "DockerUnavailableError",
    "ImageMissingError",
    "KernelDiedError",
    "LLMAuthError",
    "LLMBadRequestError",
    "LLMContextWindowError",
    "LLMError",
    "LLMModelNotFoundError",
    "LLMRateLimitError",
    "LLMReplyError",
    "LLMTimeoutError",
    "LocalModelError",
    "LocalModelMissingError",
    "LocalModelStartTimeout",
    "RLMBoxError",
    "SandboxError",
    "SandboxStartError",
    "SandboxStartTimeout",
]


class RLMBoxError(Exception):
    """Base of every error rlmbox raises on purpose; its message is meant for the user."""

    exit_code: int = 1


class ConfigError(RLMBoxError, ValueError):
    """The settings, the context input or a model name are not usable."""

    exit_code = 2


class SandboxError(RLMBoxError):
    """The sandbox could not do what was asked of it."""

    exit_code = 3


class DockerUnavailableError(SandboxError):
    """The Docker daemon cannot be reached."""


class ImageMissingError(SandboxError):
    """The sandbox image has not been built on this machine."""


class SandboxStartError(SandboxError):
    """The container or its kernel did not come up."""


class SandboxStartTimeout(SandboxStartError, TimeoutError):
    """The kernel did not signal readiness within the start timeout."""


class KernelDiedError(SandboxError):
    """The kernel process ended while the session was open."""

    def __init__(self, message: str, *, exit_code: int | None = None, oom: bool = False) -> None:
        super().__init__(message)
        self.kernel_exit_code = exit_code
        self.oom = oom


class BridgeError(RLMBoxError):
    """A request from the kernel was malformed, too large or not allowed."""


class LLMError(RLMBoxError):
    """The model provider failed (after retries where retrying makes sense)."""

    exit_code = 4


class LLMAuthError(LLMError):
    """The provider rejected the credentials."""


class LLMModelNotFoundError(LLMError):
    """The provider does not know the model, or litellm cannot route the model string."""


class LLMRateLimitError(LLMError):
    """The provider kept rate-limiting past the retry budget."""


class LLMTimeoutError(LLMError, TimeoutError):
    """The provider did not answer in time."""


class LLMBadRequestError(LLMError):
    """The provider refused the request as invalid (for example, a prompt too long for the model)."""


class LLMContextWindowError(LLMBadRequestError):
    """The provider refused the prompt as longer than the model's context window."""


class LLMReplyError(LLMError):
    """The model sent the same reply, with no code and no final answer, again and again."""


class BudgetExceeded(RLMBoxError):
    """A limit of the run's ledger (iterations, sub-calls, tokens, cost or time) was reached."""

    exit_code = 5

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class LocalModelError(RLMBoxError):
    """The local model server could not be started, found or stopped."""


class LocalModelMissingError(LocalModelError, ConfigError):
    """The local model server's venv or the model's weights are not there (run `make local-model`)."""


class LocalModelStartTimeout(LocalModelError, TimeoutError):
    """The local model server did not answer within its start timeout."""
