"""Scoring a model's answer against a task's gold answer, each scorer a number in [0, 1].

- ``exact``: equal after normalisation (case, surrounding space, quotes, a final full stop).
- ``contains``: the normalised gold answer appears in the normalised prediction.
- ``oolong``: as OOLONG scores. The prediction's text after its last ':' is taken and ``*[]`` stripped;
  a numeric gold answer scores 0.75 ** |gold - predicted|; a comparison phrase ("more common than", ...)
  scores by containment; anything else by exact match.
- ``pairs_f1``: F1 between the sets of unordered pairs in the prediction, written ``(a, b)``, and the gold
  pairs; both empty scores 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["COMPARISONS", "SCORERS", "canonical_pairs", "score"]

COMPARISONS = ("more common than", "less common than", "same frequency as")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PAIR = re.compile(r"\(\s*['\"]?([\w.-]+)['\"]?\s*,\s*['\"]?([\w.-]+)['\"]?\s*\)")


def _normalize(text: str) -> str:
    text = " ".join(str(text).split()).casefold()
    return text.strip().strip("'\"`").strip().removesuffix(".").strip()


def exact(prediction: str, gold: Any) -> float:
    return float(_normalize(prediction) == _normalize(str(gold)))


def contains(prediction: str, gold: Any) -> float:
    return float(_normalize(str(gold)) in _normalize(prediction))


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) or (
        isinstance(value, str) and bool(_NUMBER.fullmatch(value.strip()))
    )


def oolong(prediction: str, gold: Any) -> float:
    answer = prediction.rsplit(":", 1)[-1].translate(str.maketrans("", "", "*[]")).strip()
    if _is_number(gold):
        found = _NUMBER.search(answer)
        return 0.75 ** abs(float(found.group()) - float(gold)) if found else 0.0
    phrase = _normalize(str(gold))
    if phrase in COMPARISONS:
        return float(phrase in _normalize(prediction))
    return float(_normalize(answer) == phrase)


def canonical_pairs(pairs: Iterable[Iterable[Any]]) -> set[tuple[str, str]]:
    """Unordered pairs as sorted tuples of strings; a pair of one thing with itself is dropped."""
    canonical = set()
    for pair in pairs:
        a, b = (str(x).strip() for x in pair)
        if a != b:
            canonical.add((min(a, b), max(a, b)))
    return canonical


def pairs_f1(prediction: str, gold: Any) -> float:
    predicted = canonical_pairs(_PAIR.findall(prediction))
    expected = canonical_pairs(gold)
    if not predicted and not expected:
        return 1.0
    hits = len(predicted & expected)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(expected)
    return 2 * precision * recall / (precision + recall)


SCORERS: dict[str, Callable[[str, Any], float]] = {
    "exact": exact,
    "contains": contains,
    "oolong": oolong,
    "pairs_f1": pairs_f1,
}


def score(scorer: str, prediction: str | None, gold: Any) -> float:
    """The score of ``prediction`` (None: no answer, 0) under the named scorer."""
    if prediction is None:
        return 0.0
    return SCORERS[scorer](prediction, gold)
