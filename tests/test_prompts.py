"""The root model's system prompt: two built-in ones (worked examples, brief) and a user's own template."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlmbox import Settings
from rlmbox.config import LLMSettings
from rlmbox.prompts import BRIEF, EXAMPLES, PLACEHOLDERS, check_template, system_prompt

from support.cli import assert_one_line_error, rlmbox
from support.loop import ScriptedLM, fake


def prompt_of(tmp_path, **llm) -> str:
    from rlmbox import RLM

    lm = ScriptedLM(["FINAL('x')"])
    settings = Settings(llm={"model": "openai/root", **llm}, trajectory_dir=tmp_path)
    RLM(settings, sandbox=fake(), lm=lm).run("a long context " * 50, "who?")
    return lm.calls[0][1][0]["content"]


def test_the_default_prompt_has_worked_examples_sized_to_the_sub_model(tmp_path):
    text = prompt_of(tmp_path, sub_model="openai/small", sub_window=2048)
    assert "llm_query_batched(prompts)" in text and 'FINAL_VAR("result")' in text
    assert "size = 4000" in text  # 80% of 2,048 tokens at 3 characters a token, in thousands
    assert "reads about 6,144 characters per call" in text
    assert "a str of 750 characters" in text


def test_the_brief_prompt_can_be_chosen(tmp_path):
    text = prompt_of(tmp_path, prompt="brief")
    assert text.startswith("You answer a query about a context that is far too large to read directly.")
    assert "size =" not in text


def test_a_prompt_template_of_ones_own_is_filled_in(tmp_path):
    text = prompt_of(tmp_path, prompt_template="Context: $context_summary\nChunks: $chunk_chars\nCost: $$5")
    assert text.startswith("Context: `context` is a str of 750 characters")
    assert text.endswith("Cost: $5")


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("Hello $name", "unknown placeholders in the prompt template: name"),
        ("Costs $ 5", "Invalid placeholder"),
    ],
)
def test_a_template_rlmbox_cannot_fill_is_refused_when_configured(template, error):
    with pytest.raises(ValidationError, match=error):
        LLMSettings(model="openai/m", prompt_template=template)


def test_both_built_in_prompts_use_only_known_placeholders():
    for template in (BRIEF, EXAMPLES):
        check_template(template)
        filled = system_prompt(
            None, template=template, sub_model="m", sub_model_chars=9000, max_output_chars=9
        )
        assert "$" not in filled.replace("$$", "")
    assert {
        "context_summary",
        "sub_model_note",
        "chunk_chars",
        "max_output_chars",
        "recursion",
    } == PLACEHOLDERS


def test_the_command_line_takes_a_prompt_file_and_refuses_a_bad_one(tmp_path):
    bad = tmp_path / "prompt.txt"
    bad.write_text("Use $tools wisely.")
    done = rlmbox(
        "run", "--context", "-", "--query", "q", "--model", "openai/m", "--prompt-file", str(bad), stdin="x"
    )
    assert_one_line_error(done, 2, "unknown placeholders in the prompt template: tools")
    missing = rlmbox("run", "--context", "-", "--query", "q", "--model", "openai/m", "--prompt-file", "/nope")
    assert_one_line_error(missing, 2, "--prompt-file /nope")
