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
import re
import struct
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic_core import from_json

from rlmbox._exceptions import BridgeError
from rlmbox.untrusted import UntrustedDataError, check_json_values

__all__ = [
    "BRIDGE_SOCKET",
    "CONNECTION_FILE",
    "CONTEXT_JSON",
    "CONTEXT_TEXT",
    "DROPPED_MIME",
    "FINAL_MIME",
    "IPC_MOUNT",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_VALUES",
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
    "encode_frame",
    "parse_request",
    "read_frame_length",
    "request_id_hint",
    "request_values",
]

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 32 * 1024 * 1024
# JSON values (keys included) in one request: parsing costs about 0.3 us and 80 bytes a value, so this bounds
# a request's parse to tens of milliseconds whatever its shape. Plenty for 4,096 prompts; a child's context
# of more structure than this goes as one str.
MAX_REQUEST_VALUES = 100_000

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
    """One child RLM's task: its query, and the value its REPL gets as ``context``.

    The context arrives parsed from JSON, so all it holds are JSON values; only its top level is checked
    (validating every value again would double the cost of parsing)."""

    prompt: str
    context: Any = None

    @field_validator("context")
    @classmethod
    def _str_list_dict_or_none(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str | list | dict):
            raise ValueError(f"a context must be a str, list, dict or null, not {type(value).__name__}")
        return value


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


AnyRequest = ReadyRequest | LLMQueryRequest | RLMQueryRequest


def request_values(body: bytes, max_values: int) -> int:
    """A bound on the JSON values in a request frame's body, found without parsing it; BridgeError past
    ``max_values``."""
    try:
        return check_json_values(body, max_values)
    except UntrustedDataError:
        raise BridgeError(
            f"a request of more than {max_values:,} JSON values; send fewer or smaller contexts, or a "
            "structured context as one str"
        ) from None


def parse_request(body: bytes) -> AnyRequest:
    """Parse and validate a request frame's body (check its size with ``request_values`` first); raises
    BridgeError. Straight from bytes: invalid UTF-8, lone surrogates and NaN are refused here."""
    try:
        return _REQUEST.validate_python(from_json(body, allow_inf_nan=False))
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "frame"
            raise BridgeError(f"malformed bridge request ({where}: {first['msg']})") from exc
        raise BridgeError(f"malformed bridge request (not valid JSON: {str(exc)[:200]})") from exc


_ID = re.compile(rb'\{"op":"[a-z_]{1,16}","id":(\d{1,15}),')


def request_id_hint(body: bytes) -> int:
    """The id of a request that could not be parsed, read from where the kernel's client writes it (so its
    refusal reaches the call that sent it), or 0."""
    match = _ID.match(body)
    return int(match.group(1)) if match else 0
