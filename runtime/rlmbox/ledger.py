"""The call tree's budget: iterations, sub-calls, tokens, USD and wall time, charged in one place.

Each node of the tree (the root RLM and every child RLM) has a ledger; a child's ledger has its parent's as
``parent``. Every charge is made to the node's ledger and to each ancestor's, so the root's ledger holds the
tree's totals and its limits bind the whole tree.

A child starts with a loan: ``lend`` carves limits for it out of what its parent has left (a share of the
remainder, split evenly among the children started together). While the child runs, the part of its loan it
has not spent is held: neither the parent nor other children can spend it. When the child ends, ``close``
returns the unspent part. Wall time is not lent (children run side by side): every node stops at the tree's
deadline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from rlmbox._exceptions import BudgetExceeded
from rlmbox.config import Limits

if TYPE_CHECKING:
    from rlmbox.llm import Completion

__all__ = ["Charge", "Ledger", "ModelUsage"]

Measure = Literal["iterations", "sub_calls", "tokens", "cost_usd"]
_LIMIT_FIELDS: dict[Measure, str] = {
    "iterations": "max_iterations",
    "sub_calls": "max_sub_calls",
    "tokens": "max_tokens",
    "cost_usd": "max_cost_usd",
}


class ModelUsage(BaseModel):
    """What one model cost the run."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True  # False once any call's price was not in litellm's table

    def add(self, charge: Charge) -> None:
        self.calls += 1
        self.prompt_tokens += charge.prompt_tokens
        self.completion_tokens += charge.completion_tokens
        if charge.cost_usd is None:
            self.cost_known = False
        else:
            self.cost_usd += charge.cost_usd


