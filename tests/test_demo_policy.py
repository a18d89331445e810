"""The haystack generator and the scripted demo policy (reached through litellm)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import pytest

from rlmbox._exceptions import LLMModelNotFoundError
from rlmbox.config import LLMSettings
from rlmbox.demo.haystack import make_haystack, needle_sentence
from rlmbox.demo.policy import (
    CHUNK_CHARS,
    DEMO_ROOT_MODEL,
    DEMO_SUB_MODEL,
    MAX_TURNS,
    NOT_FOUND,
    find_key,
    register_demo_provider,
    root_policy,
    sub_policy,
)
from rlmbox.llm import LMClient, context_window_chars, load_litellm

NEEDLES = re.compile(r"One of the special magic numbers for (\S+) is: (\d{7})\.")
REPL_BLOCK = re.compile(r"```repl\n(.*?)\n```", re.DOTALL)


# ---------------------------------------------------------------- haystack


def test_haystack_is_deterministic() -> None:
    assert make_haystack(50_000, seed=7) == make_haystack(50_000, seed=7)
    other = make_haystack(50_000, seed=8)
    assert other.text != make_haystack(50_000, seed=7).text
    assert other.key != make_haystack(50_000, seed=7).key


def test_haystack_has_one_needle_and_decoys_for_other_keys() -> None:
    haystack = make_haystack(300_000, seed=1)

    assert re.fullmatch(r"[1-9]\d{6}", haystack.answer)
    assert haystack.text.count(needle_sentence(haystack.key, haystack.answer)) == 1
    assert haystack.text.count(haystack.answer) == 1
    found = NEEDLES.findall(haystack.text)
    assert [number for key, number in found if key == haystack.key] == [haystack.answer]
    decoys = {key for key, _ in found if key != haystack.key}
    assert len(decoys) >= 3
    assert haystack.answer not in {number for key, number in found if key != haystack.key}


def test_haystack_query_names_the_key() -> None:
    haystack = make_haystack(10_000, seed=2)

    assert haystack.query == f"What is the special magic number for {haystack.key} mentioned in the document?"


def test_needle_depth_depends_on_the_seed() -> None:
    depths = set()
    for seed in range(6):
        haystack = make_haystack(100_000, seed=seed)
        depths.add(round(haystack.text.index(haystack.answer) / len(haystack.text), 2))
    assert len(depths) >= 4


def test_haystack_filler_is_varied_prose() -> None:
    text = make_haystack(200_000, seed=3).text
    sentences = re.findall(r"[^.]+\.", text[:100_000])

    assert len(set(sentences)) > len(sentences) // 2
    assert "\n\n" in text


def test_ten_megabytes_in_well_under_a_second() -> None:
    started = time.perf_counter()
    haystack = make_haystack(10_000_000, seed=0)
    elapsed = time.perf_counter() - started

    assert abs(len(haystack.text) - 10_000_000) < 50_000
    assert elapsed < 1.0


def test_tiny_haystack_still_holds_the_needle() -> None:
    haystack = make_haystack(0, seed=4)

    assert needle_sentence(haystack.key, haystack.answer) in haystack.text


# ---------------------------------------------------------------- sub policy


def _prompt(key: str | None, chunk: str) -> str:
    ask = f"the special magic number for {key}" if key else "any special magic number (a 7-digit number)"
    return f"Find {ask} in the text below. Reply with the number only, or {NOT_FOUND}.\n\n{chunk}"


def test_sub_policy_finds_the_number_for_the_asked_key() -> None:
    haystack = make_haystack(20_000, seed=5)

    assert sub_policy(_prompt(haystack.key, haystack.text)) == haystack.answer


def test_sub_policy_ignores_decoys() -> None:
    haystack = make_haystack(20_000, seed=5)
    without_needle = haystack.text.replace(needle_sentence(haystack.key, haystack.answer), "")

    assert sub_policy(_prompt(haystack.key, without_needle)) == NOT_FOUND
    assert sub_policy(_prompt("no-such-key", haystack.text)) == NOT_FOUND


def test_sub_policy_without_a_key_reports_any_number() -> None:
    haystack = make_haystack(20_000, seed=5)

    assert re.fullmatch(r"\d{7}", sub_policy(_prompt(None, haystack.text)))
    assert sub_policy(_prompt(None, "nothing to see here")) == NOT_FOUND


# ---------------------------------------------------------------- root policy, turn by turn


def _conversation(query: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You answer questions about `context` by writing ```repl blocks."},
        {"role": "user", "content": f"Query: {query}"},
    ]


def _code(reply: str) -> str:
    blocks = REPL_BLOCK.findall(reply)
    assert len(blocks) == 1, reply
    compile(blocks[0], "<repl>", "exec")
    return blocks[0]


def test_find_key_reads_the_query_line() -> None:
    messages = _conversation("What is the special magic number for quiet-harbor mentioned in the document?")

    assert find_key(messages) == "quiet-harbor"
    assert find_key([{"role": "user", "content": "What is in the document?"}]) is None


def test_root_turns_in_order() -> None:
    messages = _conversation("What is the special magic number for quiet-harbor mentioned in the document?")
    steps = []
    for output in ["<class 'str'>\n1000000\nThe story ...", "0 1234567\n5 chunks searched", ""]:
        reply = root_policy(messages)
        steps.append(_code(reply))
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": output}]

    inspect, search, conclude = steps
    assert "len(context)" in inspect
    assert "context[:300]" in inspect
    assert "llm_query_batched(prompts)" in search
    assert "200000" in search
    assert "quiet-harbor" in search
    assert "llm_query(" in conclude
    assert 'FINAL_VAR("answer")' in conclude
    assert 'FINAL("not found")' in conclude


def test_root_without_a_key_searches_generically() -> None:
    messages = [{"role": "user", "content": "Query: Tell me the secret."}]
    messages += [{"role": "assistant", "content": root_policy(messages)}, {"role": "user", "content": "ok"}]

    search = _code(root_policy(messages))

    assert "any special magic number" in search


def test_root_retries_a_failed_step_once_then_moves_on() -> None:
    messages = _conversation("What is the special magic number for quiet-harbor mentioned in the document?")
    messages += [{"role": "assistant", "content": root_policy(messages)}, {"role": "user", "content": "ok"}]
    failure = "Traceback (most recent call last):\n  ...\nNameError: name 'llm_query_batched' is not defined"

    first = root_policy(messages)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": failure}]
    retry = root_policy(messages)
    messages += [{"role": "assistant", "content": retry}, {"role": "user", "content": failure}]
    after_retry = root_policy(messages)

    assert "llm_query_batched" in _code(first)
    assert "(retry)" in retry
    assert "NameError" in _code(retry)
    assert "llm_query_batched" in _code(retry)
    assert "FINAL_VAR" in _code(after_retry)


def test_root_gives_up_after_max_turns() -> None:
    messages = _conversation("What is the special magic number for quiet-harbor mentioned in the document?")
    for _ in range(MAX_TURNS):
        messages += [
            {"role": "assistant", "content": "I am thinking."},
            {"role": "user", "content": "ValueError: nope"},
        ]

    code = _code(root_policy(messages))

    assert "FINAL(" in code
    assert "llm_query" not in code


# ---------------------------------------------------------------- through litellm, end to end


@dataclass
class FakeKernel:
    """Runs the policy's cells in-process, with the sub policy behind ``llm_query``."""

    context: Any
    failing_cells: int = 0
    """How many cells, from the first, raise instead of running."""
    namespace: dict[str, Any] = field(default_factory=dict)
    final: str | None = None
    sub_calls: int = 0

    def __post_init__(self) -> None:
        self.namespace.update(
            context=self.context,
            llm_query=self._query,
            llm_query_batched=lambda prompts: [self._query(p) for p in prompts],
            FINAL=self._final,
            FINAL_VAR=lambda name: self._final(self.namespace[name]),
        )

    def _query(self, prompt: str) -> str:
        self.sub_calls += 1
        return sub_policy(prompt)

    def _final(self, answer: Any) -> None:
        self.final = str(answer)

    def run(self, code: str) -> str:
        if self.failing_cells > 0:
            self.failing_cells -= 1
            code = "raise RuntimeError('the kernel is broken')"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                exec(code, self.namespace)
            except Exception:  # the REPL shows any error to the model
                out.write(traceback.format_exc())
        return out.getvalue()


