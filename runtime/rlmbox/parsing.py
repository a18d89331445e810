"""Reading the root model's replies, as real models write them, and shortening cell output: pure functions.

Replies vary by model and provider: ```repl, ```python, ```py, ```Python3 or bare ``` fences, ``~~~`` fences,
``<think>...</think>`` preambles, ``FINAL(...)`` written as ``Final (...)``, code without any fence. What
is read here: the code blocks (a fence with a Python language, or with none when its body is Python), and a
final answer written in the prose (``FINAL(...)`` or ``FINAL_VAR(name)`` at the start of a line, any
case). Thinking is never read for either.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

__all__ = [
    "TextFinal",
    "extract_code_blocks",
    "find_code_final",
    "find_text_final",
    "looks_like_code",
    "strip_code_blocks",
    "strip_thinking",
    "truncate_middle",
]

CODE_LANGUAGES = frozenset({"repl", "python", "python3", "py", "ipython", "pycon"})
_THINKING = re.compile(r"<think(?:ing)?>.*?(?:</think(?:ing)?>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(
    r"(?P<fence>```|~~~)[ \t]*(?P<language>[\w.+-]*)[^\n]*\n(?P<body>.*?)(?:(?P=fence)|\Z)", re.DOTALL
)
# FINAL in capitals may have spaces before its parenthesis; other cases (Final, final) may not, so that
# "Final (and most important) point" stays prose.
_FINAL = re.compile(
    r"^[ \t>*]*(?:(?P<name>FINAL_VAR|FINAL)[ \t]*|(?P<other>(?i:final_var|final)))\(", re.MULTILINE
)
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
# Words the prompts use as placeholders: FINAL(answer) names a variable, or is the prompt copied (seen with
# Qwen2.5-Coder 0.5B), never the answer itself; so are "the answer", "your final answer" and "...".
_PLACEHOLDER_WORDS = frozenset({"answer", "result", "variable_name", "name", "your_answer", "final_answer"})
_PLACEHOLDER_ARTICLE = re.compile(r"^(?:the|your)\s+", re.IGNORECASE)


def _placeholder(argument: str) -> str | None:
    """The placeholder word ``FINAL(argument)`` copies, as a variable name: the argument as written when it is
    one (``Result``), else the word it stands for (``the answer`` -> ``answer``)."""
    if argument.lower() in _PLACEHOLDER_WORDS:
        return argument
    words = _PLACEHOLDER_ARTICLE.sub("", argument.strip("'\"").strip())
    if words in ("...", "…"):
        return "answer"
    name = re.sub(r"\s+", "_", words).lower()
    return name if name in _PLACEHOLDER_WORDS else None


def strip_thinking(reply: str) -> str:
    """The reply without its ``<think>...</think>`` blocks (an unclosed one runs to the end)."""
    return _THINKING.sub("", reply or "")


def _visible(reply: str) -> str:
    """The reply without its thinking. A reply of code closed by a lone fence gets back the opening fence it
    lost (seen with Qwen2.5-Coder 0.5B)."""
    text = strip_thinking(reply)
    body, _, last = text.rstrip().rpartition("\n")
    fence = last.strip()
    if fence in ("```", "~~~") and "```" not in body and "~~~" not in body and _is_code(body):
        return f"{fence}repl\n{body}\n{fence}"
    return text


def _blocks(reply: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of the visible reply, in order."""
    return [
        (match.group("language").lower(), match.group("body")) for match in _FENCE.finditer(_visible(reply))
    ]


def _is_python(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


_STATEMENTS = (
    ast.Call,
    ast.Assign,
    ast.AugAssign,
    ast.AnnAssign,
    ast.Import,
    ast.ImportFrom,
    ast.For,
    ast.While,
)


def _is_code(text: str) -> bool:
    """Python that does something (a call, an assignment, an import, a loop), not prose that happens to parse
    ("not code" is a valid expression)."""
    if not _is_python(text):
        return False
    return any(
        isinstance(node, _STATEMENTS) and not (isinstance(node, ast.AnnAssign) and node.value is None)
        for node in ast.walk(ast.parse(text))
    )  # "Answer: it is 7" parses as an annotation: prose


def extract_code_blocks(reply: str) -> list[str]:
    """The reply's code blocks, in order: fenced with a Python language (```repl, ```python, ```py, any case,
    or ``~~~``), or fenced without one when the body is Python. An unclosed last block still counts."""
    return [
        body
        for language, body in _blocks(reply)
        if body.strip() and (language in CODE_LANGUAGES or (not language and _is_code(body)))
    ]


def strip_code_blocks(reply: str) -> str:
    """The reply's prose: thinking and every fenced block removed."""
    return _FENCE.sub("", _visible(reply))


def looks_like_code(reply: str) -> bool:
    """Whether an unfenced reply is Python code rather than prose."""
    text = strip_thinking(reply).strip()
    return bool(text) and _is_code(text)


@dataclass(frozen=True)
class TextFinal:
    """A final answer written outside running code: a literal answer, the name of a REPL variable (which may
    also be meant literally: ``answer`` is its fallback), or an expression to evaluate in the REPL."""

    answer: str | None = None
    variable: str | None = None
    expression: str | None = None


def find_text_final(reply: str) -> TextFinal | None:
    """The first ``FINAL(...)`` or ``FINAL_VAR(name)`` at the start of a line in the prose, in any case."""
    return _first_final(strip_code_blocks(reply))


def find_code_final(reply: str) -> TextFinal | None:
    """A final answer anywhere in the reply, for a turn where no code runs (the last chance): in the prose
    as ``find_text_final`` reads it, else the first ``FINAL(...)`` or ``FINAL_VAR(...)`` in a code block,
    where it may also be an expression to evaluate."""
    code = "\n".join(body for _, body in _blocks(reply))
    return find_text_final(reply) or _first_final(code, expressions=True)


def _first_final(text: str, *, expressions: bool = False) -> TextFinal | None:
    match = _FINAL.search(text)
    if match is None:
        return None
    argument = _up_to_closing_paren(text, match.end()).strip()
    if (match.group("name") or match.group("other")).upper() == "FINAL_VAR":
        name = argument.strip("'\"").strip()
        return TextFinal(variable=name) if _IDENTIFIER.fullmatch(name) else None
    if (placeholder := _placeholder(argument)) is not None:
        return TextFinal(variable=placeholder)
    if _IDENTIFIER.fullmatch(argument) and argument not in ("True", "False", "None"):
        return TextFinal(answer=argument, variable=argument)
    literal = _literal(argument)
    if literal is not None or not expressions or not _is_python(argument):
        return TextFinal(answer=argument if literal is None else literal)
    return TextFinal(expression=argument)


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


def _literal(text: str) -> str | None:
    """A Python string or number literal as its text (``"42"`` and ``42`` -> ``42``), else None."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return text
    return None


def truncate_middle(text: str, limit: int) -> str:
    """Keep the head and the tail of ``text`` within ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    marker = "\n... [{} characters omitted] ...\n"
    room = max(0, limit - len(marker) - 12)
    head = room // 2
    tail = room - head
    return text[:head] + marker.format(len(text) - head - tail) + text[len(text) - tail :]
