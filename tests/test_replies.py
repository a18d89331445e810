"""Replies as real models write them: the fences, thinking, final-answer forms and mistakes of local models
(Qwen2.5-Coder 0.5B and 1.5B served by llama.cpp) and of hosted providers reached through litellm. Each one
gets read as meant, or a precise reminder; never a crash, and never a silent null answer."""

from __future__ import annotations

import pytest

from rlmbox import RLM, CellResult, LLMBadRequestError, LLMContextWindowError, Settings
from rlmbox.node import RESAMPLE_TEMPERATURE
from rlmbox.parsing import extract_code_blocks, find_code_final, find_text_final, looks_like_code
from rlmbox.sandbox.base import CellError

from support.loop import ScriptedLM, events, fake, run


def RESAMPLED(turn: int) -> dict:
    """The parameters of a reply asked for again on ``turn`` because it repeated an earlier one."""
    return {"temperature": RESAMPLE_TEMPERATURE, "seed": turn}


@pytest.mark.parametrize(
    "reply",
    [
        "```repl\nx = 1\n```",
        "```python\nx = 1\n```",
        "```python3\nx = 1\n```",
        "```py\nx = 1\n```",
        "```Python\nx = 1\n```",
        "```PYTHON \nx = 1\n```",
        "```\nx = 1\n```",
        "~~~\nx = 1\n~~~",
        "~~~python\nx = 1\n~~~",
        "Let me look.```repl\nx = 1```",
    ],
    ids=["repl", "python", "python3", "py", "Python", "PYTHON", "bare", "tilde", "tilde-python", "inline"],
)
def test_every_usual_fence_runs_its_code(reply):
    assert [block.strip() for block in extract_code_blocks(reply)] == ["x = 1"]


@pytest.mark.parametrize(
    "reply",
    [
        '```json\n{"a": 1}\n```',
        "```text\nx = 1\n```",
        "```\nThe answer is in the third paragraph.\n```",
        "```\nnot code\n```",
    ],
    ids=["json", "text", "bare-prose", "bare-expression-prose"],
)
def test_fences_of_other_languages_or_of_prose_are_not_run(reply):
    assert extract_code_blocks(reply) == []


def test_code_whose_opening_fence_was_lost_still_runs():
    """Seen with Qwen2.5-Coder 0.5B: the reply starts with the code and ends with the closing fence."""
    reply = 'print(len(context))\nanswers = llm_query_batched(prompts)\nFINAL_VAR("result")\n```'
    assert extract_code_blocks(reply) == [
        'print(len(context))\nanswers = llm_query_batched(prompts)\nFINAL_VAR("result")\n'
    ]
    assert find_text_final(reply) is None  # the FINAL_VAR runs in the code, after the lines before it
    assert extract_code_blocks("The answer is 12.\n```") == []  # prose before a lone fence is prose
    assert extract_code_blocks("x = 1\n```\ny = 2\n```") == ["y = 2\n"]  # a pair of fences is a block


def test_thinking_is_never_read_for_code_or_a_final_answer():
    reply = "<think>I could run\n```repl\nwrong()\n```\nor say FINAL(draft)</think>\n```repl\nright()\n```"
    assert extract_code_blocks(reply) == ["right()\n"]
    assert find_text_final(reply) is None
    assert extract_code_blocks("<think>cut off mid-thought ```repl\nx = 1") == []  # never closed
    assert find_text_final("<think>maybe FINAL(7)?</think>\nFINAL(8)").answer == "8"


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("FINAL(42)", "42"),
        ("Final(42)", "42"),
        ("final(42)", "42"),
        ("FINAL (42)", "42"),
        ("**FINAL(42)**", "42"),
        ("> FINAL(42)", "42"),
        ('FINAL("The answer is 42.")', "The answer is 42."),
    ],
)
def test_final_in_prose_in_the_forms_models_write_it(reply, answer):
    assert find_text_final(reply).answer == answer


def test_english_that_merely_starts_with_final_is_not_an_answer():
    assert find_text_final("Final (and most important) point: check the dates.") is None
    assert find_text_final("The FINAL(ist) said so.") is None  # not at the start of a line


