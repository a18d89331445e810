"""Answers the kernel's ``llm_query`` calls: checks the model, charges the ledger, fans out concurrently."""

from __future__ import annotations

import asyncio
import time

import structlog

from rlmbox._exceptions import BridgeError, BudgetExceeded, LLMError
from rlmbox.ledger import Charge, Ledger
from rlmbox.llm import LMClient
from rlmbox.protocol import QueryOutcome
from rlmbox.trajectory import TrajectoryWriter, text_digest

__all__ = ["SubCallRouter"]

log = structlog.get_logger(__name__)

RUN_ENDED = "the run has ended: no more sub-calls"


class SubCallRouter:
    """The run's BridgeHandler. Only models the run configured may be named; each prompt is one sub-call."""

    def __init__(
        self,
        lm: LMClient,
        ledger: Ledger,
        trajectory: TrajectoryWriter,
        *,
        default_model: str | None,
        allowed_models: set[str],
        max_concurrency: int,
    ) -> None:
        self._lm = lm
        self._ledger = ledger
        self._trajectory = trajectory
        self._default_model = default_model
        self._allowed = allowed_models
        self._limit = asyncio.Semaphore(max_concurrency)
        self._closed = False
        self.iteration = 0

    def close(self) -> None:
        """Refuse every later call: the run is over."""
        self._closed = True

    async def llm_query(self, prompts: list[str], model: str | None) -> list[QueryOutcome]:
        if self._closed:
            raise BridgeError(RUN_ENDED)
        chosen = model or self._default_model
        if chosen is None:
            raise BridgeError("llm_query is not available: no sub-model is configured")
        if chosen not in self._allowed:
            allowed = ", ".join(sorted(self._allowed))
            raise BridgeError(f"model {chosen!r} is not configured for this run (allowed: {allowed})")
        self._ledger.reserve_sub_calls(len(prompts))
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
            model=model,
            index=index,
            batch=batch,
            prompt=text_digest(prompt),
            **outcome,
        )
