"""A scripted, offline, deterministic stand-in for the models: NOT a language model.

It exists so the whole loop (root turns, REPL cells, sub-calls, ledger) can be shown and tested with no
network and no model. It is reached through litellm like any provider, as the custom provider
``rlmbox-demo``: ``rlmbox-demo/root`` plays the root model on needle-in-a-haystack questions and
``rlmbox-demo/sub`` answers sub-calls by regular expression.

The root policy reads the conversation (its own earlier replies and the last REPL output) and answers with
one sentence and one ```repl block:

    turn 1  inspect   print the type, length and start of ``context``
    turn 2  search    split ``context`` into ~200,000-character chunks, ask the sub-model about each
                      with ``llm_query_batched``, keep the answers in ``answers``
    turn 3  conclude  verify the candidate with one ``llm_query``, then ``FINAL_VAR("answer")``
                      (or ``FINAL("not found")``)

A step whose cell failed is retried once; after six turns it gives up with ``FINAL(...)``.
"""

from __future__ import annotations

import functools
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHUNK_CHARS",
    "DEMO_NOTICE",
    "DEMO_PROVIDER",
    "DEMO_ROOT_MODEL",
    "DEMO_SUB_MODEL",
    "MAX_TURNS",
    "NOT_FOUND",
    "add_demo_policy",
    "conclude_code",
    "find_key",
    "give_up_code",
    "inspect_code",
    "register_demo_provider",
    "role_texts",
    "root_policy",
    "search_code",
    "sub_policy",
]

DEMO_PROVIDER = "rlmbox-demo"
DEMO_ROOT_MODEL = f"{DEMO_PROVIDER}/root"
DEMO_SUB_MODEL = f"{DEMO_PROVIDER}/sub"
DEMO_NOTICE = (
    "rlmbox-demo is a scripted, offline policy, not a language model: it follows a fixed "
    "inspect / search / conclude plan for needle-in-a-haystack questions."
)
MAX_TURNS = 6
CHUNK_CHARS = 200_000
CHUNK_OVERLAP = 200
NOT_FOUND = "NOT FOUND"
DEMO_INPUT_TOKENS = 100_000
"""The window the demo models claim; the root's chunks stay well inside it."""

_TAG = "[rlmbox-demo scripted policy, not a model]"
_STEP_LINE = re.compile(re.escape(_TAG) + r" Step: (\w+)( \(retry\))?")
_KEY = r"(\w[\w.-]*\w|\w)"
_QUERY_LINE = re.compile(r"^\s*Query:\s*(.+)$", re.MULTILINE)
_KEY_IN_QUESTION = re.compile(r"magic number for " + _KEY)
_KEY_IN_PROMPT = re.compile(r"special magic number for " + _KEY)
_ANY_NEEDLE = re.compile(r"special magic numbers for \S+ is: (\d{7})\b")
_ERROR_OUTPUT = re.compile(
    r"Traceback \(most recent call last\)|^\s*\w*(?:Error|Exception)\b.*", re.MULTILINE
)


# ---------------------------------------------------------------- the conversation, as the policy sees it


def _text(content: Any) -> str:
    """Message content as text (plain strings, or OpenAI-style lists of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def role_texts(messages: Sequence[dict[str, Any]], role: str) -> list[str]:
    """The text of every message of ``role``, in order."""
    return [_text(m.get("content")) for m in messages if m.get("role") == role]


def find_key(messages: Sequence[dict[str, Any]]) -> str | None:
    """The key asked about: from the ``Query: ...`` line of the first user message, else anywhere."""
    users = role_texts(messages, "user")
    first = users[0] if users else ""
    candidates = [m.group(1) for m in _QUERY_LINE.finditer(first)] + [first]
    candidates += [t for m in messages for t in [_text(m.get("content"))] if m.get("role") != "assistant"]
    for text in candidates:
        match = _KEY_IN_QUESTION.search(text)
        if match:
            return match.group(1)
    return None


@dataclass(frozen=True)
class _Past:
    """What the policy did on its earlier turns, read back from its own replies."""

    turns: int
    last_step: str | None
    last_was_retry: bool
    last_output: str


def _read_past(messages: Sequence[dict[str, Any]]) -> _Past:
    turns, last_step, last_was_retry, last_index = 0, None, False, -1
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        turns += 1
        match = _STEP_LINE.search(_text(message.get("content")))
        if match:
            last_step, last_was_retry, last_index = match.group(1), bool(match.group(2)), index
    later_users = [_text(m.get("content")) for m in messages[last_index + 1 :] if m.get("role") == "user"]
    return _Past(turns, last_step, last_was_retry, later_users[-1] if later_users else "")


def _error_line(output: str) -> str | None:
    """The last error line of a REPL output, if it shows a Python error."""
    if not _ERROR_OUTPUT.search(output):
        return None
    lines = [m.group(0).strip() for m in _ERROR_OUTPUT.finditer(output)]
    return lines[-1][:200] if lines else "error"


def _instruction(key: str | None) -> str:
    if key is None:
        return (
            "Find any special magic number (a 7-digit number) in the text below. "
            f"Reply with the number only, or {NOT_FOUND}."
        )
    return (
        f"Find the special magic number for {key} in the text below. "
        f"Reply with the 7-digit number only, or {NOT_FOUND}."
    )


# ---------------------------------------------------------------- one function per turn (the cell it writes)


def inspect_code() -> str:
    """Turn 1: look at what ``context`` is before touching it."""
    return """
