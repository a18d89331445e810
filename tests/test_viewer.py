"""``rlmbox view``: grouping a trajectory, the page's safety, and the page itself in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlmbox import RLM, ConfigError
from rlmbox.viewer import render_page
from rlmbox.viewer.model import build_view, read_events

from support.containers import rlmbox_containers
from support.openai_server import ScriptedOpenAIServer
from support.scripted_run import repl, scripted_settings
from support.tree_script import TreeScript

ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"
HOSTILE = "</script><script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"


def write(path: Path, *events: dict) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


EVENTS = [
    {"event": "run_started", "run_id": "r1", "query": "q"},
    {"event": "node_started", "node": "1", "parent": None, "depth": 1, "model": "m"},
    {"event": "root_call", "node": "1", "iteration": 1, "reply": "look\n```repl\nx\n```",
     "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.5, "duration_s": 1.0},
    {"event": "sub_call", "node": "1", "iteration": 1, "cell": 1, "model": "s",
     "prompt": {"preview": "p", "chars": 1}, "response": {"preview": "a", "chars": 1},
     "prompt_tokens": 3, "completion_tokens": 2, "cost_usd": 0.25, "duration_s": 0.1},
    {"event": "node_started", "node": "1.1", "parent": "1", "depth": 2, "parent_iteration": 1,
     "parent_cell": 1, "query": {"preview": "child q", "chars": 7}},
    {"event": "node_finished", "node": "1.1", "status": "completed", "answer": {"preview": "42"}},
    {"event": "cell", "node": "1", "iteration": 1, "index": 1, "code": "x", "duration_s": 2.0,
     "stdout": {"preview": "out", "chars": 3000, "truncated": True}},
    {"event": "run_finished", "answer": "42", "status": "completed"},
]  # fmt: skip


def test_events_are_grouped_by_node_turn_and_cell(tmp_path):
    path = write(tmp_path / "t.jsonl", *EVENTS)
    with path.open("a") as handle:
        handle.write('{"event": "cell", "cut sho')  # a run killed mid-write
    events, skipped = read_events(path)
    view = build_view(events)
    assert skipped == 1
    assert [n["id"] for n in view["nodes"]] == ["1", "1.1"]
    (turn,) = view["nodes"][0]["turns"]
    (cell,) = turn["cells"]
    assert cell["children"] == ["1.1"] and len(cell["sub_calls"]) == 1
    assert cell["stdout"].startswith("out\n[... 2,997 more characters")
    assert (turn["tokens"], turn["cost_usd"], turn["seconds"]) == (20, 0.75, 3.0)
    assert view["nodes"][1]["query"] == "child q" and view["nodes"][1]["answer"] == "42"
    assert view["run"]["answer"] == "42"


def test_nothing_from_the_trajectory_can_end_the_pages_script(tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        {"event": "run_started", "run_id": "<b>r</b>", "query": HOSTILE},
        {"event": "run_finished", "answer": HOSTILE, "status": "completed"},
    )
    page, _ = render_page(path)
    data = page.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and json.loads(data)["run"]["answer"] == HOSTILE
    assert "<title>rlmbox run &lt;b&gt;r&lt;/b&gt;</title>" in page
    assert "default-src 'none'" in page  # the page may fetch nothing


def test_missing_or_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_events(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="holds no trajectory events"):
        read_events(write(tmp_path / "other.jsonl", {"not": "an event"}))
    process = subprocess.run(
        [sys.executable, "-m", "rlmbox.cli", "view", str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert process.returncode == 2 and "does not exist" in process.stderr


@pytest.mark.docker
def test_the_page_of_a_real_depth_two_run_in_headless_chromium(runtime_dir, tmp_path, chromium):
    from playwright.sync_api import expect, sync_playwright

    # A real run: a root that fans out 2,000 sub-calls and a child RLM, with hostile text in its output.
    script = TreeScript(
        {
            "top": [
                repl(f"print({HOSTILE!r})\nanswers = llm_query_batched([f'echo {{i}}' for i in range(2000)])",
                     "First, ask about every record."),
                repl("child = rlm_query('child: sum', context=[1, 2, 3])\nFINAL(f'total {child}')"),
            ],
            "child": [repl("FINAL(str(sum(context)))", "Summing.")],
        }
    )  # fmt: skip
    with ScriptedOpenAIServer(script) as server:
        settings = scripted_settings(
            server.url, runtime_dir, tmp_path, limits={"max_depth": 2, "max_sub_calls": 5000}
        )
        result = RLM(settings).run("ctx", "top: what is the total?")
    assert result.answer == "total 6" and rlmbox_containers(runtime_dir) == []
    page = tmp_path / "page.html"
    shown = subprocess.run(
        [sys.executable, "-m", "rlmbox.cli", "view", result.trajectory, "--out", str(page)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == str(page)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        try:
            view = browser.new_page(viewport={"width": 1280, "height": 900})
            view.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            view.on("pageerror", lambda e: problems.append(str(e)))
            view.on(
                "request",
                lambda r: problems.append(f"request {r.url}") if not r.url.startswith("file:") else None,
            )
            started = time.perf_counter()
            view.goto(page.as_uri())
            assert view.locator("#final-answer").inner_text().endswith("total 6")
            assert "null" not in view.locator("body").inner_text()
            loaded_s = time.perf_counter() - started
            view.screenshot(path=str(ARTIFACTS / "viewer-root.png"))
            # Open the cell's 2,000 sub-calls: the first 100 are drawn, more on request.
            group = view.locator("details.subcalls > summary").first
            assert "2,000 sub-calls" in group.inner_text()
            group.click()
            expect(view.locator("details.sub")).to_have_count(100)
            view.locator("details.sub > summary").first.click()
            expect(view.locator("details.sub").first).to_contain_text(
                re.compile(r"prompt\s*echo \d+\s*answer")
            )
            view.get_by_text("show 100 more of 1900").click()
            expect(view.locator("details.sub")).to_have_count(200)
            assert HOSTILE in view.locator("article[data-turn='1'] pre.output").first.inner_text()
            assert view.evaluate("window.__pwned") is None  # the hostile output stayed text
            view.screenshot(path=str(ARTIFACTS / "viewer-sub-calls.png"))
            # The call tree: the child's node, its turn and answer.
            view.locator("nav button[data-node='1.1']").click()
            expect(view.locator("#timeline h2")).to_contain_text("Node 1.1")
            assert "sum(context)" in view.locator("#timeline pre.code").first.inner_text()
            view.screenshot(path=str(ARTIFACTS / "viewer-child.png"))
        finally:
            browser.close()
    assert problems == []
    (ARTIFACTS / "viewer-timings.json").write_text(
        json.dumps({"sub_calls": result.sub_calls, "page_bytes": page.stat().st_size, "load_s": loaded_s})
    )


def test_a_note_without_a_turn_joins_the_last_turn(tmp_path):
    events, _ = read_events(
        write(
            tmp_path / "t.jsonl",
            {"event": "root_call", "iteration": 1, "reply": "a"},
            {"event": "root_call", "iteration": 2, "reply": "FINAL_VAR(x)"},
            {"event": "final_var", "variable": "x", "found": True},
        )
    )
    (node,) = build_view(events)["nodes"]
    assert [t["iteration"] for t in node["turns"]] == [1, 2]
    assert node["turns"][1]["notes"] == ["FINAL_VAR('x'): found"]


def test_a_resampled_reply_shows_with_the_first_in_a_note_and_both_calls_counted(tmp_path):
    events, _ = read_events(
        write(
            tmp_path / "t.jsonl",
            {"event": "root_call", "iteration": 2, "reply": "same", "prompt_tokens": 10, "duration_s": 1.0},
            {
                "event": "resample_call",
                "iteration": 2,
                "reply": "new",
                "prompt_tokens": 12,
                "duration_s": 2.0,
                "params": {"temperature": 0.7, "seed": 2},
            },
        )
    )
    ((turn,),) = [node["turns"] for node in build_view(events)["nodes"]]
    assert turn["reply"] == "new" and (turn["tokens"], turn["seconds"]) == (22, 3.0)
    assert turn["notes"] == [
        "the reply repeated an earlier one and was asked for again (seed 2, temperature 0.7): same"
    ]
