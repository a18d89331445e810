"""Model calls through litellm: the only module of rlmbox that imports litellm.

litellm is imported lazily (it takes seconds), configured once to stay offline and quiet, and every error
it raises is mapped here onto rlmbox's ``LLMError`` tree. Retries are done here, not by litellm or the
OpenAI SDK, so that every attempt is counted and logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import structlog

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
from rlmbox.untrusted import clean_text

__all__ = [
    "DEFAULT_CONTEXT_CHARS",
    "Completion",
    "LMClient",
    "context_window_chars",
    "window_chars",
    "error_class_for",
    "is_retryable",
    "litellm_exception_types",
    "load_litellm",
    "map_litellm_error",
    "retry_after_s",
]

log = structlog.get_logger()

MAX_RETRY_AFTER_S = 60.0
"""Longest wait honoured from a provider's Retry-After header."""
MAX_BACKOFF_S = 60.0
"""Longest wait between two attempts when the provider gives no Retry-After."""
DEFAULT_CONTEXT_CHARS = 100_000
"""What ``context_window_chars`` assumes for a model litellm has no limits for."""
USABLE_CHARS_PER_TOKEN = 3
_TIMEOUT_GRACE_S = 5.0
_MAX_DETAIL_CHARS = 300
_RETRYABLE_STATUS = frozenset({408, 409, 429})
_UNROUTABLE_MARKERS = ("LLM Provider NOT provided", "Unknown provider", "LiteLLMUnknownProvider")
# How servers litellm does not map to ContextWindowExceededError say that a prompt is too long (llama.cpp,
# vLLM, Ollama, OpenAI-compatible proxies).
_WINDOW_MARKERS = (
    "exceeds the available context size",
    "context length",  # vLLM's "maximum context length"
    "context_length_exceeded",
    "prompt is too long",
    "too many tokens",
)
_DEMO_PREFIX = "rlmbox-demo/"
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
_ERROR_PREFIX = re.compile(r"^(?:(?:litellm\.)?[A-Za-z]*(?:Error|Exception|Timeout): )+")


@functools.cache
def load_litellm() -> ModuleType:
    """Import and configure litellm once: local price table, no telemetry, no debug output."""
    # Must be set before the first import, or litellm fetches its price table from the internet.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False  # gone from recent litellm; kept off for older ones
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on errors
    litellm.turn_off_message_logging = True  # prompts stay out of litellm's logging callbacks
    litellm.disable_hf_tokenizer_download = True
    if "LITELLM_LOG" not in os.environ:
        for name in _LITELLM_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    return litellm


@functools.cache
def litellm_exception_types() -> tuple[type[BaseException], ...]:
    """Every exception class litellm defines in ``litellm.exceptions`` or exports at its top level."""
    litellm = load_litellm()
    from litellm import exceptions

    found: dict[str, type[BaseException]] = {}
    for module in (exceptions, litellm):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.startswith("litellm")
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    for value in getattr(litellm, "LITELLM_EXCEPTION_TYPES", ()):
        found[f"{value.__module__}.{value.__qualname__}"] = value
    return tuple(found[key] for key in sorted(found))


@functools.cache
def _caught_types() -> tuple[type[BaseException], ...]:
    """What a call into litellm may raise that is the provider's fault, not rlmbox's."""
    import httpx
    import openai

    return (*litellm_exception_types(), openai.OpenAIError, httpx.HTTPError, TimeoutError, ConnectionError)


def error_class_for(exc_type: type[BaseException]) -> type[LLMError]:
    """The rlmbox error class for an exception class from litellm, openai or httpx."""
    import httpx
    import openai

    litellm = load_litellm()
    if issubclass(exc_type, LLMError):
        return exc_type
    if issubclass(exc_type, openai.AuthenticationError | openai.PermissionDeniedError):
        return LLMAuthError
    if issubclass(exc_type, openai.NotFoundError | litellm.exceptions.LiteLLMUnknownProvider):
        return LLMModelNotFoundError
    if issubclass(exc_type, openai.RateLimitError):
        return LLMRateLimitError
    if issubclass(exc_type, openai.APITimeoutError | httpx.TimeoutException | TimeoutError):
        return LLMTimeoutError
    if issubclass(exc_type, litellm.exceptions.ContextWindowExceededError):
        return LLMContextWindowError
    if issubclass(exc_type, openai.BadRequestError | openai.UnprocessableEntityError):
        return LLMBadRequestError
    return LLMError


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, timeouts, connection errors and server-side (5xx) failures are worth another try."""
    import httpx
    import openai

    litellm = load_litellm()
    if isinstance(exc, openai.BadRequestError | openai.AuthenticationError | openai.NotFoundError):
        return False
    if isinstance(
        exc,
        openai.RateLimitError
        | openai.APIConnectionError  # includes APITimeoutError
        | openai.InternalServerError
        | litellm.exceptions.ServiceUnavailableError
        | litellm.exceptions.BadGatewayError
        | httpx.TransportError
        | TimeoutError
        | ConnectionError,
    ):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in _RETRYABLE_STATUS or status >= 500)


def _detail(exc: BaseException, secret: str | None) -> str:
    """The first line of the error's own text, without litellm's prefixes and without the API key."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    text = _ERROR_PREFIX.sub("", text)
    if len(text) > _MAX_DETAIL_CHARS:
        text = text[: _MAX_DETAIL_CHARS - 3] + "..."
    return text


