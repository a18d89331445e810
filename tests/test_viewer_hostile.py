"""``rlmbox view`` on trajectories nobody should write: NaN, lone surrogates, wrong types, the page's own
markers, deep nesting, pathological code. A trajectory holds model and cell output, and a file can be made by
hand, so the viewer must render every one: the CLI exits 0, the embedded data is strict JSON of the shape the
page reads, and the page loads in headless Chromium with no console error."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from rlmbox.viewer.model import MAX_NESTING, build_view, read_events

RLMBOX = Path(sys.executable).with_name("rlmbox")  # the installed command, as a user runs it
HOSTILE = "</script><script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"
ANSWER = "the final answer"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def view_cli(trajectory: Path) -> tuple[Path, dict[str, Any]]:
    """Run ``rlmbox view TRAJECTORY --out PAGE``; the page and its embedded data, read as strict JSON."""
    page = trajectory.with_suffix(".html")
    shown = subprocess.run(
        [str(RLMBOX), "view", str(trajectory), "--out", str(page)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == str(page)
    return page, embedded_data(page.read_text(encoding="utf-8"))


def embedded_data(page: str) -> dict[str, Any]:
    data = page.split('<script id="trajectory" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data
    return json.loads(data, parse_constant=_reject)


def _reject(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


# -- the shape of a view: what the page's script relies on --------------------------------------------------


def is_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return value is None or isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


RUN_TEXTS = ("run_id", "query", "status", "answer", "error")
RUN_NUMBERS = ("iterations", "sub_calls", "cost_usd", "elapsed_s", "tokens")
NODE_TEXTS = ("parent", "model", "query", "answer", "error")
TURN_NUMBERS = ("iteration", "tokens", "cost_usd", "seconds", "sub_call_count")
CELL_TEXTS = ("code", "stdout", "stderr", "result", "error", "final")
SUB_CALL_TEXTS = ("model", "prompt", "response", "error")


def assert_view_shape(view: dict[str, Any]) -> None:
    """Every field the page reads has the type it expects (missing fields read as undefined: fine)."""
    run = view["run"]
    assert isinstance(run["status"], str) and isinstance(run.get("cost_known", True), bool)
    assert all(is_text(run.get(k)) for k in RUN_TEXTS) and all(is_number(run.get(k)) for k in RUN_NUMBERS)
    ids = [node["id"] for node in view["nodes"]]
    assert len(ids) == len(set(ids))
    for node in view["nodes"]:
        assert isinstance(node["id"], str) and isinstance(node["status"], str)
        assert isinstance(node["level"], int) and is_number(node["depth"])
        assert all(is_text(node.get(k)) for k in NODE_TEXTS)
        for turn in node["turns"]:
            assert isinstance(turn["iteration"], int) and is_text(turn.get("reply"))
            assert all(is_number(turn[k]) for k in TURN_NUMBERS)
            assert all(isinstance(note, str) for note in turn["notes"])
            for cell in turn["cells"]:
                assert isinstance(cell["index"], int) and is_number(cell.get("duration_s"))
                assert all(is_text(cell.get(k)) for k in CELL_TEXTS)
                assert all(isinstance(child, str) for child in cell["children"])
                for call in cell["sub_calls"]:
                    assert all(is_text(call[k]) for k in SUB_CALL_TEXTS)
                    assert all(is_number(call[k]) for k in ("tokens", "cost_usd", "duration_s"))


# -- hostile trajectories -----------------------------------------------------------------------------------

BASE_EVENTS = [
    {"event": "run_started", "run_id": "r1", "query": "q", "context": {"preview": "c", "chars": 1}},
    {"event": "node_started", "node": "1", "parent": None, "depth": 1, "model": "m",
     "query": {"preview": "q", "chars": 1}, "limits": {"max_depth": 1}},
    {"event": "system_prompt", "node": "1", "text": "be brief"},
    {"event": "root_call", "node": "1", "iteration": 1, "reply": "look\n```repl\nx = 1\n```",
     "model": "m", "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.5, "duration_s": 1.0},
    {"event": "cell", "node": "1", "iteration": 1, "index": 1, "code": "x = 1", "duration_s": 2.0,
     "stdout": {"preview": "out", "chars": 3000, "truncated": True}, "stderr": {"preview": ""},
     "result": "1", "error": {"ename": "ValueError", "evalue": "bad"}, "final": None, "timed_out": False},
    {"event": "sub_call", "node": "1", "iteration": 1, "cell": 1, "model": "s",
     "prompt": {"preview": "p", "chars": 1}, "response": {"preview": "a", "chars": 1}, "error": None,
     "prompt_tokens": 3, "completion_tokens": 2, "cost_usd": 0.25, "duration_s": 0.1},
    {"event": "node_started", "node": "1.1", "parent": "1", "depth": 2, "parent_iteration": 1,
     "parent_cell": 1, "query": {"preview": "child q", "chars": 7}},
    {"event": "node_finished", "node": "1.1", "status": "completed", "answer": {"preview": "42"},
     "iterations": 1, "sub_calls": 0, "tokens": 7, "elapsed_s": 0.5, "error": None},
    {"event": "kernel_died", "node": "1", "iteration": 1, "reason": "oom"},
    {"event": "final_var", "node": "1", "iteration": 1, "variable": "x", "found": True},
    {"event": "run_interrupted", "iterations": 1, "sub_calls": 1},
    {"event": "run_finished", "answer": "42", "status": "completed", "iterations": 1, "sub_calls": 1,
     "cost_usd": 0.75, "elapsed_s": 3.0, "error": None,
     "usage": {"m": {"prompt_tokens": 10, "completion_tokens": 5, "cost_known": False}}},
]  # fmt: skip

DEEP = json.loads("[" * 200 + "]" * 200)  # deeper than MAX_NESTING, shallower than the JSON parser's limit
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 5, 2.5, 1e308, -1e308, 10**30, float("nan"), float("inf"), float("-inf"),
    "", "x", "1.1", "²", "__proto__", HOSTILE, "__RLMBOX_DATA__", "__RLMBOX_TITLE__", "</script><!--",
    "\x00\x01\x1b[31m\x7f\x85\u2028\u2029\ufeff", "\ud800", "a\udfffb", "\U0001f600",
    [], {}, [["nested", ["lists"]]], ["1", "2"], {"preview": 5, "chars": "many", "truncated": True},
    {"preview": HOSTILE, "chars": -1e308, "truncated": True}, {"ename": [], "evalue": {"a": None}}, DEEP,
]  # fmt: skip
ODD_LINES = [
    "5", '"text"', "[]", "null", "true", "{}", '{"event": 5}', '{"event": null}', '{"event": "unknown"}',
    '{"event": "cell"', "not json", '{"event": "cell", "duration_s": ' + "9" * 5000 + "}",
    '{"event": "cell", "code": "' + "\\ud800" * 3 + '", "iteration": 1e999}', "[" * 100_000 + "]" * 100_000,
    '{"event": "root_call", "iteration": -1e999, "cost_usd": NaN, "duration_s": -Infinity}',
]  # fmt: skip


def fuzzed_lines() -> Iterator[str]:
    """Every base event with each field (and one field more) set to each hostile value, then odd lines,
    then a run_finished with ANSWER. Deterministic: the same lines every run."""
    for event, value in itertools.product(BASE_EVENTS, HOSTILE_VALUES):
        for field in [*(k for k in event if k != "event"), "extra"]:
            yield json.dumps({**event, field: value})
    yield from ODD_LINES
    yield json.dumps({**BASE_EVENTS[-1], "answer": ANSWER})


def hostile_trajectory(path: Path) -> Path:
    return write_lines(path, *fuzzed_lines())


# -- reading and the model ----------------------------------------------------------------------------------


@pytest.mark.attack("viewer")
def test_nan_and_infinity_are_embedded_as_null(tmp_path, observe):
    """NaN and the infinities (which Python's json writes but no JSON parser reads) become null."""
    path = write_lines(
        tmp_path / "nan.jsonl",
        '{"event": "run_started", "run_id": "r", "query": "q", "time": NaN}',
        '{"event": "root_call", "node": "1", "iteration": 1, "reply": "r", "cost_usd": NaN, '
        '"duration_s": Infinity, "prompt_tokens": -Infinity, "completion_tokens": 1e999}',
        '{"event": "run_finished", "answer": "42", "status": "completed", "cost_usd": NaN, '
        '"elapsed_s": Infinity, "usage": {"m": {"prompt_tokens": NaN, "completion_tokens": 3}}}',
    )
    _, data = view_cli(path)
    assert (data["run"]["answer"], data["run"]["cost_usd"], data["run"]["elapsed_s"]) == ("42", None, None)
    (turn,) = data["nodes"][0]["turns"]
    assert (turn["cost_usd"], turn["seconds"], turn["tokens"], data["run"]["tokens"]) == (None, 0, 0, 3)
    assert_view_shape(data)
    observe("a trajectory with NaN and infinities (before: a blank page)", "embedded as null")


@pytest.mark.attack("viewer")
def test_invalid_unicode_is_replaced_when_read(tmp_path, observe):
    """Lone surrogates (escaped, so valid JSON) and bytes that are not UTF-8 become U+FFFD, in keys too."""
    path = tmp_path / "surrogates.jsonl"
    path.write_bytes(
        b'{"event": "run_started", "run_id": "r\\ud800", "query": "\\udfff\\ud83d\\ude00", "\\udc00": 1}\n'
        b'{"event": "cell", "node": "1", "iteration": 1, "index": 1, "code": "x = \'\xff\xfe\'"}\n'
        b'{"event": "run_finished", "answer": "a\\ud800b", "status": "completed"}\n'
    )
    page, data = view_cli(path)
    assert data["run"]["answer"] == "a\ufffdb" and data["run"]["query"] == "\ufffd\U0001f600"
    assert data["nodes"][0]["turns"][0]["cells"][0]["code"] == "x = '\ufffd\ufffd'"
    assert "<title>rlmbox run r\ufffd</title>" in page.read_text(encoding="utf-8")
    observe(
        "invalid UTF-8 and an escaped lone surrogate in a trajectory (before: rlmbox view crashed)",
        "replaced by U+FFFD",
    )


def test_fields_of_the_wrong_type_are_read_as_the_page_needs_them(tmp_path):
    """Wrong types, missing fields and lines that are not events: the CLI exits 0 and the view keeps its
    shape (texts are strings, counts finite numbers)."""
    path = write_lines(
        tmp_path / "types.jsonl",
        "[1, 2]",
        '"just a string"',
        json.dumps({"event": "run_started", "run_id": ["a", "b"], "query": {"q": 1}}),
        json.dumps({"event": "root_call", "node": 5, "turn": "x", "iteration": "1", "reply": [["r"]]}),
        json.dumps({"event": "cell", "node": 5, "iteration": [1], "index": {}, "code": ["x"], "error": "e"}),
        json.dumps(
            {"event": "sub_call", "node": 5, "prompt_tokens": "3", "completion_tokens": [], "cell": 1.5}
        ),
        json.dumps(
            {"event": "node_started", "node": None, "parent": 7, "parent_iteration": [], "depth": "2"}
        ),
        json.dumps({"event": "node_finished", "node": "1", "turns": 5, "id": [], "status": 3, "answer": 4}),
        json.dumps({"event": "final_var"}),
        json.dumps({"event": "run_finished", "answer": ANSWER, "usage": [], "iterations": "many"}),
    )
    _, data = view_cli(path)
    assert_view_shape(data)
    assert data["run"]["run_id"] == '["a", "b"]' and data["run"]["skipped_lines"] == 2
    nodes = {node["id"]: node for node in data["nodes"]}
    assert [(node["id"], node["level"]) for node in data["nodes"]] == [("5", 0), ("7", 0), ("1", 1)]
    (turn,) = nodes["5"]["turns"]
    assert turn["reply"] == '[["r"]]' and [c["code"] for c in turn["cells"]] == ['["x"]']
    assert turn["cells"][0]["error"] == "e" and turn["cells"][0]["sub_calls"][0]["tokens"] == 0
    assert (nodes["1"]["status"], nodes["1"]["answer"], nodes["1"]["parent"]) == ("3", "4", "7")


@pytest.mark.attack("viewer")
def test_a_fuzzed_trajectory_keeps_the_views_shape(tmp_path, observe):
    """Each field of each event set to each hostile value: nothing raises, the view keeps its shape."""
    events, skipped = read_events(hostile_trajectory(tmp_path / "fuzz.jsonl"))
    view = build_view(events)
    assert_view_shape(view)
    json.dumps(view, allow_nan=False)
    assert view["run"]["answer"] == ANSWER and skipped == 11
    observe(
        "a fuzzed trajectory: every field of every event set to 36 hostile values", "the view keeps its shape"
    )


def test_deep_values_are_cut_and_deeper_lines_skipped(tmp_path):
    """A value nested deeper than MAX_NESTING is cut; a line deeper than the JSON parser goes is skipped."""
    path = write_lines(
        tmp_path / "deep.jsonl",
        json.dumps({"event": "run_started", "run_id": "r", "query": DEEP}),
        '{"event": "run_finished", "answer": ' + "[" * 50_000 + "]" * 50_000 + "}",
        json.dumps({"event": "run_finished", "answer": ANSWER}),
    )
    events, skipped = read_events(path)
    query = build_view(events)["run"]["query"]
    assert skipped == 1 and query.count("(nested too deeply)") == 1
    assert query.count("[") == MAX_NESTING - 1  # the event's object is the first level


def test_only_a_newline_ends_a_line(tmp_path):
    """U+2028, U+2029 and U+0085, written as they are inside JSON strings, are not line breaks."""
    answer = "a\u2028b\x85c\u2029d"
    path = tmp_path / "separators.jsonl"
    path.write_text(json.dumps({"event": "run_finished", "answer": answer}, ensure_ascii=False) + "\n")
    events, skipped = read_events(path)
    assert skipped == 0 and build_view(events)["run"]["answer"] == answer


def test_the_call_tree_is_ordered_whatever_the_parents(tmp_path):
    """Children follow their parent in id order ("1.2" before "1.10"); a parent cycle and an unknown
    parent still show every node; a chain of 20,000 nodes needs no recursion."""
    started = [
        {"event": "node_started", "node": node, "parent": parent}
        for node, parent in [("1.10", "1"), ("1.2", "1"), ("1", None), ("x", "y"), ("y", "x"), ("z", "gone")]
    ]
    chain = [{"event": "node_started", "node": f"c{i}", "parent": f"c{i - 1}"} for i in range(1, 20_000)]
    view = build_view([*started, {"event": "node_started", "node": "c0", "parent": None}, *chain])
    order = [(node["id"], node["level"]) for node in view["nodes"]]
    assert order[:3] == [("1", 0), ("1.2", 1), ("1.10", 1)]
    assert order[-4:] == [("c19999", 19_999), ("z", 0), ("x", 0), ("y", 1)]


def test_a_marker_in_any_field_stays_where_it_is(tmp_path):
    """The template is filled in one pass: a run id or answer naming a marker moves no data anywhere."""
    path = write_lines(
        tmp_path / "markers.jsonl",
        json.dumps({"event": "run_started", "run_id": "__RLMBOX_DATA__", "query": "__RLMBOX_TITLE__"}),
        json.dumps({"event": "run_finished", "answer": "__RLMBOX_DATA__ __RLMBOX_TITLE__"}),
    )
    page, data = view_cli(path)
    before, rest = page.read_text(encoding="utf-8").split('type="application/json">', 1)
    after = rest.split("</script>", 1)[1]
    template = resources.files("rlmbox.viewer").joinpath("page.html").read_text(encoding="utf-8")
    title = "<title>rlmbox run __RLMBOX_DATA__</title>"
    assert f'{before}type="application/json">__RLMBOX_DATA__</script>{after}' == template.replace(
        "<title>__RLMBOX_TITLE__</title>", title
    )
    assert data["run"]["query"] == "__RLMBOX_TITLE__"
    assert data["run"]["answer"] == "__RLMBOX_DATA__ __RLMBOX_TITLE__"


# -- in headless Chromium -----------------------------------------------------------------------------------


class Browser:
    """Headless Chromium: ``load(page)`` opens a page and records console errors, page errors, requests."""

    def __init__(self, browser: Any) -> None:
        self._browser = browser
        self.problems: list[str] = []

    def load(self, page: Path, timeout_s: float = 30) -> Any:
        view = self._browser.new_page(viewport={"width": 1280, "height": 900})
        view.set_default_timeout(timeout_s * 1000)
        view.on("console", lambda m: self.problems.append(m.text) if m.type in ("error", "warning") else None)
        view.on("pageerror", lambda e: self.problems.append(str(e)))
        view.on("request", lambda r: None if r.url.startswith("file:") else self.problems.append(r.url))
        view.goto(page.as_uri())
        return view


@pytest.fixture
def browser(chromium: str) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield Browser(launched)
        finally:
            launched.close()


def test_the_page_of_a_nan_trajectory_loads(tmp_path, browser):
    """A NaN cost used to leave the page blank: its embedded JSON did not parse."""
    path = write_lines(
        tmp_path / "nan.jsonl",
        '{"event": "run_started", "run_id": "r", "query": "q"}',
        '{"event": "root_call", "node": "1", "iteration": 1, "reply": "r", "cost_usd": NaN}',
        '{"event": "cell", "node": "1", "iteration": 1, "index": 1, "code": "x", "duration_s": Infinity}',
        '{"event": "run_finished", "answer": "' + ANSWER + '", "cost_usd": NaN, "elapsed_s": -Infinity}',
    )
    page, _ = view_cli(path)
    view = browser.load(page)
    assert view.locator("#final-answer pre").inner_text() == ANSWER
    assert view.locator("article[data-turn='1'] pre.code").inner_text() == "x"
    assert browser.problems == []


SELECT_AND_OPEN = """(id) => {
  select(id);
  for (const group of document.querySelectorAll("details.subcalls")) group.open = true;
  return document.querySelector("#timeline h2").textContent;
}"""


def test_the_page_of_a_fuzzed_trajectory_renders_every_node(tmp_path, browser):
    """The fuzzed trajectory: the page loads, shows its answer, and draws every node and sub-call."""
    from playwright.sync_api import expect

    page, data = view_cli(hostile_trajectory(tmp_path / "fuzz.jsonl"))
    view = browser.load(page)
    assert view.locator("#final-answer pre").inner_text() == ANSWER
    assert view.title() == "rlmbox run r1"
    for node in data["nodes"]:
        heading = view.evaluate(SELECT_AND_OPEN, node["id"])
        assert heading.startswith(f"Node {node['id']} ")
        expect(view.locator("details.subcalls:not(:has(details.sub))")).to_have_count(0)
    assert view.evaluate("window.__pwned") is None
    assert browser.problems == []


@pytest.mark.attack("viewer")
def test_a_marker_run_id_does_not_put_the_data_in_the_title(tmp_path, browser, observe):
    """The run id "__RLMBOX_DATA__" used to pull the whole embedded JSON into the page's title."""
    path = write_lines(
        tmp_path / "marker.jsonl",
        json.dumps({"event": "run_started", "run_id": "__RLMBOX_DATA__", "query": "__RLMBOX_TITLE__"}),
        json.dumps({"event": "run_finished", "answer": ANSWER}),
    )
    page, _ = view_cli(path)
    view = browser.load(page)
    assert view.title() == "rlmbox run __RLMBOX_DATA__"
    assert view.locator("h1").inner_text().startswith("rlmbox run __RLMBOX_DATA__")
    assert view.locator("#final-answer pre").inner_text() == ANSWER
    assert browser.problems == []
    observe(
        "a run_id holding the page's data marker (before: the data went into the title)",
        "the title shows the text",
    )


PATHOLOGICAL_CODE = {
    "escaped quotes": '\\"' * 500_000,
    "quotes, apostrophes, backslashes": "\"'a\\" * 250_000,
    "quotes": '"' * 1_000_000,
    "an open triple quote": '"""' + "'" * 1_000_000,
    "backslashes": '"' + "\\" * 1_000_000,
    "digits": "1" * 1_000_000 + "a",
    "hashes": "#" * 1_000_000,
    "an open string": "'" + "a" * 3_000_000,
}


@pytest.mark.attack("viewer")
def test_pathological_code_loads(tmp_path, browser, observe):
    """Cells of a megabyte or more, of the kinds a regex highlighter takes quadratic time on.

    No timing assertion: the test must hold on a loaded machine. Instead the sizes make quadratic time
    unmistakable. With the old highlighter a page with just the "escaped quotes" cell took 4.5 s at 100 kB
    and 314 s at 1 MB, so a return of that behaviour fails on the 60 s page-load timeout by a wide margin,
    while the linear highlighter loads this whole page (9 MB of code) in a few seconds. The 3 MB open string
    also overflowed the old regular expression's backtracking stack."""
    events = [{"event": "run_started", "run_id": "r", "query": "q"}]
    events += [
        {"event": "cell", "node": "1", "iteration": 1, "index": i, "code": code}
        for i, code in enumerate(PATHOLOGICAL_CODE.values(), start=1)
    ]
    events.append({"event": "run_finished", "answer": ANSWER})
    page, _ = view_cli(write_lines(tmp_path / "code.jsonl", *map(json.dumps, events)))
    view = browser.load(page, timeout_s=60)
    assert view.locator("#final-answer pre").inner_text() == ANSWER
    shown = view.locator("pre.code").evaluate_all("(all) => all.map((b) => b.textContent.length)")
    assert shown == [len(code) for code in PATHOLOGICAL_CODE.values()]
    assert browser.problems == []
    observe(
        "cells of about 9 MB of quotes and backslashes (before: 315 s for 1 MB)",
        "the page loads; the highlighter is linear",
    )


HIGHLIGHTED = '''\
def score(record, weight=1.5):  # one record
    """Doc "string"."""
    if record.get('kind') == "a\\"b" and not x1:
        return f(2) + 3.25 + 12ab + 0x1F
'''


def test_highlighting_is_unchanged_for_ordinary_code(tmp_path, browser):
    """The linear highlighter colours ordinary Python as the regular expression it replaced did."""
    events = [
        {"event": "cell", "node": "1", "iteration": 1, "index": 1, "code": HIGHLIGHTED},
        {"event": "run_finished", "answer": ANSWER},
    ]
    page, _ = view_cli(write_lines(tmp_path / "code.jsonl", *map(json.dumps, events)))
    view = browser.load(page)
    spans = view.locator("pre.code span").evaluate_all(
        "(all) => all.map((s) => [s.className, s.textContent])"
    )
    assert spans == [
        ["kw", "def"], ["fn", "score"], ["num", "1.5"], ["com", "# one record"],
        ["str", '"""Doc "string"."""'],
        ["kw", "if"], ["fn", "get"], ["str", "'kind'"], ["str", '"a\\"b"'], ["kw", "and"], ["kw", "not"],
        ["kw", "return"], ["fn", "f"], ["num", "2"], ["num", "3.25"],
    ]  # fmt: skip
    assert view.locator("pre.code").evaluate("(block) => block.textContent") == HIGHLIGHTED
    assert browser.problems == []


def test_a_very_deep_call_tree_renders(tmp_path, browser):
    """20,000 nested nodes: the tree is a flat, indented list, so drawing it needs no recursion."""
    events = [{"event": "node_started", "node": "1", "parent": None}]
    events += [{"event": "node_started", "node": f"1-{i}", "parent": "1" if i == 1 else f"1-{i - 1}"}
               for i in range(1, 20_000)]  # fmt: skip
    events.append({"event": "run_finished", "answer": ANSWER})
    page, _ = view_cli(write_lines(tmp_path / "tree.jsonl", *map(json.dumps, events)))
    view = browser.load(page)
    assert view.locator("#final-answer pre").inner_text() == ANSWER
    assert view.locator("nav button[data-node]").count() == 20_000
    view.locator("nav button[data-node='1-19999']").click()
    assert "Node 1-19999" in view.locator("#timeline h2").inner_text()
    assert browser.problems == []


def test_thousands_of_turns_and_cells_are_drawn_a_page_at_a_time(tmp_path, browser):
    """Turns and cells come 100 at a time, as sub-calls do: 200,000 turns drawn at once took the old page
    past the browser's limit on arguments."""
    from playwright.sync_api import expect

    events = [{"event": "root_call", "node": "1", "iteration": i, "reply": "r"} for i in range(1, 1001)]
    events += [{"event": "cell", "node": "1", "iteration": 1, "index": i, "code": "x"} for i in range(1, 251)]
    events.append({"event": "run_finished", "answer": ANSWER})
    page, _ = view_cli(write_lines(tmp_path / "turns.jsonl", *map(json.dumps, events)))
    view = browser.load(page)
    expect(view.locator("article[data-turn]")).to_have_count(100)
    view.get_by_text("show 100 more of 900").click()
    expect(view.locator("article[data-turn]")).to_have_count(200)
    first = view.locator("article[data-turn='1']")
    expect(first.locator("div.cell")).to_have_count(100)
    first.get_by_text("show 100 more of 150").click()
    expect(first.locator("div.cell")).to_have_count(200)
    assert browser.problems == []


@pytest.mark.attack("viewer")
def test_a_trajectory_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path, observe):
    """A FIFO in place of the trajectory (opening it would wait for a writer forever) is refused."""
    fifo = tmp_path / "run.jsonl"
    os.mkfifo(fifo)
    result = subprocess.run(  # noqa: PLW1510 - the exit status is asserted
        [str(RLMBOX), "view", str(fifo), "--out", str(tmp_path / "page.html")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "is a FIFO, not a regular file" in result.stderr
    observe("rlmbox view on a FIFO", "refused as not a regular file")
