"""LMClient against a scripted OpenAI-compatible server, through litellm's real HTTP path."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from rlmbox._exceptions import (
    LLMAuthError,
    LLMBadRequestError,
    LLMContextWindowError,
    LLMError,
    LLMModelNotFoundError,
    LLMRateLimitError,
    LLMTimeoutError,
)
from rlmbox.config import LLMSettings
from rlmbox.llm import (
    DEFAULT_CONTEXT_CHARS,
    USABLE_CHARS_PER_TOKEN,
    Completion,
    LMClient,
    context_window_chars,
    error_class_for,
    litellm_exception_types,
    load_litellm,
    map_litellm_error,
    retry_after_s,
    window_chars,
)

from support.openai_server import Reply, Script, ScriptedOpenAIServer

API_KEY = "sk-test-0123456789abcdef-secret"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def server(script: Script) -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(script) as running:
        yield running


def make_client(server: ScriptedOpenAIServer, **overrides: Any) -> LMClient:
    values: dict[str, Any] = {
        "api_base": server.url,
        "api_key": API_KEY,
        "retry_backoff_s": 0.001,
        "max_retries": 2,
        "request_timeout_s": 10.0,
    }
    values.update(overrides)
    return LMClient(LLMSettings(**values))


def complete(client: LMClient, model: str, **kwargs: Any) -> Completion:
    return asyncio.run(client.complete(model, MESSAGES, **kwargs))


# ---------------------------------------------------------------- successful calls


def test_completion_has_text_usage_and_one_attempt(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", Reply(text="hello there", prompt_tokens=12, completion_tokens=3))

    result = complete(make_client(server), "openai/root-model")

    assert result.text == "hello there"
    assert result.model == "openai/root-model"
    assert (result.prompt_tokens, result.completion_tokens) == (12, 3)
    assert result.attempts == 1
    assert result.cost_usd is None  # not in litellm's price table
    assert result.duration_s >= 0
    (request,) = script.requests
    assert request["model"] == "root-model"
    assert request["messages"] == MESSAGES


def test_null_content_becomes_empty_text(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", Reply(text=None))

    assert complete(make_client(server), "openai/root-model").text == ""


def test_a_calls_own_params_override_the_settings_and_unsupported_ones_are_dropped(
    server: ScriptedOpenAIServer, script: Script
) -> None:
    """A resampled turn sends its own temperature and seed; a model that takes no temperature but 1 (gpt-5)
    gets the call without it rather than an error."""
    script.add("root-model", Reply(text="a"))
    script.add("gpt-5", Reply(text="b"))
    client = make_client(server, completion_kwargs={"temperature": 0, "max_tokens": 50})

    complete(client, "openai/root-model", params={"temperature": 0.7, "seed": 3})
    complete(client, "openai/gpt-5", params={"temperature": 0.7, "seed": 3})

    sampled, reasoning = script.requests
    assert (sampled["temperature"], sampled["seed"], sampled["max_tokens"]) == (0.7, 3, 50)
    assert "temperature" not in reasoning and reasoning["seed"] == 3


def test_completion_kwargs_are_sent_and_cannot_reenable_retries(
    server: ScriptedOpenAIServer, script: Script
) -> None:
    script.add("root-model", Reply(status=500), Reply(text="ok"))
    client = make_client(server, max_retries=0, completion_kwargs={"temperature": 0.25, "max_retries": 5})

    with pytest.raises(LLMError):
        complete(client, "openai/root-model")

    (request,) = script.requests
    assert request["temperature"] == 0.25


# ---------------------------------------------------------------- retries


def test_server_error_then_success_is_retried(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", Reply(status=500), Reply(text="second time lucky"))

    result = complete(make_client(server), "openai/root-model")

    assert result.text == "second time lucky"
    assert result.attempts == 2
    assert len(script.requests) == 2


def test_rate_limit_honours_retry_after(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", Reply(status=429, headers={"Retry-After": "0.3"}), Reply(text="ok"))

    started = time.monotonic()
    result = complete(make_client(server, retry_backoff_s=0.0), "openai/root-model")

    assert result.attempts == 2
    assert time.monotonic() - started >= 0.28


def test_persistent_rate_limit_raises_rate_limit_error(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", *[Reply(status=429, headers={"Retry-After": "0"})] * 3)

    with pytest.raises(LLMRateLimitError, match="openai/root-model"):
        complete(make_client(server, max_retries=1), "openai/root-model")

    assert len(script.requests) == 2


def test_persistent_server_error_gives_up_after_max_retries(
    server: ScriptedOpenAIServer, script: Script
) -> None:
    script.add("root-model", *[Reply(status=500)] * 10)

    with pytest.raises(LLMError) as caught:
        complete(make_client(server, max_retries=3), "openai/root-model")

    assert type(caught.value) is LLMError
    assert len(script.requests) == 4
    assert "openai/root-model" in str(caught.value)
    assert "4 attempts" in str(caught.value)
    assert caught.value.__cause__ is not None


def test_service_unavailable_is_retried(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", Reply(status=503), Reply(status=502), Reply(text="up again"))

    assert complete(make_client(server), "openai/root-model").attempts == 3


# ---------------------------------------------------------------- errors that are not retried


def test_auth_error_is_not_retried_and_hides_the_key(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", Reply(status=401, error_message=f"Incorrect API key provided: {API_KEY}"))

    with pytest.raises(LLMAuthError) as caught:
        complete(make_client(server), "openai/root-model")

    message = str(caught.value)
    assert len(script.requests) == 1
    assert API_KEY not in message
    assert API_KEY not in repr(caught.value)
    assert "openai/root-model" in message
    assert "\n" not in message


def test_unknown_model_at_the_provider(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add(
        "no-such-model",
        Reply(
            status=404, error_message="The model `no-such-model` does not exist", error_code="model_not_found"
        ),
    )

    with pytest.raises(LLMModelNotFoundError) as caught:
        complete(make_client(server), "openai/no-such-model")

    assert len(script.requests) == 1
    assert "openai/no-such-model" in str(caught.value)
    assert "openai/gpt-5-mini" in str(caught.value)


def test_unroutable_model_string(server: ScriptedOpenAIServer, script: Script) -> None:
    with pytest.raises(LLMModelNotFoundError) as caught:
        complete(make_client(server), "nonexistent-provider-xyz/foo")

    assert "nonexistent-provider-xyz/foo" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert script.requests == []


def test_context_window_exceeded_is_a_bad_request(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add(
        "root-model",
        Reply(
            status=400,
            error_message="This model's maximum context length is 8192 tokens.",
            error_code="context_length_exceeded",
        ),
    )

    with pytest.raises(LLMBadRequestError):
        complete(make_client(server), "openai/root-model")

    assert len(script.requests) == 1


def test_timeout(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", Reply(text="too late", delay_s=3.0))

    started = time.monotonic()
    with pytest.raises(LLMTimeoutError) as caught:
        complete(make_client(server, max_retries=0), "openai/root-model", timeout_s=0.3)

    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value, TimeoutError)
    assert "openai/root-model" in str(caught.value)


def test_timeout_then_success_is_retried(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", Reply(text="too late", delay_s=3.0), Reply(text="on time"))

    result = complete(make_client(server), "openai/root-model", timeout_s=0.3)

    assert (result.text, result.attempts) == ("on time", 2)


def test_no_time_left_fails_without_a_request(server: ScriptedOpenAIServer, script: Script) -> None:
    with pytest.raises(LLMTimeoutError):
        complete(make_client(server), "openai/root-model", timeout_s=0)

    assert script.requests == []


def test_malformed_json_body(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", *[Reply(raw_body=b'{"choices": [ this is not json')] * 3)

    with pytest.raises(LLMError) as caught:
        complete(make_client(server), "openai/root-model")

    assert "openai/root-model" in str(caught.value)


# ---------------------------------------------------------------- cost


def test_cost_of_a_known_model_is_computed_offline(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("gpt-4o-mini", Reply(text="priced", prompt_tokens=1000, completion_tokens=500))

    result = complete(make_client(server), "openai/gpt-4o-mini")

    prices = load_litellm().model_cost["gpt-4o-mini"]
    expected = 1000 * prices["input_cost_per_token"] + 500 * prices["output_cost_per_token"]
    assert isinstance(result.cost_usd, float)
    assert result.cost_usd > 0
    assert result.cost_usd == pytest.approx(expected)
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


def test_cost_of_an_unknown_model_is_none(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("house-model-7", Reply(text="unpriced"))

    assert complete(make_client(server), "openai/house-model-7").cost_usd is None


def test_context_window_from_the_price_table() -> None:
    known = context_window_chars("openai/gpt-4o-mini")

    assert known == load_litellm().model_cost["gpt-4o-mini"]["max_input_tokens"] * 3
    assert context_window_chars("openai/house-model-7") == DEFAULT_CONTEXT_CHARS
    assert context_window_chars("nonexistent-provider-xyz/foo") == DEFAULT_CONTEXT_CHARS


# ---------------------------------------------------------------- error mapping


def _instance(cls: type[BaseException]) -> BaseException | None:
    """Build an instance of a litellm exception class from plausible constructor arguments."""
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    plausible: dict[str, Any] = {
        "message": "boom",
        "model": "openai/x",
        "llm_provider": "openai",
        "response": httpx.Response(500, request=request),
        "request": request,
        "status_code": 500,
        "original_exception": RuntimeError("boom"),
        "raw_response": "{}",
        "schema": "{}",
        "current_cost": 2.0,
        "max_budget": 1.0,
    }
    arguments: dict[str, Any] = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in plausible:
            arguments[name] = plausible[name]
        elif parameter.default is parameter.empty:
            arguments[name] = "x"
    try:
        return cls(**arguments)
    except (TypeError, ValueError, AttributeError):
        return None


def test_every_litellm_exception_maps_to_an_llm_error() -> None:
    types = litellm_exception_types()
    names = {t.__name__ for t in types}
    assert {
        "AuthenticationError",
        "NotFoundError",
        "RateLimitError",
        "Timeout",
        "APIConnectionError",
    } <= names
    assert len(types) >= 20

    built = 0
    for exc_type in types:
        assert issubclass(error_class_for(exc_type), LLMError), exc_type
        exc = _instance(exc_type)
        if exc is None:
            continue
        built += 1
        mapped = map_litellm_error(exc, "openai/x", api_key="boom")
        assert isinstance(mapped, LLMError), exc_type
        assert "openai/x" in str(mapped)
        assert "\n" not in str(mapped)
    assert built >= len(types) * 3 // 4


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("AuthenticationError", LLMAuthError),
        ("PermissionDeniedError", LLMAuthError),
        ("NotFoundError", LLMModelNotFoundError),
        ("RateLimitError", LLMRateLimitError),
        ("Timeout", LLMTimeoutError),
        ("BadRequestError", LLMBadRequestError),
        ("ContextWindowExceededError", LLMContextWindowError),
        ("ContentPolicyViolationError", LLMBadRequestError),
        ("InternalServerError", LLMError),
        ("APIConnectionError", LLMError),
        ("ServiceUnavailableError", LLMError),
    ],
)
def test_error_classes(name: str, expected: type[LLMError]) -> None:
    assert error_class_for(getattr(load_litellm(), name)) is expected


def test_provider_not_provided_maps_to_model_not_found() -> None:
    litellm = load_litellm()
    exc = litellm.BadRequestError(
        message="LLM Provider NOT provided. Pass in the LLM provider you are trying to call.",
        model="foo",
        llm_provider="",
    )

    mapped = map_litellm_error(exc, "foo")

    assert isinstance(mapped, LLMModelNotFoundError)
    assert "openai/gpt-5-mini" in str(mapped)


@pytest.mark.parametrize(
    "message",
    [
        # llama.cpp's server, as the local model answers a prompt over its window
        "request (12345 tokens) exceeds the available context size (8192 tokens), try increasing it",
        # vLLM
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens",
    ],
)
def test_a_refusal_for_the_window_is_told_apart_from_other_bad_requests(message: str) -> None:
    litellm = load_litellm()
    exc = litellm.BadRequestError(message=message, model="qwen", llm_provider="openai")
    mapped = map_litellm_error(exc, "openai/qwen")
    assert isinstance(mapped, LLMContextWindowError) and isinstance(mapped, LLMBadRequestError)
    assert "context window" in str(mapped) and "openai/qwen" in str(mapped)
    other = litellm.BadRequestError(message="temperature must be at most 2", model="q", llm_provider="openai")
    assert type(map_litellm_error(other, "openai/q")) is LLMBadRequestError


class _WithHeaders(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("limited")
        self.litellm_response_headers = headers


def test_retry_after_parsing() -> None:
    in_two_minutes = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)

    assert retry_after_s(_WithHeaders({"Retry-After": "1.5"})) == 1.5
    assert retry_after_s(_WithHeaders({"retry-after-ms": "250"})) == 0.25
    assert 100 < (retry_after_s(_WithHeaders({"retry-after": in_two_minutes})) or 0) <= 120
    assert retry_after_s(_WithHeaders({"retry-after": "soon"})) is None
    assert retry_after_s(_WithHeaders({})) is None


# ---------------------------------------------------------------- import cost


def test_importing_rlmbox_llm_does_not_import_litellm() -> None:
    code = (
        "import sys, rlmbox.llm, rlmbox.demo.policy, rlmbox.demo.haystack; "
        "sys.exit(1 if 'litellm' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


# ---------------------------------------------------------------- replies and where models live


def test_reasoning_beside_the_content_is_not_the_answer(server: ScriptedOpenAIServer, script: Script) -> None:
    """Providers that think aloud send ``reasoning_content`` beside ``content``: the content is the answer."""
    body = completion_body("```repl\nprint(1)\n```", reasoning_content="FINAL(a guess) I should print first.")
    script.add("root-model", Reply(raw_body=body))

    assert complete(make_client(server), "openai/root-model").text == "```repl\nprint(1)\n```"


def test_a_lone_surrogate_in_a_reply_is_replaced(server: ScriptedOpenAIServer, script: Script) -> None:
    script.add("root-model", Reply(raw_body=completion_body("broken \ud800 text")))  # sent as \\ud800

    assert complete(make_client(server), "openai/root-model").text == "broken \ufffd text"


def test_the_sub_model_may_live_at_its_own_base(server: ScriptedOpenAIServer, script: Script) -> None:
    """``--sub-api-base``: root and sub-model on two servers (a hosted root, a local sub-model, say)."""
    sub_script = Script({"small": [Reply(text="from the sub server")]})
    script.add("big", Reply(text="from the root server"))
    with ScriptedOpenAIServer(sub_script) as sub_server:
        client = make_client(
            server, model="openai/big", sub_model="openai/small", sub_api_base=sub_server.url
        )
        assert complete(client, "openai/big").text == "from the root server"
        assert complete(client, "openai/small").text == "from the sub server"


def test_windows_given_for_models_litellm_does_not_know() -> None:
    settings = LLMSettings(
        model="openai/local-root", sub_model="openai/local-sub", root_window=8192, sub_window=2048
    )
    assert window_chars(settings, "openai/local-sub") == 2048 * USABLE_CHARS_PER_TOKEN
    assert window_chars(settings, "openai/local-root") == 8192 * USABLE_CHARS_PER_TOKEN
    assert window_chars(LLMSettings(model="openai/local-root"), "openai/local-root") == DEFAULT_CONTEXT_CHARS


def test_one_model_cannot_have_two_bases_or_two_windows() -> None:
    with pytest.raises(ValidationError, match="give one api_base"):
        LLMSettings(model="openai/m", api_base="http://a", sub_api_base="http://b")
    with pytest.raises(ValidationError, match="give one window"):
        LLMSettings(model="openai/m", root_window=100, sub_window=200)
    assert LLMSettings(model="openai/m", sub_window=200).window_tokens("openai/m") == 200


def completion_body(content: str, **message: str) -> bytes:
    """A chat completion's JSON body as a provider sends it (non-ASCII escaped, as \\uXXXX)."""
    choice = {
        "index": 0,
        "finish_reason": "stop",
        "message": {"role": "assistant", "content": content, **message},
    }
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [choice],
        "usage": usage,
    }
    return json.dumps(body).encode()
