"""Reading the root model's replies and shortening cell output for it: pure functions."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

__all__ = ["TextFinal", "extract_code_blocks", "find_text_final", "strip_code_blocks", "truncate_middle"]

_FENCE = re.compile(r"```[ \t]*(repl|python|py|python3)[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_ANY_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_FINAL_VAR = re.compile(r"^[ \t]*FINAL_VAR\([ \t]*[\"']?([A-Za-z_]\w*)[\"']?[ \t]*\)", re.MULTILINE)
_FINAL = re.compile(r"^[ \t]*FINAL\(", re.MULTILINE)


def extract_code_blocks(reply: str) -> list[str]:
    """The ```repl (or ```python) blocks of a reply, in order. An unclosed last block still counts."""
    blocks = [match.group(2) for match in _FENCE.finditer(reply or "")]
    return [block for block in blocks if block.strip()]


def strip_code_blocks(reply: str) -> str:
    """The reply's prose: every fenced block removed."""
    return _ANY_FENCE.sub("", reply or "")


@dataclass(frozen=True)
class TextFinal:
    """A final answer written in the reply's prose: a literal answer, or the name of a REPL variable."""

    answer: str | None = None
    variable: str | None = None


def find_text_final(reply: str) -> TextFinal | None:
    """``FINAL(...)`` or ``FINAL_VAR(name)`` at the start of a line outside code blocks, if any."""
    prose = strip_code_blocks(reply)
    if match := _FINAL_VAR.search(prose):
        return TextFinal(variable=match.group(1))
    if match := _FINAL.search(prose):
        return TextFinal(answer=_unquote(_up_to_closing_paren(prose, match.end()).strip()))
    return None


def _up_to_closing_paren(text: str, start: int) -> str:
    """The text from ``start`` up to the parenthesis closing the ``FINAL(`` that ends just before it.

    Nested parentheses count; an answer written as a string literal may contain any parenthesis. An answer
    may span lines; with no closing parenthesis at all, the rest of the line is the answer.
    """
    if text[start : start + 1] in ("'", '"'):
        literal = re.match(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')[ \t]*\)""", text[start:], re.DOTALL)
        if literal:
            return literal.group(1)
    depth = 1
    for index in range(start, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                return text[start:index]
    line_end = text.find("\n", start)
    return text[start : None if line_end == -1 else line_end]


def _unquote(text: str) -> str:
    """``"42"`` -> ``42``; anything that is not a plain string literal stays as written."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(value, str):
            return value
    return text


def truncate_middle(text: str, limit: int) -> str:
    """Keep the head and the tail of ``text`` within ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    marker = "\n... [{} characters omitted] ...\n"
    room = max(0, limit - len(marker) - 12)
    head = room // 2
    tail = room - head
    return text[:head] + marker.format(len(text) - head - tail) + text[len(text) - tail :]
