"""Sandboxes: where model-written code runs."""

from rlmbox.sandbox.base import CellError, CellResult, KernelExit, SandboxBackend, SandboxState
from rlmbox.sandbox.docker import DockerSandbox
from rlmbox.sandbox.facade import BACKENDS, AsyncSandbox, Sandbox, create_backend
from rlmbox.sandbox.fake import FakeSandbox
from rlmbox.sandbox.local import LocalSandbox
from rlmbox.sandbox.pool import SandboxPool

__all__ = [
    "BACKENDS",
    "AsyncSandbox",
    "CellError",
    "CellResult",
    "DockerSandbox",
    "FakeSandbox",
    "KernelExit",
    "LocalSandbox",
    "Sandbox",
    "SandboxBackend",
    "SandboxPool",
    "SandboxState",
    "create_backend",
]
