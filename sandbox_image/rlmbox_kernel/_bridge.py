"""Client side of the bridge: one blocking Unix-socket connection per thread, one request at a time."""

from __future__ import annotations

import itertools
import socket
import threading
from typing import Any

from rlmbox_kernel._wire import encode_frame, read_frame


class BridgeClient:
    """Sends framed JSON requests to the host and waits for the matching response."""

    def __init__(self, path: str, token: str, max_request_bytes: int | None = None) -> None:
        self._path = path
        self._token = token
        self._max_request_bytes = max_request_bytes
        self._ids = itertools.count(1)
        self._local = threading.local()

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        frame = encode_frame({"op": op, "id": request_id, "token": self._token, **fields})
        if self._max_request_bytes is not None and len(frame) - 4 > self._max_request_bytes:
            raise ValueError(
                f"request of {len(frame) - 4} bytes exceeds the bridge's {self._max_request_bytes}-byte limit"
            )
        sock = self._connection()
        try:
            sock.sendall(frame)
            while True:
                response = read_frame(sock)
                if response.get("id") == request_id:
                    return response
        except BaseException:
            # An interrupted call may still get its reply later: never reuse this connection.
            self._drop()
            raise

    def _connection(self) -> socket.socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self._path)
            self._local.sock = sock
        return sock

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()
