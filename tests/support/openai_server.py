"""A scripted OpenAI-compatible HTTP server for tests.

    def handler(request: dict) -> Reply: ...
    with ScriptedOpenAIServer(handler) as server:
        litellm.acompletion(model="openai/x", api_base=server.url, api_key="dummy", ...)

``Script`` covers the usual case: per-model queues of replies, every request recorded.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["MAX_BODY_BYTES", "Handler", "Reply", "Script", "ScriptedOpenAIServer", "estimate_tokens"]

MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``text=None`` sends ``content: null``; ``raw_body`` replaces the whole body."""

    text: str | None = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw_body: bytes | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_message: str | None = None
    error_code: str | None = None


Handler = Callable[[dict[str, Any]], Reply]
Step = Reply | Handler


def estimate_tokens(text: str) -> int:
    """About four characters a token, at least one."""
    return max(1, len(text) // 4)


def _prompt_text(request: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for message in request.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def _body_for(reply: Reply, request: Mapping[str, Any]) -> bytes:
    if reply.raw_body is not None:
        return reply.raw_body
    model = str(request.get("model", ""))
    if reply.status >= 400:
        message = reply.error_message or f"scripted error {reply.status}"
        error = {
            "message": message,
            "type": _ERROR_TYPES.get(reply.status, "server_error"),
            "param": None,
            "code": reply.error_code,
        }
        return json.dumps({"error": error}).encode()
    prompt_tokens = reply.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = estimate_tokens(_prompt_text(request))
    completion_tokens = reply.completion_tokens
    if completion_tokens is None:
        completion_tokens = estimate_tokens(reply.text or "")
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return json.dumps(body).encode()


class Script:
    """Routes requests by their ``model`` field to queues of replies (or callables making one).

    Each step is used once, in order; when a model's queue is empty, ``default`` answers (a 500 naming
    the model if there is none). Every request is recorded, in arrival order.
    """

    def __init__(
        self,
        routes: Mapping[str, Iterable[Step]] | None = None,
        *,
        default: Step | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Step]] = {m: deque(steps) for m, steps in (routes or {}).items()}
        self._default = default
        self._requests: list[dict[str, Any]] = []

    def add(self, model: str, *steps: Step) -> Script:
        """Queue more steps for ``model``; returns self."""
        with self._lock:
            self._queues.setdefault(model, deque()).extend(steps)
        return self

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A copy of every request received so far."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str) -> list[dict[str, Any]]:
        """The requests whose ``model`` field is ``model``."""
        return [r for r in self.requests if r.get("model") == model]

    def __call__(self, request: dict[str, Any]) -> Reply:
        model = str(request.get("model", ""))
        with self._lock:
            self._requests.append(request)
            queue = self._queues.get(model)
            step = queue.popleft() if queue else self._default
        if step is None:
            return Reply(status=500, error_message=f"no scripted reply left for model {model!r}")
        return step if isinstance(step, Reply) else step(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default listen backlog (5) resets connections under a concurrent fan-out

    def __init__(self, handler: Handler) -> None:
        super().__init__(("127.0.0.1", 0), _RequestHandler)
        self.script_handler = handler
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.abandoned = 0  # delayed requests whose client hung up before the reply


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            data = {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "tests"}]}
            self._send(200, json.dumps(data).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        length = int(self.headers.get("Content-Length") or -1)
        if length < 0:
            self._send(411, b'{"error": {"message": "length required"}}')
            return
        if length > MAX_BODY_BYTES:
            self._send(413, b'{"error": {"message": "request body too large"}}')
            return
        try:
            request = json.loads(self.rfile.read(length))
        except ValueError:
            self._send(400, b'{"error": {"message": "request body is not JSON"}}')
            return
        reply = self.server.script_handler(request)
        if reply.delay_s > 0 and not self._wait_unless_abandoned(reply.delay_s):
            return
        self._send(reply.status, _body_for(reply, request), reply.headers)

    def _wait_unless_abandoned(self, seconds: float) -> bool:
        """Sleep ``seconds``; False if the server stops or the client hangs up first (counted)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.server.stopping.wait(min(left, 0.05)):
                return False
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                with self.server.lock:
                    self.server.abandoned += 1
                return False
        return True

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            # The client gave up (e.g. its timeout fired while the reply was delayed).
            self.close_connection = True


class ScriptedOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 (random port) in a daemon thread; a context manager."""

    def __init__(self, handler: Handler) -> None:
        self._server = _Server(handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def abandoned(self) -> int:
        """How many delayed requests were given up by their client (e.g. cancelled) before the reply."""
        return self._server.abandoned

    @property
    def url(self) -> str:
        """The ``api_base`` to give a client: ``http://127.0.0.1:PORT/v1``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ScriptedOpenAIServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
