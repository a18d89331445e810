"""The bridge's wire format and the names both sides of the sandbox agree on.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON. The kernel sends requests
carrying the session token; the host answers each with a response carrying the same ``id``. Everything read
from the kernel is validated here, as untrusted data, before anything acts on it.

``sandbox_image/rlmbox_kernel/_wire.py`` holds the kernel's copy of these constants (it may import nothing
from the host package); a test keeps the two equal.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from rlmbox._exceptions import BridgeError

__all__ = [
    "BRIDGE_SOCKET",
    "CONNECTION_FILE",
    "CONTEXT_JSON",
    "CONTEXT_TEXT",
    "DROPPED_MIME",
    "FINAL_MIME",
    "IPC_MOUNT",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "SESSION_FILE",
    "SESSION_MOUNT",
    "ChildQuery",
    "ErrorInfo",
    "LLMQueryRequest",
    "QueryOutcome",
    "RLMQueryRequest",
    "ReadyRequest",
    "Request",
    "Response",
    "decode_request",
    "encode_frame",
    "read_frame_length",
]

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 32 * 1024 * 1024

# Paths inside the container. SESSION_MOUNT is read-only; IPC_MOUNT holds the kernel's ZMQ sockets and is
# made read-only for the container user as soon as the kernel has bound them.
SESSION_MOUNT = "/rlmbox"
IPC_MOUNT = "/rlmbox-ipc"
BRIDGE_SOCKET = "bridge.sock"
CONNECTION_FILE = "kernel.json"
SESSION_FILE = "session.json"
CONTEXT_TEXT = "context.txt"
CONTEXT_JSON = "context.json"

# Display-data MIME types on the cell's iopub stream: FINAL()'s answer, and the kernel's count of the output
# bytes it dropped at the source.
FINAL_MIME = "application/vnd.rlmbox.final+json"
DROPPED_MIME = "application/vnd.rlmbox.dropped+json"


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReadyRequest(_Frame):
    """Sent once by the kernel launcher after the kernel has bound its sockets."""

    op: Literal["ready"]
    id: int = Field(ge=0)
    token: str = Field(max_length=256)


class LLMQueryRequest(_Frame):
    """One or more prompts for the sub-model, answered in order."""

    op: Literal["llm_query"]
    id: int = Field(ge=0)
    token: str = Field(max_length=256)
    prompts: list[str] = Field(min_length=1)
    model: str | None = Field(None, max_length=512)


class ChildQuery(_Frame):
    """One child RLM's task: its query, and the value its REPL gets as ``context``."""

    prompt: str
    context: str | list[JsonValue] | dict[str, JsonValue] | None = None


class RLMQueryRequest(_Frame):
    """One or more child RLMs to run (or, at the depth limit, sub-model calls), answered in order."""

    op: Literal["rlm_query"]
    id: int = Field(ge=0)
    token: str = Field(max_length=256)
    queries: list[ChildQuery] = Field(min_length=1)
    model: str | None = Field(None, max_length=512)


Request = Annotated[ReadyRequest | LLMQueryRequest | RLMQueryRequest, Field(discriminator="op")]
_REQUEST = TypeAdapter(Request)


class QueryOutcome(_Frame):
    """The answer to one prompt, or why there is none."""

    ok: bool
    text: str | None = None
    error: str | None = None


class ErrorInfo(_Frame):
    """Why a whole request was refused; ``type`` names the exception the kernel raises."""

    type: Literal["BudgetExceededError", "LLMQueryError", "ProtocolError"]
    message: str


class Response(_Frame):
    id: int
    ok: bool
    results: list[QueryOutcome] | None = None
    error: ErrorInfo | None = None


def encode_frame(payload: BaseModel | dict[str, Any]) -> bytes:
    """Serialise one frame: length prefix plus compact JSON."""
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json(exclude_none=True).encode()
    else:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(body)) + body


async def read_frame_length(reader: asyncio.StreamReader, max_bytes: int) -> int | None:
    """Read a frame header: the body's length, or ``None`` on a clean end of stream.

    Raises BridgeError for a stream cut inside the header or a length over ``max_bytes``, before any of the
    body is read.
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise BridgeError("bridge stream ended inside a frame header") from exc
    (length,) = HEADER.unpack(header)
    if length > max_bytes:
        raise BridgeError(f"bridge frame of {length} bytes exceeds the {max_bytes}-byte limit")
    return length


def decode_request(body: bytes) -> ReadyRequest | LLMQueryRequest | RLMQueryRequest:
    """Parse and validate a request frame's body."""
    try:
        return _REQUEST.validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "frame"
        raise BridgeError(f"malformed bridge request ({where}: {first['msg']})") from exc