print(type(context))
print(len(context))
print(context[:300] if isinstance(context, str) else repr(context)[:300])
"""


def search_code(key: str | None) -> str:
    """Turn 2: ask the sub-model about every chunk at once; keep the answers in ``answers``."""
    return f"""
if isinstance(context, str):
    text = context
elif isinstance(context, (list, tuple)):
    text = "\\n".join(str(part) for part in context)
else:
    text = str(context)
n_chunks = max(2, -(-len(text) // {CHUNK_CHARS}))
size = -(-len(text) // n_chunks)
# Chunks overlap a little so a sentence cut at a border is still whole in one of them.
chunks = [text[max(0, i * size - {CHUNK_OVERLAP}) : (i + 1) * size] for i in range(n_chunks)]
instruction = {_instruction(key)!r}
prompts = [instruction + "\\n\\n" + chunk for chunk in chunks]
answers = llm_query_batched(prompts)
for i, found in enumerate(answers):
    if {NOT_FOUND!r} not in found:
        print(i, found)
print(len(chunks), "chunks searched")
"""


def conclude_code(key: str | None) -> str:
    """Turn 3: verify the first candidate with one more sub-call, then finish."""
    return f"""
import re

instruction = {_instruction(key)!r}
candidates = []
for i, found in enumerate(globals().get("answers") or []):
    match = re.search(r"\\b\\d{{7}}\\b", str(found))
    if match:
        candidates.append((i, match.group(0)))
if candidates:
    index, answer = candidates[0]
    check = llm_query(instruction + "\\n\\n" + chunks[index])
    print("candidate", answer, "from chunk", index, "confirmed:", answer in check)
    FINAL_VAR("answer")
else:
    print("no chunk reported a magic number")
    FINAL("not found")
"""


def give_up_code() -> str:
    """The last resort, after MAX_TURNS turns: answer with whatever the kernel holds."""
    return """
FINAL(str(globals().get("answer") or "not found"))
"""


_STEPS: dict[str, tuple[str, Callable[[str | None], str]]] = {
    "inspect": ("First I look at the type, size and beginning of the context.", lambda _: inspect_code()),
    "search": (
        "The context is too long to read at once, so I ask the sub-model about each chunk.",
        search_code,
    ),
    "conclude": ("I verify the candidate on its chunk once, then answer.", conclude_code),
    "give_up": ("I am out of planned steps, so I answer with what I have.", lambda _: give_up_code()),
}
_NEXT = {"inspect": "search", "search": "conclude", "conclude": "give_up", "give_up": "give_up"}


def _reply(step: str, key: str | None, *, failed: str | None = None) -> str:
    """One sentence naming the step, then its cell; after a failure the cell first says what failed."""
    reason, code_for = _STEPS[step]
    code = code_for(key).strip()
    retry = ""
    if failed is not None:
        retry = " (retry)"
        reason = "The previous cell raised an error, so I retry that step once."
        code = f"print({f'The previous cell failed ({failed}); retrying the {step} step once.'!r})\n{code}"
    return f"{_TAG} Step: {step}{retry}. {reason}\n\n```repl\n{code}\n```"


def root_policy(messages: Sequence[dict[str, Any]]) -> str:
    """The root model's next reply, decided from the conversation so far."""
    past = _read_past(messages)
    key = find_key(messages)
    if past.turns >= MAX_TURNS:
        return _reply("give_up", key)
    if past.last_step is None:
        return _reply("inspect", key)
    error = _error_line(past.last_output)
    if error is not None and not past.last_was_retry and past.last_step != "give_up":
        return _reply(past.last_step, key, failed=error)
    return _reply(_NEXT.get(past.last_step, "give_up"), key)


def sub_policy(prompt: str) -> str:
    """The sub-model: the magic number for the key the prompt asks about, or ``NOT FOUND``."""
    match = _KEY_IN_PROMPT.search(prompt)
    if match is None:
        found = _ANY_NEEDLE.search(prompt)
    else:
        needle = r"special magic numbers for " + re.escape(match.group(1)) + r" is: (\d{7})\b"
        found = re.search(needle, prompt)
    return found.group(1) if found else NOT_FOUND


# ---------------------------------------------------------------- the litellm provider


def _sub_reply(messages: Sequence[dict[str, Any]]) -> str:
    return sub_policy("\n".join(role_texts(messages, "user")))


_POLICIES: dict[str, Callable[[Sequence[dict[str, Any]]], str]] = {"root": root_policy, "sub": _sub_reply}


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


@functools.cache
def _provider() -> Any:
    """The litellm ``CustomLLM`` serving the demo models (built lazily: litellm is slow to import)."""
    from rlmbox.llm import load_litellm

    litellm = load_litellm()
    from litellm.llms.custom_llm import CustomLLMError

    class DemoPolicyLLM(litellm.CustomLLM):
        """litellm provider ``rlmbox-demo``: scripted answers, never a network call."""

        def completion(self, *args: Any, **kwargs: Any) -> Any:
            model = str(kwargs.get("model") or "")
            policy = _POLICIES.get(model.rsplit("/", 1)[-1])
            if policy is None:
                known = ", ".join(f"{DEMO_PROVIDER}/{name}" for name in _POLICIES)
                message = f"unknown demo model {model!r}; use one of {known}"
                raise CustomLLMError(status_code=404, message=message)
            messages = list(kwargs.get("messages") or [])
            text = policy(messages)
            prompt_tokens = _tokens("".join(_text(m.get("content")) for m in messages))
            completion_tokens = _tokens(text)
            return litellm.ModelResponse(
                id=f"chatcmpl-demo-{uuid.uuid4().hex[:16]}",
                created=int(time.time()),
                model=f"{DEMO_PROVIDER}/{model.rsplit('/', 1)[-1]}",
                choices=[
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                usage=litellm.Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens,
                ),
            )

        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            return self.completion(*args, **kwargs)

    return DemoPolicyLLM()


_register_lock = threading.Lock()
_registered: set[str] = set()


# Free, and with a known window: the ledger shows $0 and the prompt states a real size.
_MODEL_ENTRY = {
    "max_input_tokens": DEMO_INPUT_TOKENS,
    "max_output_tokens": 4096,
    "max_tokens": 4096,
    "input_cost_per_token": 0.0,
    "output_cost_per_token": 0.0,
    "litellm_provider": DEMO_PROVIDER,
    "mode": "chat",
}


def register_demo_provider() -> None:
    """Make every ``rlmbox-demo/...`` policy callable, priced at $0, through litellm. Safe to call again."""
    from rlmbox.llm import load_litellm

    litellm = load_litellm()
    with _register_lock:
        if not any(item.get("provider") == DEMO_PROVIDER for item in litellm.custom_provider_map):
            litellm.custom_provider_map.append({"provider": DEMO_PROVIDER, "custom_handler": _provider()})
        new = [name for name in _POLICIES if name not in _registered]
        if new:
            litellm.register_model({f"{DEMO_PROVIDER}/{name}": _MODEL_ENTRY for name in new})
            _registered.update(new)


def add_demo_policy(name: str, policy: Callable[[Sequence[dict[str, Any]]], str]) -> str:
    """Serve ``policy`` (the conversation in, the reply out) as the model ``rlmbox-demo/<name>``."""
    _POLICIES[name] = policy
    return f"{DEMO_PROVIDER}/{name}"