async def _run_loop(kernel: FakeKernel, query: str, turns: int = 12) -> tuple[str | None, int]:
    litellm = load_litellm()
    register_demo_provider()
    messages = _conversation(query)
    for turn in range(1, turns + 1):
        response = await litellm.acompletion(model=DEMO_ROOT_MODEL, messages=messages)
        reply = response.choices[0].message.content
        assert response.usage.prompt_tokens > 0
        assert response.usage.completion_tokens > 0
        output = kernel.run(_code(reply))
        if kernel.final is not None:
            return kernel.final, turn
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": output}]
    return None, turns


def test_demo_solves_a_haystack_through_litellm() -> None:
    haystack = make_haystack(1_000_000, seed=11)
    kernel = FakeKernel(haystack.text)

    answer, turns = asyncio.run(_run_loop(kernel, haystack.query))

    assert answer == haystack.answer
    assert turns == 3
    n_chunks = -(-len(haystack.text) // 200_000)
    assert len(kernel.namespace["chunks"]) == n_chunks
    assert kernel.sub_calls == n_chunks + 1  # one per chunk, then one check


def test_demo_answers_not_found_when_the_needle_is_missing() -> None:
    haystack = make_haystack(300_000, seed=12)
    kernel = FakeKernel(haystack.text.replace(haystack.answer, "???"))

    answer, _ = asyncio.run(_run_loop(kernel, haystack.query))

    assert answer == "not found"


def test_demo_gives_up_when_cells_keep_failing() -> None:
    kernel = FakeKernel("some context", failing_cells=MAX_TURNS)

    answer, turns = asyncio.run(_run_loop(kernel, "What is the special magic number for a-b?"))

    assert (answer, turns) == ("not found", MAX_TURNS + 1)


def test_register_demo_provider_is_idempotent() -> None:
    litellm = load_litellm()
    register_demo_provider()
    register_demo_provider()

    assert [p["provider"] for p in litellm.custom_provider_map].count("rlmbox-demo") == 1


def test_sub_model_through_lmclient() -> None:
    haystack = make_haystack(20_000, seed=13)
    client = LMClient(LLMSettings())
    messages = [{"role": "user", "content": _prompt(haystack.key, haystack.text)}]

    result = asyncio.run(client.complete(DEMO_SUB_MODEL, messages))

    assert result.text == haystack.answer
    assert result.prompt_tokens == pytest.approx(len(messages[0]["content"]) / 4, abs=1)
    assert result.completion_tokens >= 1
    assert result.attempts == 1
    assert result.cost_usd == 0.0  # registered as free, so the ledger has a number


def test_demo_models_state_a_window_larger_than_the_chunks() -> None:
    assert context_window_chars(DEMO_SUB_MODEL) > CHUNK_CHARS


def test_unknown_demo_model_is_model_not_found() -> None:
    with pytest.raises(LLMModelNotFoundError):
        asyncio.run(
            LMClient(LLMSettings()).complete("rlmbox-demo/other", [{"role": "user", "content": "hi"}])
        )
