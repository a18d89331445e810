"""The Recursive Language Model loop and its facade: ``RLM(settings).run(context, query) -> RunResult``.

Each turn: ask the root model, run the reply's ```repl blocks in order in the sandbox, feed back their
(truncated) outputs. A final answer (``FINAL``/``FINAL_VAR`` in code or in the reply's prose) ends the run;
so do the ledger's limits (status ``budget_exhausted``, with the best partial answer) and errors (``error``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel
from structlog.contextvars import bound_contextvars

from rlmbox._exceptions import BudgetExceeded, ConfigError, KernelDiedError, RLMBoxError
from rlmbox.config import Settings
from rlmbox.ledger import Charge, Ledger, ModelUsage
from rlmbox.llm import LMClient, context_window_chars
from rlmbox.log import ensure_logging, redact
from rlmbox.parsing import extract_code_blocks, find_text_final, strip_code_blocks
from rlmbox.prompts import (
    describe_cell,
    first_user_message,
    kernel_restarted_message,
    last_chance_message,
    no_code_reminder,
    system_prompt,
    turn_feedback,
)
from rlmbox.sandbox.base import ContextInput, SandboxBackend
from rlmbox.sandbox.facade import create_backend
from rlmbox.sandbox.pool import SandboxPool
from rlmbox.subcalls import SubCallRouter
from rlmbox.trajectory import TrajectoryWriter, text_digest

__all__ = ["RLM", "RunResult", "RunStatus"]

log = structlog.get_logger(__name__)

RunStatus = Literal["completed", "budget_exhausted", "error"]


class RunResult(BaseModel):
    """The outcome of one run; ``rlmbox run --json`` prints exactly this."""

    run_id: str
    status: RunStatus
    answer: str | None
    iterations: int
    sub_calls: int
    usage: dict[str, ModelUsage]
    cost_usd: float
    elapsed_s: float
    trajectory: str
    error: str | None = None
    error_type: str | None = None
    budget_limit: str | None = None


class _Outcome(BaseModel):
    status: RunStatus
    answer: str | None = None
    error: str | None = None
    error_type: str | None = None
    budget_limit: str | None = None


class RLM:
    """A Recursive Language Model runtime.

    ``settings`` says which models, sandbox and limits to use. ``pool`` hands out a warm sandbox per run
    (its config wins over the settings'; with ``wait_for_pool`` a run waits for one being started rather
    than start its own); ``sandbox`` replaces the sandbox altogether (e.g. a FakeSandbox in
    tests); ``lm`` replaces the litellm client.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        pool: SandboxPool | None = None,
        wait_for_pool: bool = False,
        sandbox: SandboxBackend | None = None,
        lm: LMClient | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self._pool = pool
        self._wait_for_pool = wait_for_pool
        self._sandbox = sandbox
        self._lm = lm

    def run(self, context: ContextInput, query: str, *, trajectory: Path | None = None) -> RunResult:
        """Blocking twin of ``arun``."""
        return asyncio.run(self.arun(context, query, trajectory=trajectory))

    async def arun(self, context: ContextInput, query: str, *, trajectory: Path | None = None) -> RunResult:
        """Answer ``query`` about ``context``; the context is only ever seen by code in the sandbox."""
        ensure_logging()
        llm = self.settings.llm
        if not llm.model:
            raise ConfigError("no root model: pass --model or set RLMBOX_MODEL (e.g. openai/gpt-5-mini)")
        if not query.strip():
            raise ConfigError("the query is empty")
        run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        path = (trajectory or self.settings.trajectory_dir / f"{run_id}.jsonl").absolute()
        ledger = Ledger(self.settings.limits)
        with TrajectoryWriter(path) as writer, bound_contextvars(run_id=run_id):
            writer.write(
                "run_started",
                run_id=run_id,
                query=query,
                context=_context_digest(context),
                settings=redact(self.settings.model_dump(mode="json")),
            )
            try:
                outcome = await self._run(context, query, ledger, writer)
            except asyncio.CancelledError:  # Ctrl-C, SIGTERM, a caller's deadline: keep what happened
                writer.write("run_interrupted", iterations=ledger.iterations, sub_calls=ledger.sub_calls)
                log.warning("run.interrupted", trajectory=str(path))
                raise
            result = RunResult(
                run_id=run_id,
                iterations=ledger.iterations,
                sub_calls=ledger.sub_calls,
                usage=ledger.usage,
                cost_usd=ledger.cost_usd,
                elapsed_s=round(ledger.elapsed_s, 3),
                trajectory=str(path),
                **outcome.model_dump(),
            )
            writer.write("run_finished", **result.model_dump(mode="json", exclude={"trajectory"}))
        log.info(
            "run.finished", status=result.status, iterations=result.iterations, sub_calls=result.sub_calls
        )
        return result

    async def _run(
        self, context: ContextInput, query: str, ledger: Ledger, writer: TrajectoryWriter
    ) -> _Outcome:
        llm = self.settings.llm
        lm = self._lm or LMClient(llm)
        sub_model = llm.effective_sub_model
        router = SubCallRouter(
            lm,
            ledger,
            writer,
            default_model=sub_model,
            allowed_models={m for m in (llm.model, sub_model) if m},
            max_concurrency=llm.max_concurrency,
        )
        messages = [
            {
                "role": "system",
                "content": system_prompt(
                    context,
                    sub_model=sub_model,
                    sub_model_chars=context_window_chars(sub_model) if sub_model else 0,
                    max_output_chars=self.settings.limits.max_output_chars,
                ),
            },
            {"role": "user", "content": first_user_message(query)},
        ]
        writer.write("system_prompt", text=messages[0]["content"])
        # Nothing may fail or wait between getting the sandbox and entering it (a warm one is running).
        sandbox = await self._sandbox_for(context, router)
        turns = _Turns(self.settings, lm, ledger, writer, router, sandbox)
        deadline: asyncio.Timeout | None = None
        try:
            # The wall clock bounds the turns, not the sandbox's clean-up.
            async with sandbox, asyncio.timeout(ledger.remaining_s()) as deadline:
                try:
                    return await turns.loop(messages)
                finally:
                    router.close()  # code still running in the sandbox (a thread, say) may not spend more
        except TimeoutError as exc:
            if deadline is None or not deadline.expired():
                return _failure(exc)
            return _Outcome(
                status="budget_exhausted",
                answer=turns.partial_answer,
                error=f"ran out of the {self.settings.limits.max_wall_s:g}s wall-clock budget",
                budget_limit="wall_time",
            )
        except BudgetExceeded as exc:
            return _Outcome(
                status="budget_exhausted", answer=turns.partial_answer, error=str(exc), budget_limit=exc.limit
            )
        except RLMBoxError as exc:
            return _failure(exc)

    async def _sandbox_for(self, context: ContextInput, router: SubCallRouter) -> SandboxBackend:
        if self._sandbox is not None:
            self._sandbox.context, self._sandbox.handler = context, router
            return self._sandbox
        if self._pool is not None:
            return await self._pool.claim(context, router, wait=self._wait_for_pool)
        return create_backend(self.settings.sandbox, context, router)