def test_the_first_of_several_finals_wins():
    assert find_text_final("FINAL(one)\nFINAL_VAR(two)").variable == "one"
    assert find_text_final("FINAL_VAR(two)\nFINAL(one)").variable == "two"


def test_unfenced_code_is_recognised_and_prose_is_not():
    assert looks_like_code("chunk = context[:1000]\nprint(llm_query(chunk))")
    assert not looks_like_code("The magic number is 4217.")
    assert not looks_like_code("answer")
    assert not looks_like_code("Answer: it is 7")  # parses as an annotation, says nothing in code


@pytest.mark.parametrize(
    ("reply", "final"),
    [
        ("```repl\nFINAL('Bob is 10.')\n```", ("Bob is 10.", None, None)),
        ("```repl\nanswer = 3\nFINAL_VAR('answer')\n```", (None, "answer", None)),
        ("```repl\nFINAL(result)\n```", (None, "result", None)),  # a placeholder word: only a variable
        ("```repl\nFINAL(total)\n```", ("total", "total", None)),
        ("```repl\nFINAL(f'{name} is {age}.')\n```", (None, None, "f'{name} is {age}.'")),
        ("I computed it.\nFINAL(12)\n```repl\nFINAL(13)\n```", ("12", None, None)),
    ],
    ids=["literal", "final-var", "placeholder", "variable", "expression", "prose-first"],
)
def test_on_the_last_chance_a_final_inside_code_is_read(reply, final):
    found = find_code_final(reply)
    assert (found.answer, found.variable, found.expression) == final


# -- the turn loop --------------------------------------------------------------------------------------


def test_a_final_in_a_code_block_on_the_last_chance_turn_gives_the_answer(tmp_path):
    """Seen with Qwen2.5-Coder 1.5B: out of turns, it answered with a ```repl block calling FINAL."""
    result, _, sandbox = run(
        tmp_path, ["```repl\nx = 1\n```", "```repl\nFINAL('The magic number is 10.')\n```"], max_iterations=1
    )
    assert (result.status, result.answer) == ("budget_exhausted", "The magic number is 10.")
    assert sandbox.cells == ["x = 1\n"]  # nothing of the last reply ran


def test_a_final_expression_on_the_last_chance_is_evaluated_alone(tmp_path):
    def handler(code: str) -> CellResult:
        return CellResult(final="Ada is 36.") if code.startswith("FINAL(") else CellResult()

    result, _, sandbox = run(
        tmp_path,
        [
            "```repl\nname, age = 'Ada', 36\n```",
            "```repl\nprint('checking')\nFINAL(f'{name} is {age}.')\n```",
        ],
        fake(handler),
        max_iterations=1,
    )
    assert result.answer == "Ada is 36."
    assert sandbox.cells == ["name, age = 'Ada', 36\n", "FINAL(f'{name} is {age}.')"]


def test_final_of_a_variable_name_in_prose_gives_the_variables_value(tmp_path):
    """Seen with Qwen2.5-Coder 0.5B: ``Final(answer)`` in prose, meaning the variable."""

    def handler(code: str) -> CellResult:
        return CellResult(final="4217") if code == "FINAL_VAR('answer')" else CellResult()

    result, _, _ = run(tmp_path, ["```repl\nanswer = '4217'\n```", "Final(answer)"], fake(handler))
    assert (result.status, result.answer) == ("completed", "4217")


def test_final_of_a_word_that_is_no_variable_is_the_word(tmp_path):
    result, _, sandbox = run(tmp_path, ["FINAL(Paris)"])
    assert (result.status, result.answer) == ("completed", "Paris")
    assert sandbox.cells == ["FINAL_VAR('Paris')"]  # looked up first
    assert not [e for e in events(result) if e["event"] == "final_var"]


def test_final_var_of_a_missing_variable_is_reported_and_the_run_goes_on(tmp_path):
    result, lm, _ = run(tmp_path, ["FINAL_VAR(missing)", "FINAL('found it')"])
    assert (result.status, result.answer) == ("completed", "found it")
    assert "[no variable named 'missing' in the REPL" in lm.calls[1][1][-1]["content"]


