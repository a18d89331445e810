"""Reading root-model replies and cutting cell output."""

from rlmbox.parsing import extract_code_blocks, find_text_final, strip_code_blocks, truncate_middle


def test_extracts_repl_and_python_blocks_in_order():
    reply = "Look:\n```repl\nx = 1\n```\nthen\n```python\nprint(x)\n```\nand ```\nnot code\n```"
    assert extract_code_blocks(reply) == ["x = 1\n", "print(x)\n"]


def test_fence_language_is_case_insensitive_and_may_have_spaces():
    assert extract_code_blocks("``` Python \ny = 2\n```") == ["y = 2\n"]


def test_unclosed_last_block_still_runs():
    """A reply cut off by the provider's token limit keeps its last block."""
    assert extract_code_blocks("```repl\nx = 1\n```\n```repl\nprint(x)") == ["x = 1\n", "print(x)"]


def test_empty_and_none_replies_have_no_code():
    assert extract_code_blocks("") == []
    assert extract_code_blocks(None) == []  # type: ignore[arg-type]
    assert extract_code_blocks("```repl\n   \n```") == []


def test_final_in_prose_is_found_and_unquoted():
    assert find_text_final('All done.\nFINAL("42")').answer == "42"
    assert find_text_final("FINAL(the answer is 7)").answer == "the answer is 7"


def test_multiline_final_answer():
    assert find_text_final("FINAL(line one\nline two)").answer == "line one\nline two"


def test_final_var_in_prose_names_a_variable():
    found = find_text_final("I stored it.\nFINAL_VAR(result)")
    assert found.variable == "result" and found.answer is None
    assert find_text_final("FINAL_VAR('answer')").variable == "answer"


def test_final_inside_code_is_not_a_prose_final():
    """FINAL in a code block is executed by the kernel, not read from the text."""
    assert find_text_final("```repl\nFINAL(x)\n```") is None


def test_final_must_start_a_line():
    assert find_text_final("I will call FINAL(x) later") is None


def test_strip_code_blocks_keeps_prose():
    assert strip_code_blocks("before\n```repl\ncode\n```\nafter").split() == ["before", "after"]


def test_truncate_middle_keeps_head_and_tail_within_limit():
    text = "A" * 5000 + "B" * 5000
    cut = truncate_middle(text, 1000)
    assert len(cut) <= 1000
    assert cut.startswith("AAAA") and cut.endswith("BBBB")
    assert "characters omitted" in cut


def test_truncate_middle_leaves_short_text_alone():
    assert truncate_middle("short", 100) == "short"


def test_final_stops_at_its_own_closing_parenthesis():
    """Text after the answer, even with parentheses of its own, is not part of the answer."""
    assert find_text_final("FINAL(42)\nFound in chunk 3 (of 10)").answer == "42"
    assert find_text_final("FINAL(f(x) = 2)").answer == "f(x) = 2"
    assert find_text_final('FINAL("a ) in a string")\nmore (text)').answer == "a ) in a string"


def test_final_without_closing_parenthesis_takes_the_line():
    assert find_text_final("FINAL(cut off answer\nnext line").answer == "cut off answer"
