"""The OpenAI chat-completions shapes ``rlmbox serve`` reads and writes (the subset it supports)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = ["ChatRequest", "Message", "completion", "completion_chunk", "error_body"]

MODEL_PREFIX = "rlmbox/"
DEFAULT_QUERY = "Respond to the user's message, which is the whole of `context`."


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """A chat completion request. Fields OpenAI clients send that an RLM has no use for (temperature, ...)
    are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=512)
    messages: list[Message] = Field(min_length=1)
    context: str | list[JsonValue] | dict[str, JsonValue] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def root_model(self) -> str:
        return self.model.removeprefix(MODEL_PREFIX)

    def query_and_context(self) -> tuple[str, Any]:
        """With a ``context`` field the last user message is the question. Without one, the last user
        message is the long input and the question is in the system and user messages before it."""
        users = [i for i, m in enumerate(self.messages) if m.role == "user"]
        if not users:
            raise ValueError("messages hold no user message")
        last = users[-1]
        if self.context is not None:
            return self.messages[last].text, self.context
        before = [
            m.text for m in self.messages[:last] if m.role in ("system", "developer", "user") and m.text
        ]
        return "\n\n".join(before) or DEFAULT_QUERY, self.messages[last].text


def _envelope(kind: str, model: str, request_id: str) -> dict[str, Any]:
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model}


def new_id() -> str:
    return f"chatcmpl-rlmbox-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    request_id: str, model: str, answer: str, finish: str, tokens: dict[str, int], run: dict[str, Any]
) -> dict[str, Any]:
    return {
        **_envelope("chat.completion", model, request_id),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": finish}
        ],
        "usage": tokens,
        "rlmbox": run,
    }


def completion_chunk(
    request_id: str, model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        **_envelope("chat.completion.chunk", model, request_id),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