@dataclass(frozen=True)
class Charge:
    """One model call's cost; ``cost_usd`` is None when the price is unknown."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None

    @classmethod
    def of(cls, completion: Completion) -> Charge:
        return cls(
            completion.model, completion.prompt_tokens, completion.completion_tokens, completion.cost_usd
        )


class Ledger:
    """Counts what a node and its descendants spend, and refuses to let them spend past their limits."""

    def __init__(
        self,
        limits: Limits,
        *,
        parent: Ledger | None = None,
        depth: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.parent = parent
        self.depth = depth
        self._clock = clock
        self.started_at = clock()
        self.iterations = 0
        self.sub_calls = 0
        self.usage: dict[str, ModelUsage] = {}
        # Kept by the root only: what each level of the tree spent, per model; and who to tell (once) when
        # a charge spends the tree's tokens or money, so that every node can stop at once.
        self.usage_by_depth: dict[int, dict[str, ModelUsage]] = {}
        self.on_exhausted: Callable[[BudgetExceeded], None] | None = None
        self._children: set[Ledger] = set()

    # -- totals --------------------------------------------------------------------------------------

    @property
    def tokens(self) -> int:
        return sum(u.prompt_tokens + u.completion_tokens for u in self.usage.values())

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.usage.values())

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self.started_at

    def remaining_s(self) -> float | None:
        """Seconds left on the wall clock (the tightest of this ledger and its ancestors), or None."""
        own = None if self.limits.max_wall_s is None else self.limits.max_wall_s - self.elapsed_s
        inherited = self.parent.remaining_s() if self.parent else None
        candidates = [value for value in (own, inherited) if value is not None]
        return max(0.0, min(candidates)) if candidates else None

    def spent(self, measure: Measure) -> float:
        return float(getattr(self, measure))

    def limit(self, measure: Measure) -> float | None:
        return getattr(self.limits, _LIMIT_FIELDS[measure])

    def available(self, measure: Measure) -> float | None:
        """What this node may still spend of ``measure``: its limit less what it (and its descendants)
        spent and what its running children still hold. None when unlimited."""
        limit = self.limit(measure)
        if limit is None:
            return None
        held = sum(child.unspent(measure) for child in self._children)
        return max(0.0, limit - self.spent(measure) - held)

    def unspent(self, measure: Measure) -> float:
        limit = self.limit(measure)
        return 0.0 if limit is None else max(0.0, limit - self.spent(measure))

    # -- charging ------------------------------------------------------------------------------------

    def _fits(self, measure: Measure, count: int) -> bool:
        """Whether ``count`` more fit here (less what children hold) and under every ancestor's limit."""
        available = self.available(measure)
        if available is not None and count > available:
            return False
        ancestor = self.parent
        while ancestor is not None:
            limit = ancestor.limit(measure)
            if limit is not None and ancestor.spent(measure) + count > limit:
                return False
            ancestor = ancestor.parent
        return True

    def has_iterations(self) -> bool:
        return self._fits("iterations", 1)

    def start_iteration(self) -> None:
        """Count a new root-model turn; raises BudgetExceeded when none is left."""
        self.check()
        if not self.has_iterations():
            raise BudgetExceeded(
                f"reached the limit of {self.limits.max_iterations} iterations", limit="iterations"
            )
        self._add("iterations", 1)

    def reserve_sub_calls(self, count: int) -> None:
        """Take ``count`` sub-calls from the budget, all or none."""
        self.check()
        if not self._fits("sub_calls", count):
            left = int(self.available("sub_calls") or 0)
            raise BudgetExceeded(
                f"{count} sub-calls requested but only {left} of {self.limits.max_sub_calls} remain",
                limit="sub_calls",
            )
        self._add("sub_calls", count)

    def release_sub_calls(self, count: int) -> None:
        """Give back reserved sub-calls that were never made."""
        self._add("sub_calls", -count)

    def _add(self, measure: Literal["iterations", "sub_calls"], count: int) -> None:
        ledger: Ledger | None = self
        while ledger is not None:
            setattr(ledger, measure, getattr(ledger, measure) + count)
            ledger = ledger.parent

    def record(self, charge: Charge) -> None:
        """Book a finished model call (root or sub) against its model, here and in every ancestor."""
        ledger: Ledger | None = self
        root = self
        while ledger is not None:
            ledger.usage.setdefault(charge.model, ModelUsage()).add(charge)
            root, ledger = ledger, ledger.parent
        root.usage_by_depth.setdefault(self.depth, {}).setdefault(charge.model, ModelUsage()).add(charge)
        if root.on_exhausted is not None and (exhausted := root._overspent()) is not None:
            notify, root.on_exhausted = root.on_exhausted, None
            notify(exhausted)

    def _overspent(self) -> BudgetExceeded | None:
        limits = self.limits
        if limits.max_tokens is not None and self.tokens >= limits.max_tokens:
            return BudgetExceeded(f"used {self.tokens} of {limits.max_tokens} tokens", limit="tokens")
        if limits.max_cost_usd is not None and self.cost_usd >= limits.max_cost_usd:
            return BudgetExceeded(
                f"spent ${self.cost_usd:.4f} of the ${limits.max_cost_usd:.4f} budget", limit="cost_usd"
            )
        return None

    def check(self) -> None:
        """Raise BudgetExceeded if tokens, cost or time are spent (here or in an ancestor)."""
        if (overspent := self._overspent()) is not None:
            raise overspent
        limits = self.limits
        if limits.max_wall_s is not None and self.elapsed_s >= limits.max_wall_s:
            raise BudgetExceeded(
                f"ran out of the {limits.max_wall_s:g}s wall-clock budget", limit="wall_time"
            )
        if self.parent is not None:
            self.parent.check()

    # -- children ------------------------------------------------------------------------------------

    def lend(self, count: int) -> list[Ledger]:
        """Ledgers for ``count`` children started together, all or none.

        Together they hold ``limits.child_share`` of what this node has left, split evenly; each needs at
        least one iteration (and one token, or a cent's fraction, when those are limited).
        """
        self.check()
        share = self.limits.child_share / count
        loan: dict[str, float | None] = {}
        for measure in _LIMIT_FIELDS:
            available = self.available(measure)  # type: ignore[arg-type]
            if available is None:
                loan[measure] = None
                continue
            part = available * share
            loan[measure] = part if measure == "cost_usd" else math.floor(part)
            if measure != "sub_calls" and not loan[measure]:
                raise BudgetExceeded(
                    f"not enough budget left for {count} child RLM(s): {_amount(measure, available)} of "
                    f"{measure} remain and the children may take {self.limits.child_share:.0%} of them; "
                    "start fewer children or use llm_query",
                    limit=measure,
                )
        limits = self.limits.model_copy(
            update={
                **{_LIMIT_FIELDS[m]: value for m, value in loan.items()},  # type: ignore[index]
                "max_wall_s": self.remaining_s(),
            }
        )
        children = [
            Ledger(limits, parent=self, depth=self.depth + 1, clock=self._clock) for _ in range(count)
        ]
        self._children.update(children)
        return children

    def close(self) -> None:
        """This node has ended: its parent gets back what the node did not spend of its loan."""
        if self.parent is not None:
            self.parent._children.discard(self)


def _amount(measure: str, value: float) -> str:
    return f"${value:.4f}" if measure == "cost_usd" else f"{int(value)}"
