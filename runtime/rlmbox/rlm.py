"""The facade: ``RLM(settings).run(context, query) -> RunResult``.

A run is a call tree: the root RLM (``node.py``) and, when ``max_depth`` > 1, the child RLMs its code starts
with ``rlm_query``, all on one budget (``ledger.py``) and one trajectory, sharing the caps on sandboxes and
model calls (``tree.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel
from structlog.contextvars import bound_contextvars

from rlmbox._exceptions import ConfigError
from rlmbox.config import Settings
from rlmbox.ledger import Ledger, ModelUsage
from rlmbox.llm import LMClient, load_litellm
from rlmbox.log import ensure_logging, redact
from rlmbox.node import Node, context_digest
from rlmbox.sandbox.base import ContextInput, SandboxBackend
from rlmbox.sandbox.pool import SandboxPool
from rlmbox.trajectory import TrajectoryWriter
from rlmbox.tree import CallTree, TreeSummary

__all__ = ["RLM", "RunResult", "RunStatus"]

log = structlog.get_logger(__name__)

EventListener = Callable[[dict[str, Any]], None]
RunStatus = Literal["completed", "budget_exhausted", "error"]


class RunResult(BaseModel):
    """The outcome of one run; ``rlmbox run --json`` prints exactly this. Counts, usage and cost are the
    whole call tree's; ``tree`` says how it was spent."""

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
    tree: TreeSummary


class RLM:
    """A Recursive Language Model runtime.

    ``settings`` says which models, sandbox and limits to use. ``pool`` hands out a warm sandbox per node
    (its config wins over the settings'; with ``wait_for_pool`` a node waits for one being started rather
    than start its own); without one, a run with ``max_depth`` > 1 keeps ``settings.warm_sandboxes`` started
    for its children. ``sandbox`` replaces the root's sandbox (e.g. a FakeSandbox in tests); ``lm``
    replaces the litellm client.
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

    def run(
        self,
        context: ContextInput,
        query: str,
        *,
        trajectory: Path | None = None,
        on_event: EventListener | None = None,
    ) -> RunResult:
        """Blocking twin of ``arun``."""
        return asyncio.run(self.arun(context, query, trajectory=trajectory, on_event=on_event))

    async def arun(
        self,
        context: ContextInput,
        query: str,
        *,
        trajectory: Path | None = None,
        on_event: EventListener | None = None,
    ) -> RunResult:
        """Answer ``query`` about ``context``; the context is only ever seen by code in a sandbox.

        ``on_event`` is called with every trajectory event as it is written (live progress); it must be
        quick and must not raise."""
        ensure_logging()
        llm = self.settings.llm
        if not llm.model:
            raise ConfigError("no root model: pass --model or set RLMBOX_MODEL (e.g. openai/gpt-5-mini)")
        if not query.strip():
            raise ConfigError("the query is empty")
        run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        path = (trajectory or self.settings.trajectory_dir / f"{run_id}.jsonl").absolute()
        # Every run reads litellm's model table (for the prompts), even with another ``lm``: its first
        # import takes seconds, so it happens off the loop and before the clock that --max-time bounds.
        await asyncio.to_thread(load_litellm)
        ledger = Ledger(self.settings.limits)
        with TrajectoryWriter(path, on_event) as writer, bound_contextvars(run_id=run_id):
            writer.write(
                "run_started",
                run_id=run_id,
                query=query,
                context=context_digest(context),
                settings=redact(self.settings.model_dump(mode="json")),
            )
            async with self._warm_pool() as (pool, own_pool):
                tree = CallTree(
                    self.settings,
                    self._lm or LMClient(llm),
                    writer,
                    pool=pool,
                    wait_for_pool=self._wait_for_pool,
                    root_sandbox=self._sandbox,
                )
                ledger.on_exhausted = tree.stop_all
                root = Node(
                    tree,
                    node_id="1",
                    parent_id=None,
                    query=query,
                    context=context,
                    model=llm.model,
                    ledger=ledger,
                )
                try:
                    outcome = await root.run()
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
                tree=tree.summary(ledger, pool_starts=own_pool.started if own_pool else 0),
                **outcome.model_dump(),
            )
            writer.write("run_finished", **result.model_dump(mode="json", exclude={"trajectory"}))
        log.info(
            "run.finished", status=result.status, iterations=result.iterations, sub_calls=result.sub_calls
        )
        return result

    @contextlib.asynccontextmanager
    async def _warm_pool(self) -> AsyncIterator[tuple[SandboxPool | None, SandboxPool | None]]:
        """The pool nodes take sandboxes from, and the one this run started (and closes) itself, if any."""
        size = self.settings.warm_sandboxes
        if self._pool is not None or self.settings.limits.max_depth == 1 or size == 0 or self._sandbox:
            yield self._pool, None
            return
        async with SandboxPool(self.settings.sandbox, size) as pool:
            yield pool, pool