def test_final_of_a_placeholder_word_with_no_such_variable_is_no_answer(tmp_path):
    """Seen with Qwen2.5-Coder 0.5B: a guess, then ``Final(answer)`` copied from the prompt, with no variable
    ``answer``: the run must not end with the answer "answer"."""
    result, lm, _ = run(tmp_path, ["144", "Final(answer)", "FINAL(4217)"])
    assert (result.status, result.answer) == ("completed", "4217")
    assert "[no variable named 'answer' in the REPL" in lm.calls[2][1][-1]["content"]


@pytest.mark.parametrize(
    "reply", ["FINAL(the answer)", 'FINAL("Your final answer")', "FINAL(...)", "final(The Result)"]
)
def test_final_of_a_placeholder_phrase_is_no_answer(tmp_path, reply):
    """Seen with Qwen2.5-Coder 0.5B: ``FINAL(the answer)``, copied from a note that once showed that form.
    A placeholder phrase is read as the variable it stands for; with none, the model is told, and the note
    itself shows no form to copy."""
    result, lm, _ = run(tmp_path, ["144", reply, "FINAL(4217)"])
    assert (result.status, result.answer) == ("completed", "4217")
    note = lm.calls[2][1][-1]["content"]
    assert "in the REPL: set it first, or put the answer itself between the parentheses of FINAL()]" in note


def test_final_of_a_placeholder_phrase_gives_the_variable_it_names(tmp_path):
    handler = fake(lambda code: CellResult(final="4217") if "FINAL_VAR('answer')" in code else CellResult())
    result, _, _ = run(tmp_path, ["```repl\nanswer = 4217\n```", "FINAL(the answer)"], handler)
    assert (result.status, result.answer) == ("completed", "4217")


def test_final_in_the_wrong_case_inside_code_gets_a_hint(tmp_path):
    """In a code cell, ``Final(...)`` is a NameError: the feedback says how it is spelled."""

    def handler(code: str) -> CellResult:

        error = CellError(
            "NameError", "name 'Final' is not defined", "NameError: name 'Final' is not defined"
        )
        return CellResult(error=error) if "Final(" in code else CellResult()

    result, lm, _ = run(tmp_path, ["```repl\nFinal('x')\n```", "FINAL('x')"], fake(handler))
    assert result.answer == "x"
    assert 'the helpers are FINAL(answer) and FINAL_VAR("name"), in capitals' in lm.calls[1][1][-1]["content"]


def test_the_same_unusable_reply_three_times_ends_the_run_with_a_clear_error(tmp_path):
    """A small model that keeps sending the same prose does not spend the whole budget silently; each repeat
    is first asked for again, sampled."""
    result, lm, _ = run(tmp_path, ["I need more information."] * 10, max_iterations=30)
    assert result.status == "error" and result.error_type == "LLMReplyError"
    assert "the same reply 3 times in a row" in result.error
    assert result.answer == "I need more information."  # what it did say is kept
    assert lm.params == [None, None, RESAMPLED(2), None, RESAMPLED(3)]


def test_the_same_reply_with_code_again_gets_a_note_and_a_third_time_ends_the_run(tmp_path):
    """Seen with Qwen2.5-Coder 1.5B: the same cell, turn after turn, for all 30 turns (and, sampled, the same
    cell again)."""
    same = "```repl\nprint(context[:300])\n```"
    result, lm, sandbox = run(tmp_path, [same] * 5 + ["FINAL('never read')"])
    assert "exactly the same as the one before" not in lm.calls[1][1][-1]["content"]
    assert "exactly the same as the one before" in lm.calls[3][1][-1]["content"]  # turn 3, after a resample
    assert result.status == "error" and "the same reply 3 times in a row" in result.error
    assert len(sandbox.cells) == 2  # the third copy is not run


