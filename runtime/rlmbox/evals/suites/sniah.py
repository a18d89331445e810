"""``sniah``: RULER-style single needle in a haystack of generated prose, scored by exact match."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rlmbox.demo.haystack import make_haystack
from rlmbox.evals.suites.common import CHARS_PER_TOKEN, task_seed
from rlmbox.evals.tasks import Task

__all__ = ["find_magic_number", "sniah_tasks"]


def find_magic_number(text: str, key: str) -> str | None:
    """The number the document gives for ``key``, read from the text itself (not the generator's record)."""
    found = re.findall(rf"One of the special magic numbers for {re.escape(key)} is: (\d{{7}})\.", text)
    return found[0] if len(found) == 1 else None


def sniah_tasks(lengths: Sequence[int], n: int, seed: int) -> list[Task]:
    """``n`` tasks for each length (in tokens); same arguments, same tasks."""
    tasks = []
    for length in lengths:
        for index in range(n):
            haystack = make_haystack(length * CHARS_PER_TOKEN, seed=task_seed(seed, length, index))
            gold = find_magic_number(haystack.text, haystack.key)
            if gold is None:
                raise RuntimeError(f"sniah: the haystack for seed {seed} has no single needle for its key")
            tasks.append(
                Task(
                    id=f"sniah-{length}-{index}",
                    query=f"{haystack.query} Answer with the number only.",
                    context=haystack.text,
                    answer=gold,
                    scorer="exact",
                    suite="sniah",
                    length=length,
                )
            )
    return tasks