def map_litellm_error(
    exc: BaseException,
    model: str,
    *,
    attempts: int = 1,
    timeout_s: float | None = None,
    api_key: str | None = None,
) -> LLMError:
    """Turn an exception raised by litellm (or openai/httpx beneath it) into rlmbox's error tree.

    The message is one line, names the model, and has ``api_key`` masked if it appears.
    """
    cls = error_class_for(type(exc))
    detail = _detail(exc, api_key)
    if cls is LLMBadRequestError and any(marker in str(exc) for marker in _UNROUTABLE_MARKERS):
        cls = LLMModelNotFoundError
    if cls is LLMBadRequestError and any(marker in str(exc).lower() for marker in _WINDOW_MARKERS):
        cls = LLMContextWindowError
    tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
    if cls is LLMAuthError:
        message = f"the provider rejected the credentials for model {model!r} (check the API key): {detail}"
    elif cls is LLMModelNotFoundError:
        message = (
            f"model {model!r} is unknown to the provider or cannot be routed; it must be a litellm "
            f"model string like openai/gpt-5-mini: {detail}"
        )
    elif cls is LLMRateLimitError:
        message = f"model {model!r} stayed rate limited after {tries}: {detail}"
    elif cls is LLMTimeoutError:
        within = f" within {timeout_s:g}s" if timeout_s is not None else ""
        message = f"model {model!r} did not answer{within} ({tries}): {detail}"
    elif cls is LLMContextWindowError:
        message = f"the prompt is longer than the context window of model {model!r}: {detail}"
    elif cls is LLMBadRequestError:
        message = f"the provider refused the request to model {model!r}: {detail}"
    else:
        message = f"call to model {model!r} failed after {tries}: {detail}"
    return cls(message)


def _headers_of(exc: BaseException) -> list[Any]:
    """Response headers reachable from the exception or the exceptions it wraps."""
    found: list[Any] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for holder in (
            getattr(current, "litellm_response_headers", None),
            getattr(current, "headers", None),
            getattr(getattr(current, "response", None), "headers", None),
        ):
            if holder:
                found.append(holder)
        current = current.__cause__ or current.__context__
    return found


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds the provider asked to wait (``retry-after-ms`` or ``Retry-After``), if it said so."""
    for headers in _headers_of(exc):
        lowered = {str(k).lower(): str(v) for k, v in dict(headers).items()}
        if "retry-after-ms" in lowered:
            try:
                return max(0.0, float(lowered["retry-after-ms"]) / 1000)
            except ValueError:
                pass
        value = lowered.get("retry-after")
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            when = _parse_http_date(value)
            if when is not None:
                return max(0.0, when - time.time())
    return None


def _parse_http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Completion:
    """One successful model answer and what it cost."""

    text: str
    """The answer; "" when the provider returned no content."""
    model: str
    """The model string that was asked for."""
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    """From litellm's bundled price table; None when the model is not in it."""
    duration_s: float
    """Wall time of the whole call, retries and waits included."""
    attempts: int