def test_a_repeated_reply_is_asked_for_again_sampled_and_the_new_reply_is_used(tmp_path):
    """Seen with Qwen2.5-Coder 1.5B at temperature 0: the same blind llm_query after the note that showed how
    to pass the chunks. The repeat is not run; the model is asked again at a temperature with the turn as
    seed (so a recorded run replays), and the trajectory keeps both replies."""
    blind = '```repl\nprint(llm_query("What is the number?"))\n```'
    chunked = "```repl\nanswers = [llm_query(c) for c in chunks]\n```"
    result, lm, sandbox = run(tmp_path, [blind, blind, chunked, "FINAL(7)"])
    assert (result.status, result.answer) == ("completed", "7")
    assert lm.params == [None, None, RESAMPLED(2), None]
    assert [cell.split("\n")[0] for cell in sandbox.cells] == [
        'print(llm_query("What is the number?"))',
        "answers = [llm_query(c) for c in chunks]",
    ]
    assert lm.calls[3][1][-2]["content"] == chunked  # the model reads the reply that ran, not the repeat
    assert all("exactly the same" not in call[1][-1]["content"] for call in lm.calls)
    kinds = [(e["event"], e.get("iteration")) for e in events(result) if e["event"].endswith("_call")]
    assert kinds == [("root_call", 1), ("root_call", 2), ("resample_call", 2), ("root_call", 3)]
    (resample,) = [e for e in events(result) if e["event"] == "resample_call"]
    assert resample["params"] == RESAMPLED(2) and resample["reply"] == chunked


def test_a_reply_that_cycles_back_to_an_earlier_one_is_resampled(tmp_path):
    """Seen with Qwen2.5-Coder 0.5B: a made-up number, then ``Final(answer)``, then the number again, turn
    after turn; three in a row never happen, so only a repeat of any earlier reply catches the cycle."""
    result, lm, _ = run(tmp_path, ["144", "Final(answer)", "144", "```repl\nx = 1\n```", "FINAL(2)"])
    assert (result.status, result.answer) == ("completed", "2")
    assert lm.params == [None, None, None, RESAMPLED(3), None]


def test_a_provider_that_refuses_the_sampling_keeps_the_first_reply(tmp_path):
    """Some models take no temperature (or reject it although litellm lists it): the repeat then stands and
    is noted as before, and the run goes on."""
    same = "```repl\nx = 1\n```"
    refused = LLMBadRequestError("temperature is deprecated for this model")
    result, lm, sandbox = run(tmp_path, [same, same, refused, "FINAL(1)"])
    assert (result.status, result.answer) == ("completed", "1")
    assert "exactly the same as the one before" in lm.calls[3][1][-1]["content"]
    assert len(sandbox.cells) == 2


def test_different_unusable_replies_are_each_reminded(tmp_path):
    replies = ["Thinking.", "Still thinking.", "Almost.", "FINAL(done)"]
    result, lm, _ = run(tmp_path, replies)
    assert (result.status, result.answer) == ("completed", "done")
    assert all("had no ```repl block" in call[1][-1]["content"] for call in lm.calls[1:])


def test_the_feedback_carries_no_durations_so_recorded_runs_replay(tmp_path):
    """Nothing the model reads varies from run to run when its replies do not: no times in the feedback."""
    _, lm, _ = run(tmp_path, ["```repl\nx = 1\n```", "FINAL(1)"])
    feedback = lm.calls[1][1][-1]["content"]
    assert feedback.startswith("[cell 1/1]\nran x = 1")


def test_empty_replies_three_times_end_the_run(tmp_path):
    result, _, _ = run(tmp_path, [None, "", None, "", None, "FINAL(late)"])  # each repeat resampled, empty
    assert result.status == "error" and result.error_type == "LLMReplyError"


# -- a root conversation that would outgrow the window -------------------------------------------------


