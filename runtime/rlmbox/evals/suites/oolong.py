"""``oolong`` and ``oolong-pairs``: aggregation over records whose labels must be inferred.

The context is one record a line, ``Date: 2023-04-11 || User: 48213 || Instance: Where is the quiet
harbor?``. Each instance is a question of one of the six TREC coarse classes (abbreviation, description,
entity, human, location, numeric), written from templates of that class; the label is never in the text.
Each user writes questions of a few classes only, within a date range of their own, so questions about
users and dates have selective answers.

Gold answers come from ``parse_records`` and ``classify``, which read the context as a solver would, not
from the generator's own record of what it wrote (a test checks the two agree).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import combinations

from rlmbox.evals.suites.common import CHARS_PER_TOKEN, task_seed
from rlmbox.evals.tasks import Task

__all__ = [
    "LABELS",
    "Record",
    "classify",
    "generate_records",
    "oolong_pairs_tasks",
    "oolong_tasks",
    "parse_records",
]

LABELS = ("abbreviation", "description", "entity", "human", "location", "numeric")

_WORDS = {
    "abbr": (
        "NASA",
        "UNESCO",
        "CPU",
        "DNA",
        "FIFA",
        "RADAR",
        "SCUBA",
        "LASER",
        "OPEC",
        "HTML",
        "NATO",
        "UFO",
    ),
    "long": (
        "the World Health Organization",
        "the European Union",
        "random access memory",
        "the United Nations",
    ),
    "thing": ("tide", "volcano", "rainbow", "compass", "bridge", "glacier", "engine", "kettle", "magnet"),
    "verb": ("freeze", "glow", "rust", "float", "shrink", "echo", "erupt", "spin", "fade"),
    "adj": ("quiet", "ancient", "golden", "narrow", "hidden", "famous", "tallest", "oldest", "largest"),
    "animal": ("falcon", "otter", "tortoise", "heron", "lynx", "salmon", "beetle", "badger"),
    "food": ("cheese", "bread", "spice", "fruit", "soup", "pastry", "grain", "sauce"),
    "job": ("painter", "sailor", "engineer", "poet", "architect", "inventor", "composer", "explorer"),
    "deed": ("painted", "designed", "discovered", "founded", "invented", "wrote", "built", "named"),
    "place": ("harbor", "canal", "tower", "market", "library", "lighthouse", "monastery", "observatory"),
}
# Each class's templates; every slot is a key of _WORDS.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "abbreviation": ("What does {abbr} stand for?", "What is the full form of {abbr}?",
                     "What is the abbreviation for {long}?"),
    "description": ("Why does a {thing} {verb}?", "How does a {thing} work?", "Describe the {adj} {thing}."),
    "entity": ("What kind of {animal} is {adj}?", "Name a {food} that is {adj}.",
               "What animal is the {adj} {animal}?"),
    "human": ("Who {deed} the {adj} {place}?", "Which person {deed} the {thing}?",
              "Name the {job} who {deed} the {place}."),
    "location": ("Where is the {adj} {place}?", "In which city is the {adj} {place}?",
                 "What country has the {adj} {place}?"),
    "numeric": ("How many {animal}s live near the {place}?", "When was the {adj} {place} {deed}?",
                "How much does a {adj} {food} cost?"),
}  # fmt: skip
# The classifier: a pattern per class, matched against an instance (independent of the templates above).
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (label, re.compile(pattern))
    for label, pattern in (
        ("abbreviation", r"^What (does \S+ stand for|is the full form of|is the abbreviation for)\b"),
        ("description", r"^(Why does|How does .* work\?$|Describe )"),
        ("entity", r"^(What kind of|Name a |What animal is)\b"),
        ("human", r"^(Who |Which person |Name the \w+ who )"),
        ("location", r"^(Where is|In which city|What country)\b"),
        ("numeric", r"^(How many|When was|How much)\b"),
    )
)
_LINE = re.compile(r"^Date: (\d{4}-\d{2}-\d{2}) \|\| User: (\d+) \|\| Instance: (.+)$")
_FIRST_DAY = date(2022, 1, 1)
_DAYS = 730
_USERS = 40
_LINE_OVERHEAD = 46  # a record line's characters beyond its instance: date, user, separators, newline


@dataclass(frozen=True)
class Record:
    day: str
    user: str
    label: str
    instance: str = ""


def classify(instance: str) -> str:
    """The TREC coarse class of one instance, by the pattern of its question."""
    for label, pattern in _PATTERNS:
        if pattern.search(instance):
            return label
    raise ValueError(f"no class matches {instance!r}")


def parse_records(context: str, *, strict: bool = True) -> list[Record]:
    """Every record of a context, with its label inferred from its instance. With ``strict`` False, a
    record whose instance no class matches (a line cut short) is skipped instead of raising."""
    records = []
    for line in context.splitlines():
        match = _LINE.match(line)
        if match:
            day, user, instance = match.groups()
            try:
                records.append(Record(day, user, classify(instance)))
            except ValueError:
                if strict:
                    raise
    return records


def generate_records(n_chars: int, rng: random.Random) -> tuple[str, list[Record]]:
    """A context of about ``n_chars`` characters and the generator's own record of it."""
    users = [str(u) for u in rng.sample(range(10_000, 100_000), _USERS)]
    profiles = {}
    for user in users:
        start = rng.randrange(_DAYS - 60)
        profiles[user] = (rng.sample(LABELS, rng.randint(1, 3)), start, rng.randrange(start + 60, _DAYS))
    weights = [rng.uniform(0.2, 3.0) for _ in users]

    def record(user: str, label: str) -> Record:
        _, first, last = profiles[user]
        slots = {name: rng.choice(words) for name, words in _WORDS.items()}
        day = (_FIRST_DAY + timedelta(days=rng.randint(first, last))).isoformat()
        return Record(day, user, label, rng.choice(_TEMPLATES[label]).format(**slots))

    # Half the users also wrote one or two questions of a class outside their usual ones, somewhere:
    # only a reader of the whole context knows every user's classes.
    rare: list[Record] = []
    for user in users:
        others = [label for label in LABELS if label not in profiles[user][0]]
        if others and rng.random() < 0.5:
            label = rng.choice(others)
            rare += [record(user, label) for _ in range(rng.randint(1, 2))]
    records: list[Record] = []
    size = sum(len(r.instance) + _LINE_OVERHEAD for r in rare)
    while size < n_chars or not records:
        user = rng.choices(users, weights)[0]
        records.append(record(user, rng.choice(profiles[user][0])))
        size += len(records[-1].instance) + _LINE_OVERHEAD
    for extra in rare:
        records.insert(rng.randrange(len(records) + 1), extra)
    lines = [f"Date: {r.day} || User: {r.user} || Instance: {r.instance}" for r in records]
    return "\n".join(lines), records


