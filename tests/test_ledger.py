"""The budget ledger's arithmetic."""

import pytest

from rlmbox import BudgetExceeded, Limits
from rlmbox.ledger import Charge, Ledger


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_iterations_stop_at_the_limit():
    ledger = Ledger(Limits(max_iterations=2))
    assert ledger.start_iteration() == 1
    assert ledger.start_iteration() == 2
    with pytest.raises(BudgetExceeded) as info:
        ledger.start_iteration()
    assert info.value.limit == "iterations"


def test_sub_calls_are_reserved_all_or_nothing():
    ledger = Ledger(Limits(max_sub_calls=10))
    ledger.reserve_sub_calls(8)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve_sub_calls(3)
    assert info.value.limit == "sub_calls"
    assert ledger.sub_calls == 8
    ledger.reserve_sub_calls(2)
    assert ledger.sub_calls == 10


def test_usage_is_summed_per_model():
    ledger = Ledger(Limits())
    ledger.record(Charge("root", 100, 10, 0.01))
    ledger.record(Charge("root", 50, 5, 0.02))
    ledger.record(Charge("sub", 7, 3, None))
    assert ledger.usage["root"].calls == 2
    assert ledger.usage["root"].prompt_tokens == 150
    assert ledger.usage["root"].cost_usd == pytest.approx(0.03)
    assert ledger.usage["sub"].cost_known is False
    assert ledger.tokens == 175
    assert ledger.cost_usd == pytest.approx(0.03)


def test_token_and_cost_limits():
    ledger = Ledger(Limits(max_tokens=100))
    ledger.record(Charge("m", 90, 20, 0.0))
    with pytest.raises(BudgetExceeded, match="tokens"):
        ledger.check()
    ledger = Ledger(Limits(max_cost_usd=0.05))
    ledger.record(Charge("m", 1, 1, 0.06))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve_sub_calls(1)
    assert info.value.limit == "cost_usd"


def test_wall_clock_limit_and_remaining_time():
    clock = Clock()
    ledger = Ledger(Limits(max_wall_s=10), clock=clock)
    clock.now += 4
    assert ledger.remaining_s() == pytest.approx(6)
    clock.now += 7
    assert ledger.remaining_s() == 0
    with pytest.raises(BudgetExceeded) as info:
        ledger.check()
    assert info.value.limit == "wall_time"


def test_child_charges_reach_the_parent_and_parent_limits_bind_the_child():
    parent = Ledger(Limits(max_sub_calls=5, max_tokens=1000))
    child = Ledger(Limits(max_sub_calls=100), parent=parent)
    child.reserve_sub_calls(4)
    child.record(Charge("sub", 10, 10, 0.5))
    assert parent.sub_calls == 4 and parent.tokens == 20 and parent.cost_usd == 0.5
    with pytest.raises(BudgetExceeded):
        child.reserve_sub_calls(2)
    assert child.sub_calls == 4


def test_no_wall_limit_means_no_deadline():
    assert Ledger(Limits(max_wall_s=None)).remaining_s() is None
