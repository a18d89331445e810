"""The turn loop, driven by a scripted LM client and a FakeSandbox: no Docker, no HTTP."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlmbox import RLM, CellResult, ConfigError, FakeSandbox, KernelDiedError, LLMError, Settings
from rlmbox.sandbox.base import CellError

from support.loop import ScriptedLM, events, fake, run, settings


def test_code_runs_and_final_in_prose_ends_the_run(tmp_path):
    result, lm, sandbox = run(tmp_path, ["```repl\nx = 1\n```", "Done.\nFINAL(42)"])
    assert (result.status, result.answer, result.iterations) == ("completed", "42", 2)
    assert sandbox.cells == ["x = 1\n"]
    assert "ran x = 1" in lm.calls[1][1][-1]["content"]  # the cell output was fed back
    assert sandbox.stops == 1


def test_every_block_of_a_reply_runs_in_order(tmp_path):
    _, _, sandbox = run(tmp_path, ["```repl\na = 1\n```\ntext\n```python\nb = 2\n```", "FINAL('x')"])
    assert sandbox.cells == ["a = 1\n", "b = 2\n"]


def test_final_from_code_stops_the_remaining_blocks(tmp_path):
    def handler(code: str) -> CellResult:
        return CellResult(final="from code") if "FINAL" in code else CellResult()

    result, _, sandbox = run(
        tmp_path, ["```repl\nFINAL('from code')\n```\n```repl\nnever = 1\n```"], fake(handler)
    )
    assert result.answer == "from code" and result.status == "completed"
    assert sandbox.cells == ["FINAL('from code')\n"]


def test_final_var_in_prose_reads_the_variable(tmp_path):
    def handler(code: str) -> CellResult:
        return CellResult(final="value of answer") if code == "FINAL_VAR('answer')" else CellResult()

    result, _, _ = run(tmp_path, ["```repl\nanswer = 1\n```\nFINAL_VAR(answer)"], fake(handler))
    assert result.answer == "value of answer"


def test_final_var_of_a_missing_variable_is_reported_not_fatal(tmp_path):
    result, lm, _ = run(tmp_path, ["FINAL_VAR(nothing)", "FINAL(ok)"], fake(lambda code: CellResult()))
    assert result.answer == "ok"
    assert "no variable named 'nothing'" in lm.calls[1][1][-1]["content"]


@pytest.mark.parametrize(
    ("reply", "reminder"),
    [
        (None, "Your reply was empty"),
        ("", "Your reply was empty"),
        ("I think the answer is somewhere.", "had no ```repl block"),
        ("```\nnot repl\n```", "had no ```repl block"),
        ("x = context[:100]\nprint(x)", "Send it like this:\n```repl\nx = context[:100]\nprint(x)\n```"),
    ],
    ids=["none", "empty", "prose", "bare-fence-prose", "unfenced-code"],
)
def test_a_reply_without_code_gets_a_precise_reminder(tmp_path, reply, reminder):
    result, lm, _ = run(tmp_path, [reply, "FINAL('fine')"])
    assert result.status == "completed" and result.answer == "fine"
    assert reminder in lm.calls[1][1][-1]["content"]


def test_cell_errors_are_fed_back(tmp_path):
    def handler(code: str) -> CellResult:
        return CellResult(error=CellError("ZeroDivisionError", "division by zero", "Traceback: 1/0"))

    result, lm, _ = run(tmp_path, ["```repl\n1/0\n```", "FINAL(recovered)"], fake(handler))
    assert result.answer == "recovered"
    assert "ZeroDivisionError" not in lm.calls[0][1][-1]["content"]
    assert "Traceback: 1/0" in lm.calls[1][1][-1]["content"]


def test_long_output_is_truncated_for_the_model(tmp_path):
    long = CellResult(stdout="x" * 100_000)
    _, lm, _ = run(
        tmp_path, ["```repl\nprint(big)\n```", "FINAL(1)"], fake(lambda code: long), max_output_chars=1000
    )
    fed = lm.calls[1][1][-1]["content"]
    assert len(fed) < 1300 and "characters omitted" in fed


def test_running_out_of_iterations_asks_for_a_last_answer(tmp_path):
    result, lm, _ = run(
        tmp_path, ["```repl\na\n```", "```repl\nb\n```", "FINAL(best guess)"], max_iterations=2
    )
    assert result.status == "budget_exhausted" and result.budget_limit == "iterations"
    assert result.answer == "best guess"
    assert "no turns left" in lm.calls[-1][1][-1]["content"]


def test_token_budget_ends_the_run_with_a_partial_answer(tmp_path):
    result, _, _ = run(tmp_path, ["Partial: it is 7.\n```repl\na\n```", "```repl\nb\n```"], max_tokens=150)
    assert result.status == "budget_exhausted" and result.budget_limit == "tokens"
    assert result.answer == "Partial: it is 7."


def test_provider_failure_ends_the_run_with_an_error(tmp_path):
    result, _, sandbox = run(tmp_path, [LLMError("provider down")])
    assert result.status == "error" and result.error == "provider down"
    assert result.error_type == "LLMError"
    assert sandbox.stops == 1


def test_kernel_death_restarts_the_sandbox_and_tells_the_model(tmp_path):
    deaths = iter([True])

    def handler(code: str) -> CellResult:
        if next(deaths, False):
            raise KernelDiedError("the kernel was killed (out of memory)", oom=True)
        return CellResult()

    sandbox = fake(handler)
    result, lm, _ = run(tmp_path, ["```repl\nbig\n```", "FINAL(after restart)"], sandbox)
    assert result.answer == "after restart"
    assert sandbox.starts == 2
    assert "kernel was restarted" in lm.calls[1][1][-1]["content"]
    assert "out of memory" in lm.calls[1][1][-1]["content"]


def test_a_kernel_that_keeps_dying_ends_the_run(tmp_path):
    def handler(code: str) -> CellResult:
        raise KernelDiedError("dead again")

    replies = [f"```repl\nx{n}\n```" for n in range(10)]  # different each time: not a repeating model
    result, _, _ = run(tmp_path, replies, fake(handler), max_kernel_restarts=2)
    assert result.status == "error" and result.error_type == "KernelDiedError"


def test_the_root_model_never_sees_the_context(tmp_path):
    secret_body = "UNIQUE-CONTENT-MARKER " * 1000
    lm = ScriptedLM(["FINAL(x)"])
    RLM(settings(tmp_path), sandbox=fake(), lm=lm).run("HEAD " + secret_body, "q")
    prompt = json.dumps(lm.calls[0][1])
    assert prompt.count("UNIQUE-CONTENT-MARKER") <= 30  # only the short preview, never the body
    assert "a str of 22,005 characters" in prompt


def test_trajectory_records_the_run_without_secrets(tmp_path):
    lm = ScriptedLM(["```repl\nx = 1\n```", "FINAL('done')"])
    config = Settings(
        llm={"model": "root-model", "api_key": "sk-do-not-leak-123456"}, trajectory_dir=tmp_path
    )
    result = RLM(config, sandbox=fake(), lm=lm).run("ctx", "q")
    kinds = [event["event"] for event in events(result)]
    assert kinds == [
        "run_started",
        "node_started",
        "system_prompt",
        "root_call",
        "cell",
        "root_call",
        "node_finished",
        "run_finished",
    ]
    text = Path(result.trajectory).read_text()
    assert "sk-do-not-leak-123456" not in text
    assert events(result)[-1]["answer"] == "done"


def test_a_root_model_is_required(tmp_path):
    with pytest.raises(ConfigError, match="no root model"):
        RLM(Settings(trajectory_dir=tmp_path), sandbox=fake(), lm=ScriptedLM([])).run("c", "q")


def test_usage_is_reported_per_model(tmp_path):
    result, _, _ = run(tmp_path, ["```repl\nx\n```", "FINAL(1)"])
    assert result.usage["root-model"].calls == 2
    assert result.usage["root-model"].prompt_tokens == 200
    assert result.cost_usd == pytest.approx(0.002)


def test_a_slow_clean_up_at_the_deadline_keeps_the_answer(tmp_path):
    """The wall clock bounds the turns; closing the sandbox afterwards must not turn success into failure."""

    class SlowToClose(FakeSandbox):
        async def _stop(self) -> None:
            await asyncio.sleep(0.5)
            await super()._stop()

    sandbox = SlowToClose(lambda code: CellResult())
    result, _, _ = run(tmp_path, ["FINAL(on time)"], sandbox, max_wall_s=0.3)
    assert (result.status, result.answer) == ("completed", "on time")
    assert sandbox.stops == 1


def test_final_var_at_the_last_chance_is_resolved(tmp_path):
    def handler(code: str) -> CellResult:
        return CellResult(final="Paris") if code == "FINAL_VAR('answer')" else CellResult()

    replies = ["```repl\nanswer = 'Paris'\n```", 'FINAL_VAR("answer")']
    result, _, _ = run(tmp_path, replies, fake(handler), max_iterations=1)
    assert (result.status, result.answer) == ("budget_exhausted", "Paris")


def test_secrets_in_completion_kwargs_and_urls_stay_out_of_the_trajectory(tmp_path):
    config = Settings(
        llm={
            "model": "root-model",
            "api_base": "https://user:hunter2-pass@proxy.example/v1",
            "completion_kwargs": {
                "extra_headers": {"Authorization": "Bearer abcdefghijkl"},
                "temperature": 0,
            },
        },
        trajectory_dir=tmp_path,
    )
    result = RLM(config, sandbox=fake(), lm=ScriptedLM(["FINAL(x)"])).run("ctx", "q")
    text = Path(result.trajectory).read_text()
    assert "hunter2-pass" not in text and "abcdefghijkl" not in text
    assert '"temperature": 0' in text  # the rest of the settings is kept


def test_the_first_import_of_litellm_is_not_charged_to_the_run(tmp_path):
    """In a fresh interpreter, where a run imports litellm itself, the import happens before its clock."""
    code = textwrap.dedent(f"""
        import sys
        from rlmbox import RLM, CellResult, FakeSandbox, Settings
        from rlmbox.llm import Completion

        class LM:
            async def complete(self, model, messages, *, timeout_s=None, params=None):
                return Completion("FINAL(on time)", model, 1, 1, 0.0, 0.0, 1)

        assert "litellm" not in sys.modules
        settings = Settings(llm={{"model": "root-model"}}, limits={{"max_wall_s": 0.5}},
                            trajectory_dir={str(tmp_path)!r})
        sandbox = FakeSandbox(lambda code: CellResult())
        result = RLM(settings, sandbox=sandbox, lm=LM()).run("the context", "the question")
        print(result.model_dump_json())
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["status"], result["answer"]) == ("completed", "on time")
    assert result["elapsed_s"] < 0.5