def test_a_long_conversation_is_compacted_into_the_models_own_summary(tmp_path):
    """With a small window (a local model's), older turns are replaced by a summary the model writes; the
    REPL keeps its state, the last turn stays as it is, and the trajectory says so."""

    class Model(ScriptedLM):
        """Runs six steps, summarizes when asked, then answers."""

        async def complete(self, model, messages, *, timeout_s=None, params=None):
            asked = str(messages[-1]["content"])
            steps = len(sandbox.cells)  # the REPL, not the conversation, knows how far it got
            if "Write a short summary" in asked:
                self.replies = [f"Summary: step_1..step_{steps} are set; go on."]
            else:
                self.replies = [f"```repl\nstep_{steps + 1} = 1\n```" if steps < 6 else "FINAL('done')"]
            return await super().complete(model, messages, timeout_s=timeout_s, params=params)

    sandbox = fake(lambda code: CellResult(stdout="x" * 3000 + "\n"))  # long outputs fill the window fast
    lm = Model([])
    settings = Settings(
        llm={"model": "root-model", "root_window": 1500},
        trajectory_dir=tmp_path,
    )
    result = RLM(settings, sandbox=sandbox, lm=lm).run("the context", "the question")
    assert (result.status, result.answer) == ("completed", "done")
    compactions = [e for e in events(result) if e["event"] == "compaction"]
    assert compactions and all(c["chars_after"] < c["chars_before"] for c in compactions)
    asked = [call for call in lm.calls if "Write a short summary" in call[1][-1]["content"]]
    assert len(asked) == len(compactions)
    after = lm.calls[lm.calls.index(asked[0]) + 1][1]
    assert len(after) == 4  # system, the first message with the summary, the last reply and its feedback
    assert "Summary: step_1..step_" in after[1]["content"]
    assert "the REPL still holds every variable" in after[1]["content"]
    assert len(sandbox.cells) == 6  # summary turns run no code
    assert all(len(call[1]) <= 2 + 2 * 3 for call in lm.calls)  # the conversation never outgrew the window


def test_a_conversation_the_provider_refuses_as_too_long_is_compacted_and_asked_again(tmp_path):
    """Seen with llama.cpp: digits make fewer characters per token than the estimate assumes, and the
    server refused the third turn ("exceeds the available context size"); the run ended in an error."""
    refusal = LLMContextWindowError("the prompt is longer than the context window of model 'root-model'")
    replies = [
        "```repl\nprint(1)\n```",
        "```repl\nprint(2)\n```",
        refusal,
        "Summary: printed 1 and 2.",
        "FINAL(3)",
    ]
    result, lm, _ = run(tmp_path, replies)
    assert (result.status, result.answer) == ("completed", "3")
    compaction = [e for e in events(result) if e["event"] == "compaction"]
    assert [c["reason"] for c in compaction] == ["window_refused"]
    assert "Summary: printed 1 and 2." in lm.calls[-1][1][1]["content"]


def test_with_nothing_to_compact_the_longest_output_is_cut_and_asked_again(tmp_path):
    refusal = LLMContextWindowError("the prompt is longer than the context window of model 'root-model'")
    sandbox = fake(lambda code: CellResult(stdout="7" * 15_000))
    result, lm, _ = run(tmp_path, ["```repl\nprint(context)\n```", refusal, "FINAL(done)"], sandbox)
    assert (result.status, result.answer) == ("completed", "done")
    refused, retried = lm.calls[1][1], lm.calls[2][1]
    assert len(retried[-1]["content"]) < len(refused[-1]["content"]) // 2
    assert [e["event"] for e in events(result)].count("output_cut") == 1


def test_a_refusal_that_persists_ends_the_run_with_the_providers_reason(tmp_path):
    refusal = LLMContextWindowError("the prompt is longer than the context window of model 'root-model'")
    result, _, _ = run(tmp_path, ["```repl\nprint(1)\n```", refusal, refusal, refusal, "FINAL(never)"])
    assert result.status == "error" and result.error_type == "LLMContextWindowError"


def test_a_small_window_shows_less_of_each_output(tmp_path):
    """A cell printing the whole context must not fill a small window in one turn."""

    def printed(code: str) -> CellResult:
        return CellResult(stdout="7" * 50_000)

    replies = ["```repl\nprint(context)\n```", "FINAL(done)"]
    _, small, _ = run(tmp_path, replies, fake(printed), llm_overrides={"root_window": 8192})
    _, large, _ = run(tmp_path, replies, fake(printed), llm_overrides={"root_window": 200_000})
    assert len(small.calls[1][1][-1]["content"]) < 8192 * 3 // 6
    assert len(large.calls[1][1][-1]["content"]) > 19_000  # max_output_chars
    assert "cut to about 3,072 characters" in small.calls[0][1][0]["content"]


