"""Scoring a model's answer against a task's gold answer, each scorer a number in [0, 1].

- ``exact``: equal after normalisation (case, surrounding space, quotes, a final full stop).
- ``contains``: the normalised gold answer appears in the normalised prediction, as whole words.
- ``choice``: multiple choice; the last option letter (A-D) the prediction names is the gold letter.
- ``oolong``: as OOLONG scores. The prediction's text after its last ':' is taken and ``*[]`` stripped;
  a numeric gold answer scores 0.75 ** |gold - predicted| (digit groups such as "8,312" read as one
  number); a comparison phrase ("more common than", ...) scores when it is the only one in that text;
  anything else by exact match.
- ``pairs_f1``: F1 between the sets of unordered pairs in the prediction, written ``(a, b)`` or ``[a, b]``
  (optionally ``user a``), and the gold pairs; both empty scores 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["COMPARISONS", "SCORERS", "canonical_pairs", "score"]

COMPARISONS = ("more common than", "less common than", "same frequency as")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_DIGIT_GROUP = re.compile(r"(?<=\d),(?=\d{3}\b)")
_MEMBER = r"\s*(?:user\s*)?['\"]?([\w.-]+)['\"]?\s*"
_PAIR = re.compile(rf"[(\[]{_MEMBER},{_MEMBER}[)\]]", re.IGNORECASE)


def _normalize(text: str) -> str:
    text = " ".join(str(text).split()).casefold()
    return text.strip().strip("'\"`").strip().removesuffix(".").strip()


def exact(prediction: str, gold: Any) -> float:
    return float(_normalize(prediction) == _normalize(str(gold)))


def contains(prediction: str, gold: Any) -> float:
    """The gold answer as a whole word or phrase of the prediction ("no" is not in "not")."""
    wanted = _normalize(str(gold))
    if not wanted:
        return 0.0
    return float(re.search(rf"(?<!\w){re.escape(wanted)}(?!\w)", _normalize(prediction)) is not None)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) or (
        isinstance(value, str) and bool(_NUMBER.fullmatch(value.strip()))
    )


def oolong(prediction: str, gold: Any) -> float:
    answer = prediction.rsplit(":", 1)[-1].translate(str.maketrans("", "", "*[]")).strip()
    if _is_number(gold):
        # Digit groups ("8,312") are read as one number: counts over long contexts run into thousands.
        found = _NUMBER.search(_DIGIT_GROUP.sub("", answer))
        return 0.75 ** abs(float(found.group()) - float(gold)) if found else 0.0
    phrase = _normalize(str(gold))
    if phrase in COMPARISONS:
        given = [c for c in COMPARISONS if c in _normalize(answer)]
        return float(given == [phrase] and f"not {phrase}" not in _normalize(answer))
    return float(_normalize(answer) == phrase)


def choice(prediction: str, gold: Any) -> float:
    """Multiple choice: the last option letter the prediction names, alone or as "(B)", "B)" or "B."."""
    letters = re.findall(r"(?<![A-Za-z])([A-D])(?![A-Za-z])", prediction.rsplit("nswer", 1)[-1])
    return float(bool(letters) and letters[-1] == str(gold).strip().upper())


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
    "choice": choice,
    "oolong": oolong,
    "pairs_f1": pairs_f1,
}


def score(scorer: str, prediction: str | None, gold: Any) -> float:
    """The score of ``prediction`` (None: no answer, 0) under the named scorer."""
    if prediction is None:
        return 0.0
    return SCORERS[scorer](prediction, gold)
