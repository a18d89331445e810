"""``rlmbox view``: a trajectory as one self-contained HTML page (no network, no build step).

The page embeds the trajectory's events, grouped by ``model.build_view``, as JSON, and draws them with the
script in ``page.html``. Everything from the trajectory is untrusted (model replies, cell output): the page
only ever sets it as text, the embedded JSON cannot close its script element, and a Content-Security-Policy
forbids every fetch.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

from rlmbox.viewer.model import build_view, read_events

__all__ = ["render_page", "write_page"]


def render_page(trajectory: Path) -> tuple[str, int]:
    """The page for a trajectory file, and how many of its lines could not be read."""
    events, skipped = read_events(trajectory)
    view = build_view(events)
    view["run"]["skipped_lines"] = skipped
    # "<" as \u003c: no "</script>" (or "<!--") inside the data can end the script element early.
    data = json.dumps(view, ensure_ascii=False, default=str).replace("<", "\\u003c")
    template = resources.files("rlmbox.viewer").joinpath("page.html").read_text(encoding="utf-8")
    title = html.escape(f"rlmbox run {view['run'].get('run_id') or trajectory.stem}")
    return template.replace("__RLMBOX_TITLE__", title).replace("__RLMBOX_DATA__", data), skipped


def write_page(trajectory: Path, out: Path | None = None) -> tuple[Path, int]:
    """Write the page next to the trajectory (``run.jsonl`` -> ``run.html``) or to ``out``."""
    page, skipped = render_page(trajectory)
    target = out or trajectory.with_suffix(".html")
    target.write_text(page, encoding="utf-8")
    return target, skipped
