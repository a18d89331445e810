"""Answers the kernel's ``llm_query`` and ``rlm_query`` calls: checks the model, charges the ledger, fans
out concurrently, and starts child RLMs (or, at the depth limit, asks the sub-model instead)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Protocol, cast

import structlog

from rlmbox._exceptions import BridgeError, BudgetExceeded, LLMError
from rlmbox.ledger import Charge, Ledger
from rlmbox.llm import LMClient
from rlmbox.protocol import ChildQuery, QueryOutcome
from rlmbox.trajectory import EventLog, text_digest

__all__ = ["SpawnChild", "SubCallRouter"]

log = structlog.get_logger(__name__)

RUN_ENDED = "the run has ended: no more sub-calls"


class SpawnChild(Protocol):
    """Runs one child RLM and returns its answer (or why there is none)."""

    def __call__(
        self,
        query: ChildQuery,
        model: str,
        ledger: Ledger,
        *,
        index: int,
        batch: int,
        iteration: int,
        cell: int,
    ) -> Awaitable[QueryOutcome]: ...


class SubCallRouter:
    """A node's BridgeHandler. Only models the run configured may be named; each prompt is one sub-call.

    ``model_calls`` caps the model calls in flight over the whole tree. ``spawn`` starts a child RLM; without
    it (at the depth limit) ``rlm_query`` asks the sub-model, with the context appended to the prompt.
    """

    def __init__(
        self,
        lm: LMClient,
        ledger: Ledger,
        trajectory: EventLog,
        *,
        default_model: str | None,
        allowed_models: set[str],
        model_calls: asyncio.Semaphore,
        max_prompt_chars: int,
        spawn: SpawnChild | None = None,
    ) -> None:
        self._lm = lm
        self._ledger = ledger
        self._trajectory = trajectory
        self._default_model = default_model
        self._allowed = allowed_models
        self._limit = model_calls
        self._max_prompt_chars = max_prompt_chars
        self._spawn = spawn
        self._children: set[asyncio.Future[QueryOutcome]] = set()
        self._closed = False
        # The turn and the cell running now: sub-calls and children are recorded against them.
        self.iteration = 0
        self.cell = 0
        self.longest_prompt: str | None = None  # the longest llm_query prompt of the cell running now

    def start_cell(self, index: int) -> None:
        """The node runs its cell ``index`` now."""
        self.cell = index
        self.longest_prompt = None

    async def aclose(self) -> None:
        """Refuse every later call (the node is over) and end its children: cancelled, sandboxes removed."""
        self._closed = True
        for child in self._children:
            child.cancel()
        while self._children:
            await asyncio.gather(*self._children, return_exceptions=True)

    def _choose(self, model: str | None) -> str:
        if self._closed:
            raise BridgeError(RUN_ENDED)
        chosen = model or self._default_model
        if chosen is None:
            raise BridgeError("llm_query is not available: no sub-model is configured")
        if chosen in self._allowed:
            return chosen
        # Named without its provider ("qwen-coder" for "openai/qwen-coder"): fine when only one fits.
        fits = [m for m in self._allowed if m.split("/", 1)[-1] == chosen or m.rsplit("/", 1)[-1] == chosen]
        if len(fits) == 1:
            return fits[0]
        allowed = ", ".join(sorted(self._allowed))
        raise BridgeError(f"model {chosen!r} is not configured for this run (allowed: {allowed})")

    async def rlm_query(self, queries: list[ChildQuery], model: str | None) -> list[QueryOutcome]:
        chosen = self._choose(model)
        if self._spawn is None:
            return await self._fall_back(queries, chosen)
        self._ledger.reserve_sub_calls(len(queries))
        try:
            ledgers = self._ledger.lend(len(queries))
        except BudgetExceeded:
            self._ledger.release_sub_calls(len(queries))
            raise
        batch = len(queries)
        children = [
            asyncio.ensure_future(
                self._spawn(
                    query, chosen, ledger, index=i, batch=batch, iteration=self.iteration, cell=self.cell
                )
            )
            for i, (query, ledger) in enumerate(zip(queries, ledgers, strict=True))
        ]
        self._children.update(children)
        for child, ledger in zip(children, ledgers, strict=True):
            child.add_done_callback(self._children.discard)
            # The loan goes back when the child ends, however it ends (even cancelled before it ran).
            child.add_done_callback(lambda _, loan=ledger: loan.close())
        # Cancelling this call (the caller hung up, the node ended) cancels the children and waits for them.
        outcomes = await asyncio.gather(*children, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):  # a child cancelled by aclose: the node is ending
                raise outcome
        return cast(list[QueryOutcome], outcomes)

    async def _fall_back(self, queries: list[ChildQuery], model: str) -> list[QueryOutcome]:
        """At the depth limit: one sub-model call per query, its context appended to its prompt."""
        prompts = [_with_context(query) for query in queries]
        fits = [i for i, prompt in enumerate(prompts) if len(prompt) <= self._max_prompt_chars]
        outcomes = [
            QueryOutcome(
                ok=False,
                error=f"prompt and context come to {len(prompt)} chars, over the {self._max_prompt_chars}-"
                "char limit of llm_query (rlm_query is llm_query at the depth limit)",
            )
            for prompt in prompts
        ]
        if fits:
            answers = await self.llm_query([prompts[i] for i in fits], model)
            for i, answer in zip(fits, answers, strict=True):
                outcomes[i] = answer
        return outcomes

    async def llm_query(self, prompts: list[str], model: str | None) -> list[QueryOutcome]:
        chosen = self._choose(model)
        self.longest_prompt = max([self.longest_prompt or "", *prompts], key=len)
        self._ledger.reserve_sub_calls(len(prompts))
        self._trajectory.notify("sub_calls_started", count=len(prompts))
        batch = len(prompts)
        # A TaskGroup: if one call fails unexpectedly, the others are cancelled rather than left spending.
        async with asyncio.TaskGroup() as group:
            calls = [
                group.create_task(self._one(chosen, prompt, i, batch)) for i, prompt in enumerate(prompts)
            ]
        return [call.result() for call in calls]

    async def _one(self, model: str, prompt: str, index: int, batch: int) -> QueryOutcome:
        async with self._limit:
            started = time.perf_counter()
            refusal = RUN_ENDED if self._closed else None  # the run ended while this call waited its turn
            try:
                self._ledger.check()
            except BudgetExceeded as exc:
                refusal = str(exc)
            if refusal is not None:
                self._ledger.release_sub_calls(1)  # reserved, but never made
                self._trajectory.notify("sub_calls_started", count=-1)
                return QueryOutcome(ok=False, error=refusal)
            try:
                completion = await self._lm.complete(
                    model, [{"role": "user", "content": prompt}], timeout_s=self._ledger.remaining_s()
                )
            except asyncio.CancelledError:
                # The provider may bill a request it already received: charge the prompt, price unknown.
                self._ledger.record(Charge(model, len(prompt) // 4, 0, None))
                raise
            except LLMError as exc:
                duration = round(time.perf_counter() - started, 4)
                self._log_call(model, prompt, index, batch, error=str(exc), duration_s=duration)
                return QueryOutcome(ok=False, error=str(exc))
        self._ledger.record(Charge.of(completion))
        if completion.cost_usd is None and self._ledger.limits.max_cost_usd is not None:
            log.warning("budget.cost_unknown", model=model, note="the cost limit cannot count this model")
        self._log_call(
            model,
            prompt,
            index,
            batch,
            response=text_digest(completion.text),
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=completion.cost_usd,
            attempts=completion.attempts,
            duration_s=round(completion.duration_s, 4),
        )
        return QueryOutcome(ok=True, text=completion.text)

    def _log_call(self, model: str, prompt: str, index: int, batch: int, **outcome: object) -> None:
        self._trajectory.write(
            "sub_call",
            iteration=self.iteration,
            cell=self.cell,
            model=model,
            index=index,
            batch=batch,
            prompt=text_digest(prompt),
            **outcome,
        )


def _with_context(query: ChildQuery) -> str:
    if query.context is None:
        return query.prompt
    text = query.context if isinstance(query.context, str) else json.dumps(query.context, ensure_ascii=False)
    return f"{query.prompt}\n\nContext:\n{text}"
