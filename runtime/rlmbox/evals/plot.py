"""The score of each method against context length, as a PNG (the shape of the paper's Figure 1)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlmbox.evals.runner import SummaryRow

__all__ = ["plot_scores"]


def plot_scores(rows: Sequence[SummaryRow], path: Path, title: str) -> bool:
    """Draw one line per method, score against length on a log axis; False when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    except ImportError:
        return False
    figure = Figure(figsize=(6.4, 4.0), layout="tight")
    axes = figure.subplots()
    for method in sorted({row.method for row in rows}):
        points = sorted((row.length, row.score) for row in rows if row.method == method and row.length)
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    axes.set_xscale("log")
    axes.set_xlabel("context length (tokens)")
    axes.set_ylabel("score")
    axes.set_ylim(-0.03, 1.03)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(title)
    figure.savefig(path, dpi=120)
    return True
