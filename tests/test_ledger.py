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
    ledger.start_iteration()
    ledger.start_iteration()
    assert ledger.iterations == 2 and not ledger.has_iterations()
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


def test_children_borrow_a_share_of_the_remainder_and_return_what_they_did_not_spend():
    parent = Ledger(Limits(max_iterations=21, max_sub_calls=100, max_tokens=10_000, child_share=0.5))
    parent.start_iteration()
    first, _ = parent.lend(2)
    assert (first.limits.max_iterations, first.limits.max_sub_calls, first.limits.max_tokens) == (5, 25, 2500)
    assert first.depth == 2
    # What the children hold is not the parent's to spend, nor a later child's to borrow.
    assert parent.available("iterations") == 20 - 2 * 5 and parent.available("tokens") == 5000
    (third,) = parent.lend(1)
    assert third.limits.max_iterations == 5 and third.limits.max_tokens == 2500
    first.start_iteration()
    first.record(Charge("sub", 600, 400, None))
    first.close()
    # Spent by the child: charged to the parent; unspent: given back.
    assert parent.iterations == 2 and parent.tokens == 1000
    assert parent.available("iterations") == 21 - 2 - 5 - 5
    assert parent.available("tokens") == 10_000 - 1000 - 5000


def test_a_child_cannot_outspend_its_loan_nor_the_tree():
    parent = Ledger(Limits(max_iterations=10, max_sub_calls=8, max_tokens=1000, child_share=1.0))
    (child,) = parent.lend(1)
    child.reserve_sub_calls(8)
    with pytest.raises(BudgetExceeded) as info:
        child.reserve_sub_calls(1)
    assert info.value.limit == "sub_calls"
    child.record(Charge("sub", 2000, 0, None))  # a single call can overshoot; the next check stops the tree
    with pytest.raises(BudgetExceeded):
        parent.check()
    with pytest.raises(BudgetExceeded):
        child.start_iteration()


def test_too_little_left_for_the_children_refuses_them_all():
    parent = Ledger(Limits(max_iterations=5))
    parent.start_iteration()
    with pytest.raises(BudgetExceeded, match="not enough budget left for 9 child RLM") as info:
        parent.lend(9)
    assert info.value.limit == "iterations"
    assert parent.available("iterations") == 4  # nothing held by the refused batch


def test_usage_is_kept_per_depth_at_the_root():
    root = Ledger(Limits(max_depth=3, max_sandboxes=3))
    (child,) = root.lend(1)
    (grandchild,) = child.lend(1)
    root.record(Charge("big", 10, 1, 0.1))
    grandchild.record(Charge("small", 5, 1, 0.01))
    grandchild.record(Charge("small", 5, 1, 0.01))
    assert root.usage_by_depth[1]["big"].calls == 1 and root.usage_by_depth[3]["small"].calls == 2
    assert 2 not in root.usage_by_depth
    assert root.usage["small"].calls == 2 and child.usage["small"].calls == 2 and "big" not in child.usage


def test_children_share_the_parents_deadline():
    clock = Clock()
    parent = Ledger(Limits(max_wall_s=100), clock=clock)
    clock.now += 40
    (child,) = parent.lend(1)
    assert child.limits.max_wall_s == pytest.approx(60)
    clock.now += 60
    with pytest.raises(BudgetExceeded) as info:
        child.check()
    assert info.value.limit == "wall_time"


def test_the_root_is_told_once_when_a_charge_spends_the_trees_tokens():
    root = Ledger(Limits(max_tokens=100))
    told: list[BudgetExceeded] = []
    root.on_exhausted = told.append
    (child,) = root.lend(1)
    child.record(Charge("sub", 30, 0, None))
    assert told == []
    child.record(Charge("sub", 80, 0, None))
    child.record(Charge("sub", 80, 0, None))
    assert len(told) == 1 and told[0].limit == "tokens" and "of 100 tokens" in str(told[0])
