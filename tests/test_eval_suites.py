"""The built-in suites: deterministic, the asked size, and gold answers that the context itself supports."""

from __future__ import annotations

import random

import pytest

from rlmbox.demo.haystack import make_haystack
from rlmbox.evals import score
from rlmbox.evals.suites import CHARS_PER_TOKEN, SUITES
from rlmbox.evals.suites.common import task_seed
from rlmbox.evals.suites.oolong import LABELS, classify, generate_records, parse_records


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_same_seed_same_tasks_other_seed_other_tasks(suite):
    make = SUITES[suite]
    assert make([2000], 3, 7) == make([2000], 3, 7)
    assert [t.context for t in make([2000], 3, 7)] != [t.context for t in make([2000], 3, 8)]


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("length", [2_000, 32_000])
def test_contexts_have_about_the_asked_length(suite, length):
    for task in SUITES[suite]([length], 2, 1):
        assert task.length == length
        assert 0.95 <= len(task.context) / (length * CHARS_PER_TOKEN) <= 1.05


def test_sniah_gold_is_the_needle_the_generator_hid():
    for task in SUITES["sniah"]([8_000], 5, 3):
        index = int(task.id.rsplit("-", 1)[1])
        haystack = make_haystack(8_000 * CHARS_PER_TOKEN, seed=task_seed(3, 8_000, index))
        assert task.answer == haystack.answer and task.scorer == "exact"
        assert score("exact", haystack.answer, task.answer) == 1.0


def test_the_classifier_recovers_every_label_the_generator_wrote():
    context, written = generate_records(200_000, random.Random(5))
    assert len(written) > 2000 and {r.label for r in written} == set(LABELS)
    assert [classify(r.instance) for r in written] == [r.label for r in written]
    parsed = parse_records(context)
    assert [(r.day, r.user, r.label) for r in parsed] == [(r.day, r.user, r.label) for r in written]


def test_oolong_asks_every_kind_with_a_single_answer():
    tasks = SUITES["oolong"]([4_000], 10, 2)
    kinds = {
        "Which label is the",
        "How many instances have",
        "Is the label",
        "For user",
        "How many instances dated on or after",
    }
    assert {kind for kind in kinds for t in tasks if t.query.startswith(kind)} == kinds
    for task in tasks:
        assert task.answer is not None and task.scorer == "oolong"
        if isinstance(task.answer, int):
            assert score("oolong", f"Answer: {task.answer}", task.answer) == 1.0


def test_oolong_counts_match_the_generators_own_record():
    task = next(t for t in SUITES["oolong"]([4_000], 10, 2) if t.query.startswith("How many instances have"))
    label = task.query.split("'")[1]
    index = int(task.id.rsplit("-", 1)[1])
    _, written = generate_records(4_000 * CHARS_PER_TOKEN, random.Random(task_seed(2, 4_000, index)))
    assert task.answer == sum(1 for r in written if r.label == label)


def test_oolong_pairs_gold_is_canonical_and_scores_itself_perfectly():
    tasks = SUITES["oolong-pairs"]([8_000], 4, 9)
    assert any(t.answer for t in tasks)
    assert any("dated on or after" in t.query for t in tasks)
    assert any("the other has" in t.query for t in tasks)
    for task in tasks:
        assert all(a < b for a, b in task.answer) and task.answer == sorted(task.answer)
        perfect = ", ".join(f"({a}, {b})" for a, b in task.answer) or "none"
        assert score("pairs_f1", perfect, task.answer) == 1.0


def test_oolong_pairs_gold_matches_the_generators_own_record():
    from itertools import combinations

    for task in SUITES["oolong-pairs"]([8_000], 4, 9):
        index = int(task.id.rsplit("-", 1)[1])
        _, written = generate_records(8_000 * CHARS_PER_TOKEN, random.Random(task_seed(9, 8_000, index)))
        since = task.query.split("dated on or after ")[1][:10] if "dated on or after" in task.query else None
        labels: dict[str, set[str]] = {}
        for record in written:
            if since is None or record.day >= since:
                labels.setdefault(record.user, set()).add(record.label)
        first, *rest = task.query.split(". Write")[0].split("'")[1::2]
        second = rest[0] if rest else first
        expected = [
            [a, b]
            for a, b in combinations(sorted(labels), 2)
            if (first in labels[a] and second in labels[b]) or (second in labels[a] and first in labels[b])
        ]
        assert task.answer == expected