# -- oolong: counting questions ------------------------------------------------------------------------

Question = tuple[str, object]  # (query, gold answer); None when the question has no single answer


def _counts(records: Sequence[Record]) -> Counter[str]:
    return Counter(r.label for r in records)


def _extreme(counts: Counter[str], most: bool) -> str | None:
    present = {label: counts.get(label, 0) for label in LABELS}
    best = (max if most else min)(present.values())
    winners = [label for label, count in present.items() if count == best]
    return winners[0] if len(winners) == 1 else None


def _ask_extreme(records: Sequence[Record], rng: random.Random) -> Question:
    most = rng.random() < 0.5
    word = "most" if most else "least"
    return (f"Which label is the {word} frequent among all instances? Answer as 'Label: <label>'.",
            _extreme(_counts(records), most))  # fmt: skip


def _ask_count(records: Sequence[Record], rng: random.Random) -> Question:
    label = rng.choice(LABELS)
    return f"How many instances have the label '{label}'? Answer as 'Answer: <number>'.", _counts(records)[
        label
    ]


def _ask_compare(records: Sequence[Record], rng: random.Random) -> Question:
    first, second = rng.sample(LABELS, 2)
    counts = _counts(records)
    a, b = counts[first], counts[second]
    relation = "more common than" if a > b else "less common than" if a < b else "same frequency as"
    query = (f"Is the label '{first}' more common than, less common than, or the same frequency as the label "
             f"'{second}'? Answer as 'Answer: {first} is [relation] {second}'.")  # fmt: skip
    return query, relation


