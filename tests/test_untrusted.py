"""Decoding what a sandbox sends: JSON bounded before it is parsed, clean text, finite numbers."""

from __future__ import annotations

import json
import random
import tracemalloc
from typing import Any

import pytest

from rlmbox.protocol import MAX_REQUEST_VALUES, parse_request, request_values
from rlmbox.untrusted import UntrustedDataError, check_json_values, clean_text, loads, parsed_size_bound

STRINGS = ["", "plain", 'a,b:"[{\\', "x\\\\", '\\"', "\\n\\t", "é, ü: 😀", '\\\\\\"', "[1, 2]", "{a: b}"]


def count(value: Any) -> int:
    """JSON values in ``value``, keys included, plus one per empty list or object (the bound's slack)."""
    if isinstance(value, list):
        return 1 + (not value) + sum(count(item) for item in value)
    if isinstance(value, dict):
        return 1 + (not value) + sum(1 + count(item) for item in value.values())
    return 1


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        return rng.choice([0, -12, 1.5e10, None, True, False, *STRINGS])
    if roll < 0.65:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    return {rng.choice(STRINGS) + str(i): random_json(rng, depth + 1) for i in range(rng.randint(0, 6))}


def test_the_value_bound_holds_exactly_at_the_limit_for_any_json():
    """For every document: accepted at its own value count, refused one below it. Strings full of commas,
    quotes and backslashes must neither hide values nor count as values."""
    rng = random.Random(7)
    for _ in range(3000):
        value = random_json(rng)
        for ensure_ascii in (True, False):
            data = json.dumps(value, ensure_ascii=ensure_ascii).encode()
            values = count(value)
            assert check_json_values(data, values) <= values, data
            if values > 1:
                with pytest.raises(UntrustedDataError):
                    check_json_values(data, values - 1)


@pytest.mark.parametrize(
    "data",
    [
        b"[" + b"[]," * 1_000_000 + b"[]]",  # ten bytes of JSON, three lists
        json.dumps({"prompts": [[] for _ in range(300_000)]}).encode(),
        json.dumps(["a"] * 200_000).encode(),
        json.dumps([{"k": 0}] * 300_000).encode(),
        json.dumps(["s"] * 99_000 + [[]] * 1_000_000).encode(),  # strings under the limit: they get masked
    ],
    ids=["empty-lists", "lists-as-prompts", "short-strings", "small-objects", "strings-and-lists"],
)
def test_amplifying_shapes_are_refused_before_parsing(data):
    tracemalloc.start()
    try:
        with pytest.raises(UntrustedDataError, match="more than 100,000 values"):
            loads(data, max_values=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Copies of the bytes and, when strings must be masked, two pieces a string: far below a parse.
    assert peak < 2 * len(data) + 16 * 2**20


def test_long_text_with_commas_inside_strings_is_not_mistaken_for_many_values():
    data = json.dumps({"text": 'a,b:c,"d",[e],{f}\\' * 200_000}).encode()
    assert loads(data, max_values=10)["text"].startswith('a,b:c,"d"')


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'"\\ud800"', "\ufffd"),  # an escaped lone surrogate: no UTF-8 writer accepts it
        (b'{"\\udfff": "x"}', {"\ufffd": "x"}),
        (b'"\xed\xa0\x80"', "\ufffd" * 3),  # a surrogate encoded as UTF-8 bytes
        (b'"\xff\xfe ok"', "\ufffd\ufffd ok"),  # not UTF-8 at all
        (b'["\\ud83d\\ude00"]', ["\U0001f600"]),  # a valid pair is kept
    ],
)
def test_invalid_unicode_is_replaced_not_raised_later(data, expected):
    value = loads(data, max_values=100)
    assert value == expected
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # what a trajectory writer does: no error


@pytest.mark.parametrize("data", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"[1e999]", b"[-1e400]"])
def test_non_finite_numbers_are_refused(data):
    with pytest.raises(UntrustedDataError):
        loads(data, max_values=100)


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deep_nesting_is_refused_with_a_clear_error(depth):
    with pytest.raises(UntrustedDataError):
        loads(b"[" * depth + b"]" * depth, max_values=10**9)


def test_clean_text_keeps_valid_text_as_it_is():
    text = "naïve 😀 text"
    assert clean_text(text) is text
    assert clean_text("a\ud800b\udc00") == "a\ufffdb\ufffd"


@pytest.mark.parametrize(
    "context",
    [
        [[] for _ in range(30_000)],
        [{} for _ in range(30_000)],
        [{f"k{i}": 0} for i in range(15_000)],
        [1.5] * 30_000,
        [f"s{i}" for i in range(30_000)],
        ["😀" + "a" * 10_000] * 50,
    ],
    ids=["empty-lists", "empty-objects", "objects", "floats", "strings", "wide-strings"],
)
def test_parsed_size_bound_covers_what_parsing_a_request_builds(context):
    """The budget the bridge charges a request is at least what parsing it allocates, whatever its shape."""
    query = {"prompt": "p", "context": context}
    body = json.dumps({"op": "rlm_query", "id": 1, "token": "t", "queries": [query]}).encode()
    tracemalloc.start()
    try:
        values = request_values(body, MAX_REQUEST_VALUES)
        request = parse_request(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert request.queries[0].context == context
    assert peak <= parsed_size_bound(body, values)
