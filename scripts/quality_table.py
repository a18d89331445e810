"""The tables of docs/QUALITY.md from the folder scripts/quality.sh filled (make quality).

    python scripts/quality_table.py [OUT]        default OUT: quality-runs

OUT/MODEL/CONFIG/SUITE/results.jsonl, CONFIG being ``base`` or ``rlm-PROMPT``. Prints, per model, the mean
score per suite and length, the tokens and time per task, and what went wrong in the rlm runs that did not
score (read from their trajectories).
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

BLIND_PROMPT_CHARS = 400  # as runtime/rlmbox/node.py: an llm_query prompt this short carried no context


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def trajectory(result: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    """The run's events, from ``folder``'s trajectories/ (where the run wrote it or where a copy of the folder
    holds it); none when it is not there."""
    path = folder / "trajectories" / Path(result.get("trajectory") or "none").name
    return read_jsonl(path) if path.is_file() else []


def resamples(result: dict[str, Any]) -> int:
    """How many of the run's replies repeated an earlier one and were asked for again."""
    return sum(e["event"] == "resample_call" for e in trajectory(result, result["folder"]))


def failure(result: dict[str, Any], folder: Path) -> str:
    """Why an rlm run did not score, in a few words, from its result and its trajectory."""
    if result["status"] == "error":
        error = result.get("error") or ""
        if "same reply" in error:
            return "repeated the same reply three times"
        return f"error: {error.split(':')[0][:60]}"
    if result["status"] == "budget_exhausted":
        return "ran out of turns"
    events = trajectory(result, folder)
    prompts = [e["prompt"]["chars"] for e in events if e["event"] == "sub_call"]
    if not prompts:
        return "answered without asking the sub-model"
    if max(prompts) < BLIND_PROMPT_CHARS:
        return "asked the sub-model without the context"
    return "wrong answer after reading the context"


def cell(results: list[dict[str, Any]]) -> str:
    return f"{mean(r['score'] for r in results):.2f} ({len(results)})" if results else "-"


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "quality-runs")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(out.glob("*/*/*/results.jsonl")):
        model, config = path.parts[-4], path.parts[-3]
        runs[model][config].extend({**row, "folder": path.parent} for row in read_jsonl(path))
    for model, configs in runs.items():
        order = sorted(configs, key=lambda c: (c != "base", c))
        keys = sorted({(r["suite"], r["length"]) for rs in configs.values() for r in rs})
        print(f"### {model}\n")
        print("Mean score (tasks):\n")
        print("| suite | length (tokens) | " + " | ".join(order) + " |")
        print("|---|---:|" + "---:|" * len(order))
        for key in keys:
            suite, length = key
            row = [cell([r for r in configs[c] if (r["suite"], r["length"]) == key]) for c in order]
            print(f"| {suite} | {length:,} | " + " | ".join(row) + " |")
        for suite in sorted({suite for suite, _ in keys}):
            print(f"\n{suite}, per task, mean (tokens: prompt and completion of every call):\n")
            print("| | " + " | ".join(order) + " |")
            print("|---|" + "---:|" * len(order))
            for label, field, form in (
                ("tokens", "tokens", "{:,.0f}"),
                ("model calls (root turns)", "iterations", "{:.1f}"),
                ("sub-calls", "sub_calls", "{:.1f}"),
                ("replies asked for again", resamples, "{:.1f}"),
                ("seconds", "elapsed_s", "{:.0f}"),
            ):
                values = []
                for config in order:
                    rows = [r for r in configs[config] if r["suite"] == suite]
                    value = field if callable(field) else lambda r, f=field: r.get(f) or 0
                    values.append(form.format(mean(value(r) for r in rows)) if rows else "-")
                print(f"| {label} | " + " | ".join(values) + " |")
        for config in order:
            if config == "base":
                continue
            missed = Counter(failure(r, r["folder"]) for r in configs[config] if r["score"] < 1)
            if missed:
                print(f"\n{config}: the {sum(missed.values())} runs that did not score:\n")
                for reason, count in missed.most_common():
                    print(f"- {reason}: {count}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
