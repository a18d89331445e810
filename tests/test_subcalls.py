"""The sub-call router: model allow-list, ledger accounting, order, concurrency."""

from __future__ import annotations

import asyncio

import pytest

from rlmbox import BridgeError, BudgetExceeded, Limits, LLMError
from rlmbox.ledger import Ledger
from rlmbox.llm import Completion
from rlmbox.protocol import ChildQuery, QueryOutcome
from rlmbox.subcalls import SpawnChild, SubCallRouter
from rlmbox.trajectory import TrajectoryWriter


class FakeLM:
    def __init__(self, cost: float | None = 0.1, delay: float = 0.0, fail: set[str] | None = None) -> None:
        self.cost, self.delay, self.fail = cost, delay, fail or set()
        self.in_flight = self.peak = 0
        self.started = asyncio.Event()

    async def complete(self, model, messages, *, timeout_s=None, params=None):
        prompt = messages[-1]["content"]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.started.set()
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if prompt in self.fail:
            raise LLMError(f"provider failed on {prompt}")
        return Completion(prompt.upper(), model, 400, 10, self.cost, self.delay, 1)


def router(
    tmp_path,
    lm,
    limits: Limits,
    concurrency: int = 4,
    spawn: SpawnChild | None = None,
    models: tuple[str, ...] = ("sub", "root"),
) -> tuple[SubCallRouter, Ledger]:
    ledger = Ledger(limits)
    writer = TrajectoryWriter(tmp_path / "t.jsonl").__enter__()
    return SubCallRouter(
        lm,
        ledger,
        writer,
        default_model=models[0],
        allowed_models=set(models),
        model_calls=asyncio.Semaphore(concurrency),
        max_prompt_chars=10_000,
        spawn=spawn,
    ), ledger


def test_answers_in_order_with_per_item_failures(tmp_path):
    calls, ledger = router(tmp_path, FakeLM(fail={"b"}), Limits())
    outcomes = asyncio.run(calls.llm_query(["a", "b", "c"], None))
    assert [(o.ok, o.text) for o in outcomes] == [(True, "A"), (False, None), (True, "C")]
    assert "provider failed on b" in outcomes[1].error
    assert ledger.sub_calls == 3 and ledger.usage["sub"].calls == 2


def test_only_configured_models(tmp_path):
    calls, _ = router(tmp_path, FakeLM(), Limits())
    with pytest.raises(BridgeError, match="not configured for this run"):
        asyncio.run(calls.llm_query(["a"], "openai/gpt-5"))
    assert asyncio.run(calls.llm_query(["a"], "root"))[0].ok


def test_a_model_named_without_its_provider_is_the_configured_one_when_only_one_fits(tmp_path):
    """Seen with Qwen2.5-Coder 1.5B: ``llm_query(p, "qwen-coder-1.5b")`` for ``openai/qwen-coder-1.5b``."""
    calls, ledger = router(tmp_path, FakeLM(), Limits(), models=("openai/qwen-coder-1.5b", "hosted_vllm/big"))
    assert asyncio.run(calls.llm_query(["a"], "qwen-coder-1.5b"))[0].ok
    assert asyncio.run(calls.llm_query(["b"], "big"))[0].ok
    assert set(ledger.usage) == {"openai/qwen-coder-1.5b", "hosted_vllm/big"}
    ambiguous, _ = router(tmp_path, FakeLM(), Limits(), models=("openai/m", "ollama/m"))
    with pytest.raises(BridgeError, match="not configured for this run"):
        asyncio.run(ambiguous.llm_query(["c"], "m"))  # two fit


def test_batch_over_the_sub_call_budget_is_refused_whole(tmp_path):
    calls, ledger = router(tmp_path, FakeLM(), Limits(max_sub_calls=2))
    with pytest.raises(BudgetExceeded):
        asyncio.run(calls.llm_query(["a", "b", "c"], None))
    assert ledger.sub_calls == 0


def test_prompts_refused_by_the_cost_budget_are_not_counted(tmp_path):
    calls, ledger = router(tmp_path, FakeLM(cost=0.1), Limits(max_cost_usd=0.15), concurrency=1)
    outcomes = asyncio.run(calls.llm_query(["a", "b", "c", "d"], None))
    assert [o.ok for o in outcomes] == [True, True, False, False]
    assert ledger.sub_calls == 2 and ledger.cost_usd == pytest.approx(0.2)


def test_concurrency_is_capped(tmp_path):
    lm = FakeLM(delay=0.01)
    calls, _ = router(tmp_path, lm, Limits(), concurrency=3)
    asyncio.run(calls.llm_query([str(i) for i in range(20)], None))
    assert lm.peak == 3


