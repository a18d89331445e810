"""Deterministic offline stand-ins for the models on the built-in suites: test doubles, NOT models.

They let CI run every suite end to end (real containers, litellm, sub-calls) with no network, and check
that generators, scorers, harness and runtime agree. Served through litellm's ``rlmbox-demo`` provider:

- ``rlmbox-demo/eval-root`` as the root model follows the strategies the paper observed. On a needle
  question it is the demo policy (inspect, chunk and ask with ``llm_query_batched``, verify). On a records
  question it chunks ``context`` by lines, has every chunk labelled with ``llm_query_batched``, keeps the
  labelled records in a REPL variable and answers with code over them. Asked directly (``base``: no system
  prompt, the context in the message) it answers from what it can see, so truncation degrades it.
- ``rlmbox-demo/eval-sub`` labels the records of a chunk by rule (``classify``), or finds a needle.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from typing import Any

from rlmbox.demo.policy import (
    DEMO_PROVIDER,
    NOT_FOUND,
    add_demo_policy,
    role_texts,
    root_policy,
    sub_policy,
)
from rlmbox.evals.suites.oolong import LABELS, parse_records

__all__ = [
    "EVAL_ROOT_MODEL",
    "EVAL_SUB_MODEL",
    "NOTICE",
    "answer_from_records",
    "eval_root_policy",
    "eval_sub_policy",
    "register_eval_policies",
]

NOTICE = "the rlmbox-demo models are scripted offline test doubles, not language models"
LABEL_INSTRUCTION = "Label every record below with its TREC coarse class; reply with a JSON list of"
RECORD_LINES_PER_CHUNK = 5_000
_QUERY = re.compile(r"^\s*Query:\s*(.+)$", re.MULTILINE)


def answer_from_records(query: str, records: list[tuple[str, str, str]], labels: tuple[str, ...]) -> str:
    """The answer to an oolong or oolong-pairs question from (day, user, label) records.

    Self-contained (its source is also sent into the REPL, where the policy's module does not exist).
    """
    import re
    from collections import Counter
    from itertools import combinations

    def quoted(text: str) -> list[str]:
        return re.findall(r"'(\w+)'", text)

    since = re.search(r"dated on or after (\d{4}-\d{2}-\d{2})", query)
    if query.startswith("List every unordered pair"):
        window = [r for r in records if since is None or r[0] >= since.group(1)]
        by_user: dict[str, set[str]] = {}
        for _, user, label in window:
            by_user.setdefault(user, set()).add(label)
        wanted = quoted(query.split(". Write", maxsplit=1)[0])
        first, second = (wanted[0], wanted[1]) if len(wanted) > 1 else (wanted[0], wanted[0])
        pairs = [
            (a, b)
            for a, b in combinations(sorted(by_user), 2)
            if (first in by_user[a] and second in by_user[b])
            or (second in by_user[a] and first in by_user[b])
        ]
        return ", ".join(f"({a}, {b})" for a, b in pairs) or "none"
    if since is not None:
        (label,) = quoted(query)
        return f"Answer: {sum(1 for day, _, lab in records if day >= since.group(1) and lab == label)}"
    user = re.match(r"For user (\d+)", query)
    subset = [r for r in records if user is None or r[1] == user.group(1)]
    counts = Counter(label for _, _, label in subset)
    for label in labels:
        counts.setdefault(label, 0)
    if query.startswith(("Which label", "For user")):
        pick = min if "least frequent" in query else max
        return f"Label: {pick(labels, key=lambda label: counts[label])}"
    if query.startswith("How many"):
        return f"Answer: {counts[quoted(query)[0]]}"
    first, second = quoted(query)[:2]
    a, b = counts[first], counts[second]
    relation = "more common than" if a > b else "less common than" if a < b else "same frequency as"
    return f"Answer: {first} is {relation} {second}"


def _records(text: str, *, strict: bool) -> list[tuple[str, str, str]]:
    return [(r.day, r.user, r.label) for r in parse_records(text, strict=strict)]


def label_records_code(query: str) -> str:
    """The one cell of a records question: label every chunk, keep the records, answer over them."""
    return f"""
import json
lines = context.splitlines()
step = {RECORD_LINES_PER_CHUNK}
chunks = ["\\n".join(lines[i:i + step]) for i in range(0, len(lines), step)]
answers = llm_query_batched([{LABEL_INSTRUCTION + " [date, user, label]."!r} + "\\n\\n" + c for c in chunks])
records = [tuple(record) for answer in answers for record in json.loads(answer)]
print(len(records), "records labelled in", len(chunks), "chunks")
{inspect.getsource(answer_from_records)}
answer = answer_from_records({query!r}, records, {LABELS!r})
FINAL_VAR("answer")
"""


def eval_root_policy(messages: Sequence[dict[str, Any]]) -> str:
    """The root model's reply; see the module docstring."""
    direct = not messages or messages[0].get("role") != "system"
    text = "\n".join(role_texts(messages, "user"))
    query_match = _QUERY.search(text)
    query = query_match.group(1).strip() if query_match else ""
    if "magic number" in query:
        if not direct:
            return root_policy(messages)
        found = sub_policy(text)
        return "not found" if found == NOT_FOUND else found
    if direct:
        return answer_from_records(query, _records(text, strict=False), LABELS)  # the cut line is no record
    cell = label_records_code(query)
    return f"I label the records chunk by chunk, then count in the REPL.\n\n```repl\n{cell}```"


def eval_sub_policy(messages: Sequence[dict[str, Any]]) -> str:
    """A sub-call: label a chunk's records by rule, or find a needle."""
    prompt = "\n".join(role_texts(messages, "user"))
    if prompt.startswith(LABEL_INSTRUCTION):
        return json.dumps(_records(prompt, strict=True))
    return sub_policy(prompt)


EVAL_ROOT_MODEL = f"{DEMO_PROVIDER}/eval-root"
EVAL_SUB_MODEL = f"{DEMO_PROVIDER}/eval-sub"


def register_eval_policies() -> None:
    """Serve the two policies as ``rlmbox-demo/eval-root`` and ``rlmbox-demo/eval-sub``."""
    add_demo_policy("eval-root", eval_root_policy)
    add_demo_policy("eval-sub", eval_sub_policy)