class _Turns:
    """The turn loop of one run, with the state it keeps between turns."""

    def __init__(
        self,
        settings: Settings,
        lm: LMClient,
        ledger: Ledger,
        writer: TrajectoryWriter,
        router: SubCallRouter,
        sandbox: SandboxBackend,
    ) -> None:
        self.settings = settings
        self.lm = lm
        self.ledger = ledger
        self.writer = writer
        self.router = router
        self.sandbox = sandbox
        self.partial_answer: str | None = None
        self.restarts = 0

    async def loop(self, messages: list[dict[str, str]]) -> _Outcome:
        limits = self.settings.limits
        while self.ledger.iterations < limits.max_iterations:
            iteration = self.ledger.start_iteration()
            self.router.iteration = iteration
            with bound_contextvars(iteration=iteration):
                reply = await self._ask_root(messages, iteration)
                messages.append({"role": "assistant", "content": reply})
                if prose := strip_code_blocks(reply).strip():
                    self.partial_answer = prose
                final, feedback = await self._run_reply(reply, iteration)
                if final is not None:
                    return _Outcome(status="completed", answer=final)
                messages.append({"role": "user", "content": feedback})
        return await self._last_chance(messages)

    async def _ask_root(self, messages: list[dict[str, str]], iteration: int) -> str:
        model = self.settings.llm.model
        assert model is not None
        completion = await self.lm.complete(model, messages, timeout_s=self.ledger.remaining_s())
        self.ledger.record(Charge.of(completion))
        self.writer.write(
            "root_call",
            iteration=iteration,
            model=model,
            messages=len(messages),
            prompt_chars=sum(len(m["content"]) for m in messages),
            new_message=text_digest(messages[-1]["content"]),
            reply=completion.text,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=completion.cost_usd,
            attempts=completion.attempts,
            duration_s=round(completion.duration_s, 4),
        )
        return completion.text

    async def _run_reply(self, reply: str, iteration: int) -> tuple[str | None, str]:
        """Run the reply's code blocks; returns (final answer or None, feedback for the next turn)."""
        blocks = extract_code_blocks(reply)
        limit = self.settings.limits.max_output_chars // max(1, len(blocks))
        descriptions: list[str] = []
        for index, code in enumerate(blocks, start=1):
            try:
                cell = await self.sandbox.execute(code)
            except KernelDiedError as exc:
                descriptions.append(await self._recover_kernel(exc, iteration, index, code))
                break
            self.writer.write(
                "cell",
                iteration=iteration,
                index=index,
                code=code,
                stdout=text_digest(cell.stdout, 20_000),
                stderr=text_digest(cell.stderr, 5_000),
                result=cell.result,
                error=None
                if cell.error is None
                else {"ename": cell.error.ename, "evalue": cell.error.evalue},
                final=cell.final,
                duration_s=round(cell.duration_s, 4),
                timed_out=cell.timed_out,
                kernel_restarted=cell.kernel_restarted,
            )
            if cell.final is not None:
                return cell.final, ""
            descriptions.append(describe_cell(index, len(blocks), cell, limit))
        text_final = find_text_final(reply)
        if text_final is not None:
            try:
                answer = await self._resolve_text_final(text_final.answer, text_final.variable)
            except KernelDiedError as exc:
                descriptions.append(
                    await self._recover_kernel(exc, iteration, 0, f"FINAL_VAR({text_final.variable!r})")
                )
                return None, turn_feedback(descriptions, iteration, self.settings.limits.max_iterations)
            if answer is not None:
                return answer, ""
            descriptions.append(f"[FINAL_VAR({text_final.variable}): no such variable in the REPL]")
        if not blocks and text_final is None:
            return None, no_code_reminder()
        return None, turn_feedback(descriptions, iteration, self.settings.limits.max_iterations)

    async def _resolve_text_final(self, answer: str | None, variable: str | None) -> str | None:
        """The answer written in prose, or the value of the variable it names (None if there is none)."""
        if variable is None:
            return answer
        cell = await self.sandbox.execute(f"FINAL_VAR({variable!r})")
        self.writer.write("final_var", variable=variable, found=cell.final is not None)
        return cell.final

    async def _recover_kernel(self, exc: KernelDiedError, iteration: int, index: int, code: str) -> str:
        self.restarts += 1
        self.writer.write(
            "kernel_died", iteration=iteration, index=index, code=code, reason=str(exc), oom=exc.oom
        )
        if self.restarts > self.settings.limits.max_kernel_restarts:
            raise KernelDiedError(f"{exc} (and the kernel was already restarted {self.restarts - 1} times)")
        log.warning("run.kernel_restart", reason=str(exc))
        await self.sandbox.restart()
        return kernel_restarted_message(str(exc))

    async def _last_chance(self, messages: list[dict[str, str]]) -> _Outcome:
        """Out of iterations: ask once more for the best answer so far, without running code."""
        limit = self.settings.limits.max_iterations
        try:
            self.ledger.check()
            reply = await self._ask_root(
                [*messages, {"role": "user", "content": last_chance_message()}], limit + 1
            )
        except (BudgetExceeded, RLMBoxError):
            reply = ""
        text_final = find_text_final(reply)
        answer = None
        if text_final is not None:
            try:
                answer = await self._resolve_text_final(text_final.answer, text_final.variable)
            except RLMBoxError:
                answer = None
        if answer is not None:
            self.partial_answer = answer
        elif text_final is None and (prose := strip_code_blocks(reply).strip()):
            self.partial_answer = prose
        return _Outcome(
            status="budget_exhausted",
            answer=self.partial_answer,
            error=f"reached the limit of {limit} iterations",
            budget_limit="iterations",
        )


def _failure(exc: BaseException) -> _Outcome:
    return _Outcome(status="error", error=str(exc), error_type=type(exc).__name__)


def _context_digest(context: Any) -> dict[str, Any]:
    if isinstance(context, str):
        return {"type": "str", **text_digest(context, 200)}
    if isinstance(context, list | dict):
        return {"type": type(context).__name__, "items": len(context)}
    return {"type": type(context).__name__}
