"""A deterministic needle-in-a-haystack document, in the style of RULER's single-needle tasks.

Filler prose is built from generated sentences; exactly one needle sentence holds the answer for the
asked key, and a few decoy needles hold numbers for other keys.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Haystack", "make_haystack", "needle_sentence"]

_ADJECTIVES = (
    "amber", "ancient", "bitter", "brave", "bright", "calm", "clever", "cold", "crimson", "curious",
    "distant", "dusty", "eager", "early", "faint", "fierce", "gentle", "golden", "hidden", "hollow",
    "humble", "icy", "lively", "lonely", "lucky", "misty", "narrow", "noisy", "pale", "patient",
    "proud", "quiet", "rapid", "restless", "rough", "rusty", "silent", "silver", "sleepy", "steady",
    "stormy", "sudden", "tidy", "velvet", "wandering", "warm", "weary", "wild", "wise", "young",
)  # fmt: skip
_NOUNS = (
    "harbor", "meadow", "river", "lantern", "orchard", "falcon", "library", "valley", "compass",
    "garden", "bridge", "archive", "forest", "island", "kettle", "mountain", "village", "market",
    "window", "engine", "painter", "sailor", "teacher", "farmer", "merchant", "traveler", "baker",
    "clock", "letter", "map", "ship", "tower", "road", "candle", "mirror", "field", "cellar", "chapel",
    "workshop", "station", "canal", "quarry", "beacon", "harvest", "journal", "ledger", "meadowlark",
)  # fmt: skip
_VERBS = (
    "watched", "remembered", "repaired", "described", "followed", "ignored", "painted", "measured",
    "visited", "studied", "crossed", "guarded", "admired", "questioned", "carried", "noticed",
    "mended", "counted", "recorded", "praised", "sketched", "explored", "cleaned", "opened",
)  # fmt: skip
_PLACES = (
    "near the old mill", "before the first frost", "after the long rain", "across the northern hills",
    "beside the quiet canal", "during the autumn fair", "under a grey sky", "at the edge of town",
    "throughout the winter", "along the coastal road", "behind the stone wall", "on most evenings",
    "in the early morning", "while the bells rang", "without much hurry", "as the tide turned",
)  # fmt: skip
_OPENERS = (
    "In those years", "Some people say", "According to the old records", "Every season", "Long ago",
    "By all accounts", "As it happened", "For a while", "Later that week", "Now and then",
)  # fmt: skip
_TEMPLATES = (
    "The {a1} {n1} {v} the {a2} {n2} {p}.",
    "{o}, the {n1} {v} a {a2} {n2} {p}.",
    "Nobody expected that the {a1} {n1} would be {v} by a {n2} {p}.",
    "{o}, a {a1} {n1} and a {a2} {n2} were {v} together {p}.",
    "The story of the {n1} is {a1}, and it was {v} {p} by a {a2} {n2}.",
    "It is said that every {n1} in the {a1} {n2} was {v} {p}.",
)
_POOL_SIZE = 3000
_DECOYS = 4


@dataclass(frozen=True)
class Haystack:
    """A generated document and the question about it."""

    text: str
    key: str
    answer: str
    """The 7-digit magic number for ``key``."""
    query: str


def needle_sentence(key: str, number: str) -> str:
    """The sentence that carries a magic number."""
    return f"One of the special magic numbers for {key} is: {number}."


def _sentence(rng: random.Random) -> str:
    n1, n2 = rng.sample(_NOUNS, 2)
    return rng.choice(_TEMPLATES).format(
        a1=rng.choice(_ADJECTIVES),
        a2=rng.choice(_ADJECTIVES),
        n1=n1,
        n2=n2,
        v=rng.choice(_VERBS),
        p=rng.choice(_PLACES),
        o=rng.choice(_OPENERS),
    )


def _keys(rng: random.Random, count: int) -> list[str]:
    keys: list[str] = []
    while len(keys) < count:
        key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        if key not in keys:
            keys.append(key)
    return keys


def _numbers(rng: random.Random, count: int) -> list[str]:
    return [str(n) for n in rng.sample(range(1_000_000, 10_000_000), count)]


def make_haystack(n_chars: int, seed: int = 0) -> Haystack:
    """A document of about ``n_chars`` characters (never much shorter) hiding one needle.

    Same ``n_chars`` and ``seed``, same document. The needle sits at a seed-dependent depth; decoy
    needles for other keys are spread elsewhere.
    """
    if n_chars < 0:
        raise ValueError(f"n_chars must not be negative, got {n_chars}")
    rng = random.Random(seed)
    key, *decoy_keys = _keys(rng, 1 + _DECOYS)
    answer, *decoy_numbers = _numbers(rng, 1 + _DECOYS)
    needles = [needle_sentence(key, answer)]
    needles += [needle_sentence(k, n) for k, n in zip(decoy_keys, decoy_numbers, strict=True)]

    pool = [_sentence(rng) for _ in range(_POOL_SIZE)]
    # Each sentence costs its length plus a separator; a paragraph break (about every 5.5) one more.
    average = sum(len(s) + 1 for s in pool) / len(pool) + 1 / 5.5
    needle_chars = sum(len(s) + 1 for s in needles)
    count = max(len(needles), int(max(0, n_chars - needle_chars) / average) + 1)
    sentences = rng.choices(pool, k=count)

    # Insert from the deepest position down so earlier positions stay valid.
    depths = [rng.uniform(0.05, 0.95) for _ in needles]
    for depth, needle in sorted(zip(depths, needles, strict=True), reverse=True):
        sentences.insert(round(depth * len(sentences)), needle)

    paragraphs: list[str] = []
    sizes = rng.choices(range(3, 9), k=len(sentences) // 3 + 1)
    start = 0
    for size in sizes:
        if start >= len(sentences):
            break
        paragraphs.append(" ".join(sentences[start : start + size]))
        start += size
    query = f"What is the special magic number for {key} mentioned in the document?"
    return Haystack(text="\n\n".join(paragraphs), key=key, answer=answer, query=query)
