"""``rlmbox view``: a trajectory as one self-contained HTML page (no network, no build step).

The page embeds the trajectory's events, grouped by ``model.build_view``, as JSON, and draws them with the
script in ``page.html``. Everything from the trajectory is untrusted (model replies, cell output, or a file
made by hand): the page only ever sets it as text, the embedded JSON is strict JSON that cannot close its
script element, the template is filled in one pass (no data can name a marker), and a
Content-Security-Policy forbids every fetch.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path

from rlmbox.untrusted import clean_text
from rlmbox.viewer.model import build_view, read_events

__all__ = ["render_page", "write_page"]

_MARKER = re.compile(r"__RLMBOX_(TITLE|DATA)__")
_TITLE_CHARS = 200  # the tab shows little; the header shows the whole run id
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def render_page(trajectory: Path) -> tuple[str, int]:
    """The page for a trajectory file, and how many of its lines could not be read."""
    events, skipped = read_events(trajectory)
    view = build_view(events)
    view["run"]["skipped_lines"] = skipped
    # Strict JSON (a NaN would stop the page's JSON.parse), and "<" as \u003c: no "</script>" (or "<!--")
    # inside the data can end the script element early.
    data = json.dumps(view, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    run_id = view["run"].get("run_id") or clean_text(trajectory.stem)
    title = html.escape(_CONTROL.sub(" ", f"rlmbox run {run_id}")[:_TITLE_CHARS])
    return _fill(_template(), {"TITLE": title, "DATA": data}), skipped


def _fill(template: str, values: dict[str, str]) -> str:
    """The template with each ``__RLMBOX_NAME__`` marker replaced, in one pass: a value is never searched
    for markers, so no data can move into another slot."""
    return _MARKER.sub(lambda match: values[match.group(1)], template)


def write_page(trajectory: Path, out: Path | None = None) -> tuple[Path, int]:
    """Write the page next to the trajectory (``run.jsonl`` -> ``run.html``) or to ``out``."""
    page, skipped = render_page(trajectory)
    target = out or trajectory.with_suffix(".html")
    target.write_text(page, encoding="utf-8")
    return target, skipped


def _template() -> str:
    return resources.files("rlmbox.viewer").joinpath("page.html").read_text(encoding="utf-8")
