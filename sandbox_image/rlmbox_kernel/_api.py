"""What model-written code sees in the REPL: ``context``, ``llm_query``, ``rlm_query``, ``FINAL``..."""

from __future__ import annotations

import json
import mmap
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlmbox_kernel._bridge import BridgeClient
from rlmbox_kernel._wire import BRIDGE_SOCKET, CONTEXT_JSON, CONTEXT_TEXT, FINAL_MIME, SESSION_FILE


class LLMQueryError(RuntimeError):
    """A sub-model call was refused or failed."""


class BudgetExceededError(LLMQueryError):
    """The run's sub-call budget does not allow this call."""


class QueryFailed(str):
    """A failed item of ``llm_query_batched`` or of ``rlm_query``: a string describing the failure, with
    ``.error``."""

    error: str

    def __new__(cls, error: str, call: str = "llm_query") -> QueryFailed:
        item = super().__new__(cls, f"[{call} failed: {error}]")
        item.error = error
        return item


_ERRORS: dict[str, type[LLMQueryError]] = {
    "BudgetExceededError": BudgetExceededError,
    "LLMQueryError": LLMQueryError,
    "ProtocolError": LLMQueryError,
}
_HIDDEN = {"In", "Out", "exit", "quit", "get_ipython", "open"}


def load_context(session_dir: Path) -> Any:
    """Read the context the host wrote: JSON when it sent JSON, else text.

    The file is decoded straight from a memory map, so loading holds the decoded text and not also a copy
    of its bytes: a 400 MB context needs 400 MB of the sandbox's memory, not 800.
    """
    for name, parse in ((CONTEXT_JSON, json.loads), (CONTEXT_TEXT, None)):
        path = session_dir / name
        if not path.exists():
            continue
        text = ""
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size:  # an empty file cannot be mapped
                with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    text = str(mapped, "utf-8")
        return parse(text) if parse else text
    return None


