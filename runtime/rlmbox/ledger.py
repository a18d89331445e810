"""The run's budget: iterations, sub-calls, tokens, USD and wall time, charged in one place.

A ledger may have a parent: every charge is also made to it and every check also asks it, so one budget
can hold a whole tree of runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from rlmbox._exceptions import BudgetExceeded
from rlmbox.config import Limits

if TYPE_CHECKING:
    from rlmbox.llm import Completion

__all__ = ["Ledger", "ModelUsage"]


class ModelUsage(BaseModel):
    """What one model cost the run."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True  # False once any call's price was not in litellm's table


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
    """Counts what a run spends and refuses to let it spend past its limits."""

    def __init__(
        self, limits: Limits, *, parent: Ledger | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self.parent = parent
        self._clock = clock
        self.started_at = clock()
        self.iterations = 0
        self.sub_calls = 0
        self.usage: dict[str, ModelUsage] = {}

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

    # -- charging ------------------------------------------------------------------------------------

    def start_iteration(self) -> int:
        """Count a new root turn; raises BudgetExceeded when none is left."""
        self.check()
        if self.iterations >= self.limits.max_iterations:
            raise BudgetExceeded(
                f"reached the limit of {self.limits.max_iterations} iterations", limit="iterations"
            )
        self.iterations += 1
        return self.iterations

    def reserve_sub_calls(self, count: int) -> None:
        """Take ``count`` sub-calls from the budget, all or none."""
        self.check()
        self._ensure_sub_calls(count)
        self._add_sub_calls(count)

    def _ensure_sub_calls(self, count: int) -> None:
        left = self.limits.max_sub_calls - self.sub_calls
        if count > left:
            raise BudgetExceeded(
                f"{count} sub-calls requested but only {max(left, 0)} of {self.limits.max_sub_calls} remain",
                limit="sub_calls",
            )
        if self.parent is not None:
            self.parent._ensure_sub_calls(count)

    def release_sub_calls(self, count: int) -> None:
        """Give back reserved sub-calls that were never made."""
        self._add_sub_calls(-count)

    def _add_sub_calls(self, count: int) -> None:
        self.sub_calls += count
        if self.parent is not None:
            self.parent._add_sub_calls(count)

    def record(self, charge: Charge) -> None:
        """Book a finished model call (root or sub) against its model."""
        usage = self.usage.setdefault(charge.model, ModelUsage())
        usage.calls += 1
        usage.prompt_tokens += charge.prompt_tokens
        usage.completion_tokens += charge.completion_tokens
        if charge.cost_usd is None:
            usage.cost_known = False
        else:
            usage.cost_usd += charge.cost_usd
        if self.parent is not None:
            self.parent.record(charge)

    def check(self) -> None:
        """Raise BudgetExceeded if tokens, cost or time are spent (here or in an ancestor)."""
        limits = self.limits
        if limits.max_tokens is not None and self.tokens >= limits.max_tokens:
            raise BudgetExceeded(f"used {self.tokens} of {limits.max_tokens} tokens", limit="tokens")
        if limits.max_cost_usd is not None and self.cost_usd >= limits.max_cost_usd:
            raise BudgetExceeded(
                f"spent ${self.cost_usd:.4f} of the ${limits.max_cost_usd:.4f} budget", limit="cost_usd"
            )
        if limits.max_wall_s is not None and self.elapsed_s >= limits.max_wall_s:
            raise BudgetExceeded(
                f"ran out of the {limits.max_wall_s:g}s wall-clock budget", limit="wall_time"
            )
        if self.parent is not None:
            self.parent.check()
