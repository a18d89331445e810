"""The kernel's copy of the bridge wire constants (host: ``rlmbox.protocol``; a test keeps them equal)."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_RESPONSE_BYTES = 512 * 1024 * 1024

SESSION_MOUNT = "/rlmbox"
IPC_MOUNT = "/rlmbox-ipc"
BRIDGE_SOCKET = "bridge.sock"
CONNECTION_FILE = "kernel.json"
SESSION_FILE = "session.json"
CONTEXT_TEXT = "context.txt"
CONTEXT_JSON = "context.json"
FINAL_MIME = "application/vnd.rlmbox.final+json"
DROPPED_MIME = "application/vnd.rlmbox.dropped+json"


def encode_frame(payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(body)) + body


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("the rlmbox host closed the bridge connection")
        chunks += chunk
    return bytes(chunks)


def read_frame(sock: socket.socket) -> dict[str, Any]:
    (length,) = HEADER.unpack(_recv_exactly(sock, HEADER.size))
    if length > MAX_RESPONSE_BYTES:
        raise ConnectionError(f"bridge response of {length} bytes is too large")
    return json.loads(_recv_exactly(sock, length))