def _as_answer(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _check_context(value: Any) -> None:
    """A child's context crosses the bridge as JSON: None, a str, or a list or dict of JSON values."""
    if value is not None and not isinstance(value, str | list | dict):
        raise TypeError(f"a context must be a str, list, dict or None, not {type(value).__name__}")
    if isinstance(value, list | dict):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(f"a context must hold only JSON values: {exc}") from None


def _describe(value: Any) -> str:
    kind = type(value).__name__
    try:
        return f"{kind}, len {len(value)}"
    except TypeError:
        return kind


def _query_functions(session: dict[str, Any], bridge: BridgeClient) -> tuple[Callable[..., Any], ...]:
    """``llm_query``, ``rlm_query`` and their batched forms, checking the session's limits before anything
    is sent."""
    max_prompt_chars: int = session["max_prompt_chars"]
    max_batch_size: int = session["max_batch_size"]

    def _check(prompts: list[str], model: str | None) -> None:
        if len(prompts) > max_batch_size:
            raise LLMQueryError(f"{len(prompts)} prompts exceed the batch limit of {max_batch_size}")
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise TypeError(f"prompts must be str, not {type(prompt).__name__}")
            if len(prompt) > max_prompt_chars:
                raise LLMQueryError(
                    f"prompt of {len(prompt)} chars exceeds the {max_prompt_chars}-char limit"
                )
        if model is not None and not isinstance(model, str):
            raise TypeError("model must be a str or None")

    def _send(op: str, **fields: Any) -> list[dict[str, Any]]:
        try:
            response = bridge.request(op, **fields)
        except ValueError as exc:
            raise LLMQueryError(f"{exc}; send fewer or shorter prompts per call") from None
        if not response.get("ok"):
            error = response.get("error") or {}
            raise _ERRORS.get(error.get("type"), LLMQueryError)(error.get("message", "llm_query failed"))
        return response["results"]

    def _query(prompts: list[str], model: str | None) -> list[dict[str, Any]]:
        _check(prompts, model)
        return _send("llm_query", prompts=prompts, model=model)

    def llm_query(prompt: str, model: str | None = None) -> str:
        """Ask the sub-model one question; returns its answer. Raises LLMQueryError on failure."""
        (outcome,) = _query([prompt], model)
        if not outcome["ok"]:
            raise LLMQueryError(outcome.get("error") or "llm_query failed")
        return outcome["text"]

    def llm_query_batched(prompts: Sequence[str], model: str | None = None) -> list[str]:
        """Ask many questions concurrently; answers come back in order. A failed item is a QueryFailed."""
        items = list(prompts)
        if not items:
            return []
        outcomes = _query(items, model)
        return [o["text"] if o["ok"] else QueryFailed(o.get("error") or "unknown error") for o in outcomes]

    def rlm_query_batched(
        prompts: Sequence[str], contexts: Sequence[Any] | None = None, model: str | None = None
    ) -> list[str]:
        """Hand several sub-tasks to child RLMs running side by side, each with its own REPL whose `context`
        is the matching item of ``contexts``; answers come back in order. A failed child is a QueryFailed."""
        items = list(prompts)
        values = [None] * len(items) if contexts is None else list(contexts)
        if len(values) != len(items):
            raise ValueError(f"{len(items)} prompts but {len(values)} contexts")
        if not items:
            return []
        _check(items, model)
        for value in values:
            _check_context(value)
        queries = [{"prompt": p, "context": c} for p, c in zip(items, values, strict=True)]
        outcomes = _send("rlm_query", queries=queries, model=model)
        return [
            o["text"] if o["ok"] else QueryFailed(o.get("error") or "unknown error", "rlm_query")
            for o in outcomes
        ]

    def rlm_query(prompt: str, context: Any = None, model: str | None = None) -> str:
        """Hand a sub-task to a child RLM with its own REPL, where `context` is ``context``; returns its
        answer, or a QueryFailed string saying why there is none. At the depth limit this is llm_query
        with the context appended to the prompt."""
        (answer,) = rlm_query_batched([prompt], [context], model)
        return answer

    return llm_query, llm_query_batched, rlm_query, rlm_query_batched


def build_namespace(session: dict[str, Any], session_dir: Path, user_ns: dict[str, Any]) -> dict[str, Any]:
    """The names to add to the REPL, bound to this session's bridge and limits."""
    bridge = BridgeClient(str(session_dir / BRIDGE_SOCKET), session["token"], session["max_request_bytes"])
    llm_query, llm_query_batched, rlm_query, rlm_query_batched = _query_functions(session, bridge)
    max_final_chars: int = session["max_final_chars"]

    def FINAL(answer: Any) -> None:
        """Give the final answer; the run ends after this cell."""
        text = _as_answer(answer)
        if len(text) > max_final_chars:
            raise ValueError(f"final answer of {len(text)} chars exceeds the {max_final_chars}-char limit")
        from IPython.display import publish_display_data

        publish_display_data({FINAL_MIME: {"answer": text}, "text/plain": "[final answer recorded]"})

    def FINAL_VAR(name: str) -> None:
        """Give the value of the REPL variable ``name`` as the final answer."""
        if not isinstance(name, str):
            raise TypeError("FINAL_VAR takes the variable's name as a string, e.g. FINAL_VAR('answer')")
        key = name.strip().strip("'\"")
        if key not in user_ns:
            raise NameError(f"FINAL_VAR: no variable named {key!r}; define it in a cell first")
        FINAL(user_ns[key])

    def SHOW_VARS() -> dict[str, str]:
        """List the REPL's variables (name -> type and length) and print them."""
        shown = {
            name: _describe(value)
            for name, value in user_ns.items()
            if not name.startswith("_") and name not in _HIDDEN and name not in helpers
        }
        for name, description in shown.items():
            print(f"{name}: {description}", file=sys.stdout)
        return shown

    helpers: dict[str, Callable[..., Any] | type] = {
        "llm_query": llm_query,
        "llm_query_batched": llm_query_batched,
        "rlm_query": rlm_query,
        "rlm_query_batched": rlm_query_batched,
        "FINAL": FINAL,
        "FINAL_VAR": FINAL_VAR,
        "SHOW_VARS": SHOW_VARS,
        "LLMQueryError": LLMQueryError,
        "BudgetExceededError": BudgetExceededError,
        "QueryFailed": QueryFailed,
    }
    return helpers


def install(session_dir: str) -> None:
    """Cap the kernel's output, then load ``context`` and the helpers into the shell's namespace."""
    from IPython import get_ipython

    from rlmbox_kernel import _output_cap

    shell = get_ipython()
    directory = Path(session_dir)
    session = json.loads((directory / SESSION_FILE).read_text())
    _output_cap.install(shell, session["max_cell_output_bytes"])
    shell.user_ns.update(build_namespace(session, directory, shell.user_ns))
    shell.user_ns["context"] = load_context(directory)


def reload_context(session_dir: str) -> None:
    """Load ``context`` again from the session directory (a warm sandbox receiving its session's context)."""
    from IPython import get_ipython

    get_ipython().user_ns["context"] = load_context(Path(session_dir))
