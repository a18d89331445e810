"""Escape suite, results: what the sandbox hands back as the answer is bounded, converted safely, and never
becomes anything but a string on the host."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support.attacks import run_attack

pytestmark = pytest.mark.attack("results")


@pytest.mark.docker
@pytest.mark.parametrize(
    ("name", "setup", "expected"),
    [
        ("a dict", "answer = {'a': [1, 2], 'b': None}", '{"a": [1, 2], "b": null}'),
        ("a list that contains itself", "answer = []\nanswer.append(answer)", "[[...]]"),
        ("bytes", "answer = b'\\xff\\x00'", "\"b'\\\\xff\\\\x00'\""),
        ("an endless iterator", "import itertools\nanswer = itertools.count()", '"count(0)"'),
        ("a path-like string", "answer = '../../../../etc/passwd'", "../../../../etc/passwd"),
    ],
)
def test_final_var_of_a_non_string_becomes_a_plain_string(
    runtime_dir, tmp_path, observe, name, setup, expected
):
    run = run_attack([f"{setup}\nFINAL_VAR('answer')"], runtime_dir, tmp_path, probe=False)
    assert run.result.status == "completed" and run.result.answer == expected
    assert Path(run.result.trajectory).parent == tmp_path / "runs"  # the answer never names a host path
    observe(f"FINAL_VAR of {name}", f"answer {expected!r}")


@pytest.mark.docker
def test_final_var_of_an_object_that_fights_conversion(runtime_dir, tmp_path, observe):
    hostile = """
class Hostile:
    def __str__(self):
        raise RuntimeError('no str for you')
    __repr__ = __str__
answer = {'x': Hostile()}
FINAL_VAR('answer')
"""
    huge = "class Huge:\n    def __repr__(self):\n        return 'h' * 50_000_000\n"
    huge += "answer = Huge()\nFINAL_VAR('answer')"
    run = run_attack([hostile, huge], runtime_dir, tmp_path)
    assert "RuntimeError: no str for you" in run.feedback[0]
    assert "exceeds the 1000000-char limit" in run.feedback[1]
    assert run.survived and run.result.answer == "done"
    observe("FINAL_VAR of an object whose str() raises", "the cell fails with its error; the run goes on")
    observe("FINAL_VAR of an object whose repr is 50 MB", "refused in the kernel (1,000,000-char limit)")


@pytest.mark.docker
def test_enormous_final_answers_are_refused_at_both_ends(runtime_dir, tmp_path, observe):
    in_kernel = "big = 'x' * 5_000_000\nFINAL_VAR('big')"
    forged = (
        "from IPython.display import publish_display_data\n"
        "publish_display_data({'application/vnd.rlmbox.final+json': {'answer': 'z' * 3_000_000}})"
    )
    run = run_attack([in_kernel, forged], runtime_dir, tmp_path)
    assert "final answer of 5000000 chars exceeds the 1000000-char limit" in run.feedback[0]
    assert "FinalAnswerTooLarge" in run.feedback[1]
    assert run.survived and run.result.answer == "done"
    observe("FINAL_VAR of a 5 MB string", "refused in the kernel; the run goes on")
    observe("a 3 MB FINAL forged past the kernel's check", "refused by the host (FinalAnswerTooLarge)")


def test_the_host_package_never_unpickles_or_evaluates():
    """Everything from the sandbox is JSON; a guard against a deserialiser that runs code creeping in."""
    package = Path(__file__).parents[1] / "runtime" / "rlmbox"
    banned = {"pickle", "marshal", "shelve", "dill", "cloudpickle"}
    for source in package.rglob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = {alias.name.split(".")[0] for alias in node.names}
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.add(node.module.split(".")[0])
                assert not names & banned, f"{source}: imports {names & banned}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"eval", "exec"}, f"{source}:{node.lineno} calls {node.func.id}"
