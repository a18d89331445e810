"""Built-in suites, generated offline and deterministically from a seed: ``SUITES[name](lengths, n, seed)``.

Lengths are in tokens, at about four characters a token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rlmbox.evals.suites.common import CHARS_PER_TOKEN
from rlmbox.evals.suites.oolong import oolong_pairs_tasks, oolong_tasks
from rlmbox.evals.suites.sniah import sniah_tasks
from rlmbox.evals.tasks import Task

__all__ = ["CHARS_PER_TOKEN", "SUITES"]


SUITES: dict[str, Callable[[Sequence[int], int, int], list[Task]]] = {
    "sniah": sniah_tasks,
    "oolong": oolong_tasks,
    "oolong-pairs": oolong_pairs_tasks,
}