def test_cancelled_calls_are_still_charged(tmp_path):
    """A caller hanging up must not make spent sub-calls free."""
    lm = FakeLM(delay=30)

    async def main():
        calls, ledger = router(tmp_path, lm, Limits())
        task = asyncio.create_task(calls.llm_query(["x" * 4000, "y" * 4000], None))
        await lm.started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ledger

    ledger = asyncio.run(main())
    assert ledger.sub_calls == 2
    assert ledger.tokens == 2000 and ledger.usage["sub"].cost_known is False


def test_calls_after_the_run_ended_are_refused(tmp_path):
    r, ledger = router(tmp_path, FakeLM(), Limits())
    assert asyncio.run(r.llm_query(["before"], None))[0].text == "BEFORE"
    asyncio.run(r.aclose())
    with pytest.raises(BridgeError, match="the run has ended"):
        asyncio.run(r.llm_query(["after"], None))
    assert ledger.sub_calls == 1


def test_calls_waiting_their_turn_when_the_run_ends_are_not_made(tmp_path):
    lm = FakeLM(delay=0.2)
    r, ledger = router(tmp_path, lm, Limits(), concurrency=1)

    async def main():
        batch = asyncio.ensure_future(r.llm_query(["first", "second", "third"], None))
        await lm.started.wait()
        await r.aclose()
        return await batch

    first, *waiting = asyncio.run(main())
    assert first.text == "FIRST"
    assert [o.error for o in waiting] == ["the run has ended: no more sub-calls"] * 2
    assert ledger.sub_calls == 1 and lm.peak == 1


def test_at_the_depth_limit_rlm_query_asks_the_sub_model_with_the_context(tmp_path):
    calls, ledger = router(tmp_path, FakeLM(), Limits())  # no spawn: this node is at the depth limit
    queries = [ChildQuery(prompt="p", context={"k": 1}), ChildQuery(prompt="q", context="y" * 10_000)]
    fits, too_long = asyncio.run(calls.rlm_query(queries, None))
    assert fits.text == 'P\n\nCONTEXT:\n{"K": 1}'
    assert not too_long.ok and "over the 10000-char limit of llm_query" in too_long.error
    assert ledger.sub_calls == 1


def test_children_get_loans_and_are_ended_with_their_parent(tmp_path):
    loans: list[Ledger] = []
    cleaned: list[int] = []

    async def spawn(query, model, ledger, *, index, batch, iteration, cell) -> QueryOutcome:
        loans.append(ledger)
        try:
            await asyncio.Event().wait()  # a child still working when its parent ends
        finally:
            await asyncio.sleep(0.05)  # removing its sandbox takes a while
            cleaned.append(index)
        raise AssertionError("unreachable")

    calls, ledger = router(tmp_path, FakeLM(), Limits(max_iterations=9, max_depth=2), spawn=spawn)

    async def main() -> None:
        batch = asyncio.ensure_future(calls.rlm_query([ChildQuery(prompt="a"), ChildQuery(prompt="b")], None))
        await asyncio.sleep(0.01)
        await calls.aclose()
        assert sorted(cleaned) == [0, 1]  # aclose returned only once both children had cleaned up
        with pytest.raises(asyncio.CancelledError):
            await batch

    asyncio.run(main())
    assert [loan.limits.max_iterations for loan in loans] == [2, 2] and ledger.sub_calls == 2


def test_children_the_budget_cannot_fund_are_refused_and_not_counted(tmp_path):
    async def spawn(*args, **kwargs) -> QueryOutcome:
        raise AssertionError("no child may start")

    calls, ledger = router(tmp_path, FakeLM(), Limits(max_iterations=3, max_depth=2), spawn=spawn)
    with pytest.raises(BudgetExceeded, match="not enough budget left for 4 child RLM"):
        asyncio.run(calls.rlm_query([ChildQuery(prompt="a")] * 4, None))
    assert ledger.sub_calls == 0


def test_children_cancelled_before_they_ran_give_their_loans_back(tmp_path):
    async def spawn(*args, **kwargs) -> QueryOutcome:
        raise AssertionError("cancelled before it ran")

    calls, ledger = router(tmp_path, FakeLM(), Limits(max_iterations=9, max_depth=2), spawn=spawn)

    async def main() -> None:
        batch = asyncio.ensure_future(calls.rlm_query([ChildQuery(prompt="a"), ChildQuery(prompt="b")], None))
        await asyncio.sleep(0)  # the children are scheduled, not started
        assert ledger.available("iterations") == 9 - 2 * 2
        await calls.aclose()
        with pytest.raises(asyncio.CancelledError):
            await batch

    asyncio.run(main())
    assert ledger.available("iterations") == 9
