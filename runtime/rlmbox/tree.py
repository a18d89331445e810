"""What the nodes of one call tree share: settings, the model client, the trajectory, the caps on
sandboxes and model calls running at once, and the record of every node.

The root RLM is node ``1`` at depth 1; the children its code starts with ``rlm_query`` are ``1.1``,
``1.2``, ... at depth 2, their children ``1.2.1``, ... at depth 3, down to ``max_depth``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from rlmbox._exceptions import BudgetExceeded
from rlmbox.bridge import BridgeHandler
from rlmbox.config import Settings
from rlmbox.ledger import Ledger, ModelUsage
from rlmbox.llm import LMClient
from rlmbox.sandbox.base import ContextInput, SandboxBackend, SandboxState
from rlmbox.sandbox.facade import create_backend
from rlmbox.sandbox.pool import SandboxPool
from rlmbox.trajectory import TrajectoryWriter

__all__ = ["CallTree", "NodeStatus", "NodeSummary", "SandboxSlots", "TreeSummary"]

NodeStatus = Literal["completed", "budget_exhausted", "error", "cancelled"]


class NodeSummary(BaseModel):
    """One node of the call tree, as it ended. Counts include the node's descendants."""

    id: str
    parent: str | None
    depth: int
    model: str
    status: NodeStatus
    iterations: int
    sub_calls: int
    tokens: int
    elapsed_s: float
    error: str | None = None
    budget_limit: str | None = None
    misbehaviour: dict[str, int] = Field(
        default_factory=dict, description="what the node's own sandbox did against the protocol, by kind"
    )


class TreeSummary(BaseModel):
    """The whole call tree: its nodes, the sandboxes it used and what each level spent."""

    node_count: int
    depth_reached: int
    sandboxes_started: int  # containers this run started for its nodes and warm pool (restarts excluded)
    warm_claims: int  # nodes that got a sandbox from the warm pool
    peak_sandboxes: int  # most sandboxes held by nodes at once
    kernel_restarts: int
    usage_by_depth: dict[int, dict[str, ModelUsage]]
    misbehaviour: dict[str, int] = Field(
        default_factory=dict, description="what the tree's sandboxes did against the protocol, by kind"
    )
    nodes: list[NodeSummary]


class SandboxSlots:
    """At most ``limit`` sandboxes held at once in the tree, handed out so that the tree cannot deadlock.

    A node waiting for its children keeps its own sandbox. So a node at depth ``d`` gets a slot only while
    ``1 + max_depth - d`` are free, leaving one for each level below it: then some chain down to a leaf
    (whose rlm_query never waits for a sandbox) can always go on. Deeper waiters are served first.
    """

    def __init__(self, limit: int, max_depth: int) -> None:
        if limit < max_depth:
            raise ValueError(f"{limit} sandboxes cannot hold a tree {max_depth} levels deep")
        self.limit = limit
        self.max_depth = max_depth
        self.in_use = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, depth: int) -> AsyncIterator[None]:
        """Wait for a slot for a node at ``depth``; it is given back when the block ends."""
        await self._acquire(1 + self.max_depth - depth)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, need: int) -> None:
        # Every waiter needs more than is free (a release serves all it can), so none is passed over here.
        if self.limit - self.in_use >= need:
            self._take()
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiters.append((need, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # granted just as the waiter was cancelled: pass it on
            with contextlib.suppress(ValueError):
                self._waiters.remove((need, granted))
            raise

    def _take(self) -> None:
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)

    def _release(self) -> None:
        self.in_use -= 1
        for need, granted in sorted(self._waiters, key=lambda waiter: waiter[0]):  # deepest first
            if self.limit - self.in_use < need:
                continue
            self._waiters.remove((need, granted))
            if not granted.done():
                self._take()
                granted.set_result(None)


class Stoppable(Protocol):
    def stop(self, reason: BudgetExceeded) -> None: ...


class CallTree:
    """The state one run's nodes share. ``root_sandbox`` replaces the root node's sandbox (tests)."""

    def __init__(
        self,
        settings: Settings,
        lm: LMClient,
        trajectory: TrajectoryWriter,
        *,
        pool: SandboxPool | None = None,
        wait_for_pool: bool = False,
        root_sandbox: SandboxBackend | None = None,
    ) -> None:
        self.settings = settings
        self.lm = lm
        self.trajectory = trajectory
        self.slots = SandboxSlots(settings.limits.max_sandboxes, settings.limits.max_depth)
        self.model_calls = asyncio.Semaphore(settings.llm.max_concurrency)
        self.nodes: list[NodeSummary] = []
        self.running: set[Stoppable] = set()
        self.stopped: BudgetExceeded | None = None  # why stop_all stopped the tree
        self._pool = pool
        self._wait_for_pool = wait_for_pool
        self._root_sandbox = root_sandbox
        self.cold_starts = 0
        self.warm_claims = 0
        self.kernel_restarts = 0

    def stop_all(self, reason: BudgetExceeded) -> None:
        """The tree's budget is spent: every running node stops now, with its partial answer."""
        self.stopped = reason
        for node in list(self.running):
            node.stop(reason)

    async def sandbox_for(self, depth: int, context: ContextInput, handler: BridgeHandler) -> SandboxBackend:
        """A sandbox for a node: the caller's, a warm one from the pool, or a new one (not started yet)."""
        if depth == 1 and self._root_sandbox is not None:
            self._root_sandbox.context, self._root_sandbox.handler = context, handler
            return self._root_sandbox
        if self._pool is not None:
            sandbox = await self._pool.claim(context, handler, wait=self._wait_for_pool)
            if sandbox.state is SandboxState.RUNNING:  # a warm one; a cold one is not started yet
                self.warm_claims += 1
            else:
                self.cold_starts += 1
            return sandbox
        self.cold_starts += 1
        return create_backend(self.settings.sandbox, context, handler)

    def summary(self, root: Ledger, *, pool_starts: int = 0) -> TreeSummary:
        return TreeSummary(
            node_count=len(self.nodes),
            depth_reached=max((node.depth for node in self.nodes), default=0),
            sandboxes_started=self.cold_starts + pool_starts,
            warm_claims=self.warm_claims,
            peak_sandboxes=self.slots.peak,
            kernel_restarts=self.kernel_restarts,
            usage_by_depth=root.usage_by_depth,
            misbehaviour=dict(sum((Counter(node.misbehaviour) for node in self.nodes), Counter())),
            nodes=sorted(self.nodes, key=lambda node: [int(part) for part in node.id.split(".")]),
        )
