"""Decoding what a sandbox sends: JSON whose cost is bounded before parsing starts, and clean text.

Parsing JSON costs memory and time per value, not per byte: 32 MiB of ``[[],[],...]`` is ten million lists,
gigabytes of Python objects and seconds of a held GIL. So every decode here first bounds the number of values
the bytes can hold, with a handful of ``bytes`` scans at memory speed, and refuses past a limit before a
single object is built. What is parsed comes back with invalid Unicode replaced (U+FFFD) and without NaN or
infinities, so nothing later (a trajectory line, a page, a prompt) can fail on it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic_core import from_json

__all__ = [
    "UntrustedDataError",
    "check_json_values",
    "clean_text",
    "json_value_bound",
    "loads",
    "parsed_size_bound",
    "size_bound",
]

# bytes.translate deletes every byte but these in one pass at memory speed
_NOT_SYNTAX = bytes(byte for byte in range(256) if byte not in b',:[{"\\')
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b',:[{"')


class UntrustedDataError(ValueError):
    """Bytes from a sandbox that are not the bounded, valid JSON they had to be."""


def json_value_bound(data: bytes, limit: int) -> int:
    """At least as many as the JSON values (keys included) in ``data``, or that a parser builds before it
    fails on invalid JSON; one more than the truth per empty list or object. Above ``limit`` the count stops
    early: any result over ``limit`` means "too many".

    Every value but the first follows a ``,``, ``:``, ``[`` or ``{`` outside a string, so the bound is one
    plus those characters outside strings. Strings are masked with scans that run at memory speed: escaped
    backslashes and quotes are removed, then the text is split on quotes. Every string is a value, so more
    strings than ``limit`` end the count before the split, which then makes at most ``2 * limit + 1``
    pieces.
    """
    if len(data) // 2 + 1 <= limit:  # the densest JSON, "[0,0,...]" or "[[[...]]]", has a value per 2 bytes
        return len(data) // 2 + 1
    syntax = data.translate(None, _NOT_SYNTAX)
    bound = 1 + len(syntax) - syntax.count(b'"') - syntax.count(b"\\")  # strings' own commas counted too
    if bound <= limit:
        return bound
    if b"\\" in syntax:  # valid JSON has backslashes only in strings: escaped ones and quotes can go
        syntax = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    strings = syntax.count(b'"') // 2
    if strings > limit:
        return strings
    return 1 + len(b"".join(syntax.split(b'"')[0::2]))


def parsed_size_bound(data: bytes, values: int) -> int:
    """At least the bytes of Python objects that parsing ``data``, of at most ``values`` values, builds."""
    return size_bound(len(data), values, wide=not data.isascii() or b"\\u" in data)


def size_bound(length: int, values: int, *, wide: bool = True) -> int:
    """At least the bytes of Python objects parsed from ``length`` bytes of JSON with ``values`` values:
    80 a value, a byte a character of ASCII text and four of ``wide`` text (one character outside the Basic
    Multilingual Plane makes its whole string four bytes a character), and 64 KiB for what holds them."""
    return (4 if wide else 1) * length + 80 * values + 64 * 1024


def check_json_values(data: bytes, limit: int) -> int:
    """Raise UntrustedDataError unless ``data`` holds at most ``limit`` JSON values; returns the bound."""
    bound = json_value_bound(data, limit)
    if bound > limit:
        raise UntrustedDataError(f"JSON of more than {limit:,} values")
    return bound


def loads(data: bytes, *, max_values: int) -> Any:
    """Parse untrusted JSON of at most ``max_values`` values: strings clean, numbers finite.

    Raises UntrustedDataError for anything else (too many values, invalid JSON, NaN or an infinite number,
    nesting deep enough to exhaust a parser's recursion)."""
    check_json_values(data, max_values)
    try:
        try:
            value = from_json(data, allow_inf_nan=False)  # straight from bytes; its strings are valid
        except ValueError:  # bad UTF-8, an escaped lone surrogate, or not JSON: parse again with repairs
            return _repaired(json.loads(data.decode("utf-8", "replace"), parse_constant=_refuse_constant))
        _check_finite(value)
        return value
    except (ValueError, RecursionError) as exc:
        raise UntrustedDataError(f"not valid JSON: {str(exc)[:200]}") from None


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate (which no UTF-8 writer accepts) replaced by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def _check_finite(value: Any) -> None:
    """ValueError for a number out of range anywhere in ``value`` (``1e999`` parses as infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a number out of range")
    if isinstance(value, list | dict):
        for item in value.values() if isinstance(value, dict) else value:
            _check_finite(item)


def _repaired(value: Any) -> Any:
    """``value`` with its strings cleaned; ValueError for a number out of range."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_repaired(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(key): _repaired(item) for key, item in value.items()}
    _check_finite(value)
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")
