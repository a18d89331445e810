"""The evaluation scorers on worked cases."""

from __future__ import annotations

import pytest

from rlmbox.evals import score


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("4711234", "4711234", 1.0),
        ("  4711234. ", 4711234, 1.0),
        ('"Paris"', "paris", 1.0),
        ("The number is 4711234.", "4711234", 0.0),
        ("", "4711234", 0.0),
    ],
)
def test_exact(prediction, gold, expected):
    assert score("exact", prediction, gold) == expected


def test_contains():
    assert score("contains", "The number is 4711234.", "4711234") == 1.0
    assert score("contains", "It is 471123.", "4711234") == 0.0
    assert score("contains", "I do not know", "no") == 0.0  # whole words only
    assert score("contains", "anything", "") == 0.0


def test_choice():
    for said in ("B", "(B)", "Answer: B.", "I think it is B) because", "A looks right at first, but B"):
        assert score("choice", said, "B") == 1.0, said
    assert score("choice", "Answer: C", "B") == score("choice", "no letter", "B") == 0.0


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("Answer: 12", 12, 1.0),
        ("I counted them. Answer: **13**", 12, 0.75),
        ("Answer: [10]", 12, 0.75**2),
        ("Answer: 12", "12", 1.0),
        ("no idea", 12, 0.0),
        ("Label: numeric", "numeric", 1.0),
        ("After looking at everything. Label: **Numeric**", "numeric", 1.0),
        ("Label: location", "numeric", 0.0),
        ("Answer: human is more common than location", "more common than", 1.0),
        ("Answer: human is less common than location", "more common than", 0.0),
        ("Answer: same frequency as", "same frequency as", 1.0),
        ("Answer: 8,312", 8312, 1.0),  # digit groups
        ("Answer: human is not more common than location", "more common than", 0.0),
        ("Answer: more common than, less common than or same frequency as", "more common than", 0.0),
    ],
)
def test_oolong(prediction, gold, expected):
    assert score("oolong", prediction, gold) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("(1, 2), (3, 4)", [["1", "2"], ["3", "4"]], 1.0),
        ("(2, 1) (4, 3) (2, 1)", [["1", "2"], ["3", "4"]], 1.0),  # order and repeats do not matter
        ("(1, 2)", [["1", "2"], ["3", "4"]], 2 * 1.0 * 0.5 / 1.5),
        ("(1, 2), (5, 6)", [["1", "2"], ["3", "4"]], 0.5),
        ("none", [], 1.0),
        ("(1, 2)", [], 0.0),
        ("none", [["1", "2"]], 0.0),
        ("('11', '12')", [["12", "11"]], 1.0),
        ("(7, 7)", [], 1.0),  # a user paired with itself is not a pair
        ("[[1, 2], [3, 4]]", [["1", "2"], ["3", "4"]], 1.0),
        ("(user 1, user 2)", [["1", "2"]], 1.0),
    ],
)
def test_pairs_f1(prediction, gold, expected):
    assert score("pairs_f1", prediction, gold) == pytest.approx(expected)


def test_no_answer_scores_zero():
    assert score("exact", None, "x") == score("pairs_f1", None, []) == 0.0