def test_an_output_cut_in_the_middle_says_to_search_with_code_instead(tmp_path):
    """Seen with Qwen2.5-Coder 1.5B: print(context) again and again, the middle never shown; told this,
    it wrote a loop over context.splitlines() and found the line."""

    def printed(code: str) -> CellResult:
        return CellResult(stdout="".join(f"name-{n}: {n}\n" for n in range(5000)))

    replies = ["```repl\nprint(context)\n```", "FINAL(done)"]
    _, lm, _ = run(tmp_path, replies, fake(printed), llm_overrides={"root_window": 8192})
    feedback = lm.calls[1][1][-1]["content"]
    assert "characters omitted" in feedback and "[output cut: " in feedback and "splitlines()" in feedback
    assert len(feedback) < 8192 * 3 // 6


def test_a_sub_call_without_the_context_is_answered_with_the_question_over_chunks_as_code(tmp_path):
    """Seen with Qwen2.5-Coder 1.5B on S-NIAH: llm_query(the question) with no part of `context`, turn after
    turn, believing the sub-model's guess. The note gives the same question over chunks, as code to run."""
    question = 'What is the "magic" number?\nAnswer with the number only.'

    async def cell(code: str) -> CellResult:
        if "llm_query" in code:
            outcomes = await sandbox.handler.llm_query([question], None)
            return CellResult(result=repr(outcomes[0].text))
        return CellResult()

    sandbox = fake(cell)
    lm = ScriptedLM(["```repl\nllm_query(question)\n```", "10", "FINAL(done)"])
    settings = Settings(llm={"model": "root-model", "sub_window": 2000}, trajectory_dir=tmp_path)
    RLM(settings, sandbox=sandbox, lm=lm).run("word " * 2000, "q")
    feedback = lm.calls[2][1][-1]["content"]
    assert f"the sub-model saw only your prompt ({len(question)} characters)" in feedback
    code = extract_code_blocks(feedback.split("for example:\n", 1)[1])[0]
    asked: list[str] = []

    def batched(prompts: list[str]) -> list[str]:
        asked.extend(prompts)
        return ["42"] * (len(prompts) - 1) + ["NONE"]

    namespace = {"context": "abcdefghij" * 1000, "llm_query_batched": batched}
    exec(
        compile(code, "note", "exec"), namespace
    )  # the code it shows runs, and asks the question of each chunk
    assert namespace["question"] == question
    chunk = namespace["chunks"][0]
    assert asked[0].startswith(chunk) and question in asked[0][len(chunk) :]  # small models read the end best
    assert namespace["found"] == ["42"] * (len(asked) - 1)  # the chunks that say nothing are left out
    assert len(namespace["chunks"][0]) == 4000  # from the sub-model's window (2000 tokens)


def test_a_sub_call_that_carries_the_context_gets_no_note(tmp_path):
    async def cell(code: str) -> CellResult:
        await sandbox.handler.llm_query(["Find the number in:\n" + "word " * 200], None)
        return CellResult()

    sandbox = fake(cell)
    lm = ScriptedLM(["```repl\nllm_query(question + context[:1000])\n```", "10", "FINAL(done)"])
    RLM(Settings(llm={"model": "root-model"}, trajectory_dir=tmp_path), sandbox=sandbox, lm=lm).run(
        "word " * 2000, "q"
    )
    assert "saw only your prompt" not in lm.calls[2][1][-1]["content"]


def test_unfenced_code_is_never_the_partial_answer(tmp_path):
    """Seen with Qwen2.5-Coder 0.5B on OOLONG: the same unfenced code three times; the run's answer was
    that code, and the scorer gave it partial credit."""
    code = "type(context), len(context)\nprint(context[:300])"
    result, _, _ = run(tmp_path, ["The labels are counted below.", *[code] * 5])  # resampled: the same
    assert result.status == "error" and result.answer == "The labels are counted below."
