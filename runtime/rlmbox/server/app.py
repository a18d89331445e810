"""``rlmbox serve``: an RLM behind the OpenAI chat-completions API: any OpenAI client can use it as a model.

    POST /v1/chat/completions   {"model": "rlmbox/openai/gpt-5-mini", "messages": [...], "context": ...}
    GET  /v1/models

Every request needs one of the server's bearer tokens; a refused one closes its connection, and at most
``max_pending`` connections may be open without having presented one. A request's headers must arrive
within ``header_timeout_s`` of the connection's start or of the previous response, its body within
``body_timeout_s`` (408). At most ``max_runs`` runs at once (more get 429), bodies are capped at
``max_body_bytes`` (413), each run at ``timeout_s`` (it then ends as budget exhausted, with its partial
answer). A client that disconnects cancels its run: the run's containers are removed.
Errors are OpenAI-style JSON bodies. The server keeps a warm pool of sandboxes for its runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rlmbox import _exceptions
from rlmbox.config import Settings
from rlmbox.rlm import RLM, RunResult
from rlmbox.sandbox.pool import SandboxPool
from rlmbox.server.listener import ConnectionGate
from rlmbox.server.schema import (
    MODEL_PREFIX,
    ChatRequest,
    completion,
    completion_chunk,
    error_body,
    new_id,
    usage,
)

__all__ = ["RLMService", "ServeOptions"]

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROGRESS_EVENTS = {"node_started", "root_call", "cell", "node_finished"}
MIN_TOKEN_CHARS = 16
SHUTDOWN_WAIT_S = 60.0
CLOSING_STATUSES = {401, 408}  # refused token, body too slow: the connection is not kept


class ServeOptions(BaseModel):
    """What the server accepts: its tokens, its root models, its caps and its timeouts."""

    model_config = ConfigDict(frozen=True)

    tokens: frozenset[str] = Field(min_length=1)
    models: frozenset[str] = Field(min_length=1, description="root models clients may name")
    max_runs: int = Field(4, ge=1)
    max_body_bytes: int = Field(64 * 2**20, ge=1024)
    timeout_s: float = Field(540.0, gt=0)
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers, from the connection's start or the previous response"
    )
    body_timeout_s: float = Field(60.0, gt=0, description="a request's body, from the end of its headers")
    max_pending: int = Field(
        128, ge=1, description="connections without a valid token yet; past it the oldest one is closed"
    )

    @field_validator("tokens")
    @classmethod
    def _long_enough(cls, tokens: frozenset[str]) -> frozenset[str]:
        if any(len(token) < MIN_TOKEN_CHARS or token != token.strip() for token in tokens):
            raise ValueError(f"tokens need {MIN_TOKEN_CHARS} or more characters and no spaces at their ends")
        return tokens


class _Refused(Exception):
    def __init__(self, status: int, message: str, kind: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code
        # A failed run is not retried by the openai client (it would pay for the run again); a full
        # server says when to come back.
        self.headers = (
            {"Retry-After": "5"} if status == 429 else {"x-should-retry": "false"} if status >= 500 else {}
        )


class RLMService:
    """The web application and the state its requests share (the warm pool, the count of runs)."""

    def __init__(self, settings: Settings, options: ServeOptions, gate: ConnectionGate | None = None) -> None:
        self.settings = settings
        self.options = options
        self.gate = gate
        self.active = 0
        self._runs: set[asyncio.Task[Any]] = set()
        self._pool: SandboxPool | None = None

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.options.max_body_bytes, middlewares=[self._errors, self._auth]
        )
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.cleanup_ctx.append(self._warm_pool)
        app.on_shutdown.append(self._end_runs)
        return app

    async def _end_runs(self, app: web.Application) -> None:
        """The server is stopping: cancel the runs in progress (their containers are removed) now, rather
        than let them spend while aiohttp waits for their requests."""
        runs = set(self._runs)
        for run in runs:
            run.cancel()
        if runs:
            await asyncio.wait(runs, timeout=SHUTDOWN_WAIT_S)

    async def _warm_pool(self, app: web.Application) -> AsyncIterator[None]:
        async with SandboxPool(self.settings.sandbox, self.settings.warm_sandboxes) as self._pool:
            yield

    # -- middleware ----------------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure as an OpenAI-style JSON error body."""
        try:
            return await handler(request)
        except _Refused as exc:
            response = _error(exc.status, str(exc), exc.kind, exc.code, exc.headers)
            if exc.status in CLOSING_STATUSES:
                response.force_close()
            return response
        except _exceptions.ConfigError as exc:
            return _error(400, str(exc), "invalid_request_error")
        except _exceptions.RLMBoxError as exc:
            refused = _refusal_for(exc)
            return _error(refused.status, str(refused), refused.kind, refused.code, refused.headers)
        except web.HTTPRequestEntityTooLarge:
            limit = self.options.max_body_bytes
            return _error(413, f"request body over the {limit}-byte limit", "invalid_request_error")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason, "invalid_request_error")
        except Exception:  # a bug: logged here, and never a traceback to the client
            log.exception("serve.request_failed", path=request.path)
            refused = _refusal_for(RuntimeError())
            return _error(refused.status, str(refused), refused.kind, refused.code, refused.headers)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").encode("utf-8", "surrogateescape")
        if not header.startswith("Bearer ") or not any(
            hmac.compare_digest(given, token.encode()) for token in self.options.tokens
        ):
            raise _Refused(
                401, "a valid bearer token is required", "invalid_request_error", "invalid_api_key"
            )
        if self.gate is not None:
            self.gate.authenticated(request.transport)
        return await handler(request)

    # -- endpoints -----------------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": MODEL_PREFIX + model, "object": "model", "created": 0, "owned_by": "rlmbox"}
            for model in sorted(self.options.models)
        ]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if self.active >= self.options.max_runs:  # before reading a body that may be large
            message = f"{self.options.max_runs} runs are already in progress; retry later"
            raise _Refused(429, message, "rate_limit_exceeded")
        self.active += 1
        task = asyncio.current_task()
        assert task is not None
        self._runs.add(task)
        try:
            return await self._chat(request)
        finally:
            self.active -= 1
            self._runs.discard(task)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(self.options.body_timeout_s):
                body = await request.read()
        except TimeoutError:
            message = f"the request body did not arrive within {self.options.body_timeout_s:g} s"
            raise _Refused(408, message, "invalid_request_error", "request_timeout") from None
        try:
            chat = ChatRequest.model_validate_json(body)
            query, context = chat.query_and_context()
        except (ValidationError, ValueError) as exc:
            raise _Refused(400, _first_error(exc), "invalid_request_error") from None
        del body
        if not query.strip():
            raise _Refused(400, "the question (the last user message) is empty", "invalid_request_error")
        if not chat.model.startswith(MODEL_PREFIX) or chat.root_model not in self.options.models:
            names = ", ".join(MODEL_PREFIX + m for m in sorted(self.options.models))
            message = f"model {chat.model!r} is not served here (served: {names})"
            raise _Refused(404, message, "invalid_request_error", "model_not_found")
        rlm = RLM(self._settings_for(chat.root_model), pool=self._pool)
        if chat.stream:
            return await self._stream(request, chat, rlm, query, context)
        result = await rlm.arun(context, query)
        return web.json_response(_completion(new_id(), chat.model, result))

    def _settings_for(self, root_model: str) -> Settings:
        llm = self.settings.llm.model_copy(update={"model": root_model})
        wall = self.settings.limits.max_wall_s
        limits = self.settings.limits.model_copy(
            update={
                "max_wall_s": self.options.timeout_s if wall is None else min(wall, self.options.timeout_s)
            }
        )
        return self.settings.model_copy(update={"llm": llm, "limits": limits})

    @staticmethod
    async def _progress(
        run: asyncio.Future[RunResult],
        progress: asyncio.Queue[dict[str, Any]],
        send: Callable[[dict[str, Any] | str], Awaitable[None]],
        request_id: str,
        model: str,
    ) -> None:
        await send(completion_chunk(request_id, model, {"role": "assistant", "content": ""}))
        while not run.done() or not progress.empty():
            update = asyncio.ensure_future(progress.get())
            try:
                await asyncio.wait({run, update}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not update.done():
                    update.cancel()
            if not update.cancelled():
                await send(completion_chunk(request_id, model, {}, rlmbox_progress=update.result()))

    async def _stream(
        self, request: web.Request, chat: ChatRequest, rlm: RLM, query: str, context: Any
    ) -> web.StreamResponse:
        """Progress chunks (an empty delta and an ``rlmbox_progress`` field) while the run goes, then the
        answer as content, the finish reason, the usage if asked for, and ``[DONE]``."""
        request_id, model = new_id(), chat.model
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        progress: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        counts = {"turns": 0, "cells": 0, "sub_calls": 0, "nodes": 0}
        started = time.monotonic()

        def on_event(event: dict[str, Any]) -> None:
            kind = event["event"]
            counts["turns"] += kind == "root_call"
            counts["cells"] += kind == "cell"
            counts["sub_calls"] += kind == "sub_call"
            counts["nodes"] += kind == "node_started"
            if kind in PROGRESS_EVENTS:
                progress.put_nowait(
                    {
                        "event": kind,
                        "node": event.get("node"),
                        **counts,
                        "elapsed_s": round(time.monotonic() - started, 2),
                    }
                )

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
            await response.write(f"data: {data}\n\n".encode())

        run = asyncio.ensure_future(rlm.arun(context, query, on_event=on_event))
        try:
            await self._progress(run, progress, send, request_id, model)
            body = _completion(request_id, model, run.result())
        except Exception as exc:  # headers are sent: the error goes in the stream, as OpenAI streams do
            refused = exc if isinstance(exc, _Refused) else _refusal_for(exc)
            if not isinstance(exc, _Refused | _exceptions.RLMBoxError):
                log.exception("serve.run_failed")
            await send(error_body(str(refused), refused.kind, refused.code))
        else:
            await send(
                completion_chunk(request_id, model, {"content": body["choices"][0]["message"]["content"]})
            )
            extra = {"rlmbox": body["rlmbox"]}
            await send(completion_chunk(request_id, model, {}, body["choices"][0]["finish_reason"], **extra))
            if chat.stream_options and chat.stream_options.include_usage:
                await send({**completion_chunk(request_id, model, {}), "choices": [], "usage": body["usage"]})
        finally:
            if not run.done():  # the client went away (or the server is stopping): end the run
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
        await send("[DONE]")
        await response.write_eof()
        return response


def _completion(request_id: str, model: str, result: RunResult) -> dict[str, Any]:
    """The run as a chat completion; a failed run as the error body its cause calls for."""
    run = {
        "run_id": result.run_id,
        "status": result.status,
        "iterations": result.iterations,
        "sub_calls": result.sub_calls,
        "cost_usd": result.cost_usd,
        "elapsed_s": result.elapsed_s,
        "nodes": result.tree.node_count,
        "error": result.error,
    }
    if result.status == "error":
        status, kind = _status_of(result.error_type)
        raise _Refused(status, f"the run failed: {result.error}", kind, result.error_type)
    prompt = sum(u.prompt_tokens for u in result.usage.values())
    produced = sum(u.completion_tokens for u in result.usage.values())
    finish = "stop" if result.status == "completed" else "length"
    return completion(request_id, model, result.answer or "", finish, usage(prompt, produced), run)


def _refusal_for(exc: Exception) -> _Refused:
    if not isinstance(exc, _exceptions.RLMBoxError):
        return _Refused(500, "internal error in the rlmbox server", "server_error")
    status, kind = _status_of(type(exc).__name__)
    return _Refused(status, str(exc), kind, type(exc).__name__)


def _status_of(error_type: str | None) -> tuple[int, str]:
    error_class = getattr(_exceptions, error_type or "", None)
    if isinstance(error_class, type) and issubclass(error_class, _exceptions.LLMError):
        return 502, "upstream_error"
    if isinstance(error_class, type) and issubclass(error_class, _exceptions.SandboxError):
        return 503, "sandbox_error"
    return 500, "server_error"


def _error(
    status: int, message: str, kind: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(message, kind, code), status=status, headers=headers)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return f"invalid request ({where}: {first['msg']})"
    return f"invalid request ({exc})"