class LMClient:
    """Calls models through litellm with rlmbox's retry policy and error mapping."""

    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        self._api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None

    async def complete(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        timeout_s: float | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Completion:
        """Ask ``model`` for one answer, retrying transient failures; raises an ``LLMError`` subclass.

        ``timeout_s`` tightens the per-attempt limit for this call (e.g. to a run's remaining time);
        ``settings.request_timeout_s`` always applies. ``params`` (sampling parameters for this call alone)
        override the settings' ``completion_kwargs``; those a provider does not take are dropped.

        ``rlmbox-demo/...`` models (the scripted offline policy) are registered with litellm on first use.
        """
        litellm = _litellm_for(model)
        timeout = self._settings.request_timeout_s
        if timeout_s is not None:
            timeout = min(timeout, timeout_s)
        if timeout <= 0:
            raise LLMTimeoutError(f"no time left to call model {model!r}")
        kwargs = self._call_kwargs(model, messages, timeout)
        if params:
            kwargs.update(params, drop_params=True)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(timeout + _TIMEOUT_GRACE_S):
                    response = await litellm.acompletion(**kwargs)
            except _caught_types() as exc:
                retries_left = self._settings.max_retries - (attempt - 1)
                if retries_left <= 0 or not is_retryable(exc):
                    log.warning(
                        "llm.call_failed",
                        model=model,
                        attempts=attempt,
                        error_type=type(exc).__name__,
                        retryable=is_retryable(exc),
                    )
                    raise map_litellm_error(
                        exc, model, attempts=attempt, timeout_s=timeout, api_key=self._api_key
                    ) from exc
                delay = self._retry_delay(exc, attempt)
                log.info(
                    "llm.retry",
                    model=model,
                    attempt=attempt,
                    error_type=type(exc).__name__,
                    delay_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            return self._completion(response, model, attempts=attempt, started=started)

    def _call_kwargs(self, model: str, messages: list[dict[str, str]], timeout: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self._settings.completion_kwargs)
        if (api_base := self._settings.api_base_for(model)) is not None:
            kwargs["api_base"] = api_base
        if self._api_key is not None:
            kwargs["api_key"] = self._api_key
        kwargs.update(
            model=model,
            messages=messages,
            timeout=timeout,
            stream=False,
            # Retries happen in complete(); litellm's own (num_retries) and the OpenAI SDK's (max_retries)
            # would multiply with them and hide attempts from the ledger.
            num_retries=0,
            max_retries=0,
        )
        return kwargs

    def _retry_delay(self, exc: BaseException, attempt: int) -> float:
        waited = retry_after_s(exc)
        if waited is not None:
            return min(waited, MAX_RETRY_AFTER_S)
        backoff = self._settings.retry_backoff_s * 2 ** (attempt - 1)
        return min(backoff, MAX_BACKOFF_S) * random.uniform(0.5, 1.0)

    def _completion(self, response: Any, model: str, *, attempts: int, started: float) -> Completion:
        choices = getattr(response, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        text = getattr(message, "content", None) or ""
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        completion = Completion(
            text=clean_text(text if isinstance(text, str) else str(text)),  # model output is untrusted text
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=_cost_usd(response, model),
            duration_s=time.monotonic() - started,
            attempts=attempts,
        )
        log.debug(
            "llm.completed",
            model=model,
            attempts=attempts,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=completion.cost_usd,
            duration_s=round(completion.duration_s, 3),
        )
        return completion


def _litellm_for(model: str) -> ModuleType:
    """litellm, with the offline demo provider registered first when ``model`` names it."""
    litellm = load_litellm()
    if model.startswith(_DEMO_PREFIX):
        from rlmbox.demo.policy import register_demo_provider

        register_demo_provider()
    return litellm


def _cost_usd(response: Any, model: str) -> float | None:
    """Price of one response from litellm's bundled table, or None when the model is not in it.

    litellm prices every response it returns (``None`` when it cannot); that figure is reused rather
    than computed a second time, which for an unpriced model means a second failed lookup.
    """
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict) and "response_cost" in hidden:
        cost = hidden["response_cost"]
    else:
        try:
            cost = load_litellm().completion_cost(completion_response=response, model=model)
        # Boundary: for an unpriced model litellm raises anything from its own errors to a bare Exception.
        except Exception as exc:
            log.debug("llm.cost_unknown", model=model, error_type=type(exc).__name__)
            return None
    if not isinstance(cost, int | float) or cost < 0:
        return None
    return float(cost)


def window_chars(settings: LLMSettings, model: str) -> int:
    """About how many characters of prompt ``model`` reads in one call: from the window the settings give
    for it (``--root-window``, ``--sub-window``), else from litellm's table (``context_window_chars``)."""
    tokens = settings.window_tokens(model)
    return tokens * USABLE_CHARS_PER_TOKEN if tokens is not None else context_window_chars(model)


def context_window_chars(model: str) -> int:
    """About how many characters of prompt ``model`` reads in one call.

    From the input-token limit in litellm's bundled table at ``USABLE_CHARS_PER_TOKEN`` (which leaves room
    for instructions and the answer); ``DEFAULT_CONTEXT_CHARS`` when the model is not in the table.
    """
    litellm = _litellm_for(model)
    try:
        info = litellm.get_model_info(model)
    # Boundary: litellm signals an unknown model with its own errors or a bare Exception.
    except Exception as exc:
        log.debug("llm.context_window_unknown", model=model, error_type=type(exc).__name__)
        return DEFAULT_CONTEXT_CHARS
    tokens = info.get("max_input_tokens") or info.get("max_tokens")
    if not isinstance(tokens, int) or tokens <= 0:
        return DEFAULT_CONTEXT_CHARS
    return tokens * USABLE_CHARS_PER_TOKEN