def _ask_user(records: Sequence[Record], rng: random.Random) -> Question:
    user = rng.choice(sorted({r.user for r in records}))
    mine = [r for r in records if r.user == user]
    return (f"For user {user}, which label is the most frequent among their instances? "
            "Answer as 'Label: <label>'.", _extreme(_counts(mine), most=True))  # fmt: skip


def _ask_since(records: Sequence[Record], rng: random.Random) -> Question:
    label = rng.choice(LABELS)
    since = sorted(r.day for r in records)[len(records) // 2]
    count = sum(1 for r in records if r.day >= since and r.label == label)
    return (f"How many instances dated on or after {since} have the label '{label}'? "
            "Answer as 'Answer: <number>'.", count)  # fmt: skip


_KINDS: tuple[Callable[[Sequence[Record], random.Random], Question], ...] = (
    _ask_extreme, _ask_count, _ask_compare, _ask_user, _ask_since,
)  # fmt: skip


def _contexts(lengths: Sequence[int], n: int, seed: int):
    for length in lengths:
        for index in range(n):
            rng = random.Random(task_seed(seed, length, index))
            context, _ = generate_records(length * CHARS_PER_TOKEN, rng)
            yield length, index, rng, context


def oolong_tasks(lengths: Sequence[int], n: int, seed: int) -> list[Task]:
    """``n`` counting questions for each length (in tokens), cycling through the question kinds."""
    tasks = []
    for length, index, rng, context in _contexts(lengths, n, seed):
        records = parse_records(context)
        for attempt in range(100):  # a tie: ask the same kind about something else, then another kind
            query, gold = _KINDS[(index + attempt // 20) % len(_KINDS)](records, rng)
            if gold is not None:
                break
        else:
            raise RuntimeError(f"oolong: no question with a single answer for seed {seed}")
        tasks.append(Task(id=f"oolong-{length}-{index}", query=query, context=context, answer=gold,
                          scorer="oolong", suite="oolong", length=length))  # fmt: skip
    return tasks


# -- oolong-pairs: pairs of users ----------------------------------------------------------------------


def _labels_by_user(records: Sequence[Record], since: str | None) -> dict[str, set[str]]:
    by_user: dict[str, set[str]] = {}
    for record in records:
        if since is None or record.day >= since:
            by_user.setdefault(record.user, set()).add(record.label)
    return by_user


def _qualifies(a: set[str], b: set[str], first: str, second: str | None) -> bool:
    """Whether two users' labels meet the condition: both have ``first`` (``second`` None), or one has
    ``first`` and the other ``second``."""
    if second is None:
        return first in a and first in b
    return (first in a and second in b) or (second in a and first in b)


def oolong_pairs_tasks(lengths: Sequence[int], n: int, seed: int) -> list[Task]:
    """``n`` pair-listing questions for each length: symmetric and asymmetric predicates, some dated."""
    tasks = []
    for length, index, rng, context in _contexts(lengths, n, seed):
        records = parse_records(context)
        since = sorted(r.day for r in records)[len(records) // 2] if index % 2 else None
        by_user = _labels_by_user(records, since)
        first, second = rng.sample(LABELS, 2)
        symmetric = index % 4 < 2
        if symmetric:
            condition = f"both users have at least one instance with the label '{first}'"
        else:
            condition = (
                f"one user has an instance with the label '{first}' and the other has an instance "
                f"with the label '{second}'"
            )
        window = f", counting only instances dated on or after {since}" if since else ""
        wanted = (first, None if symmetric else second)
        gold = sorted(
            [a, b] for a, b in combinations(sorted(by_user), 2) if _qualifies(by_user[a], by_user[b], *wanted)
        )
        query = (
            f"List every unordered pair of user IDs such that {condition}{window}. Write each pair once, as "
            "(user_a, user_b), all on one line; write 'none' if there is no such pair."
        )
        tasks.append(
            Task(id=f"oolong-pairs-{length}-{index}", query=query, context=context, answer=gold,
                 scorer="pairs_f1", suite="oolong-pairs", length=length)
        )  # fmt: skip
    return tasks
