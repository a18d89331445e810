"""What the built-in suites share."""

import hashlib

CHARS_PER_TOKEN = 4
"""Context lengths are given in tokens; the generators count about four characters a token."""


def task_seed(seed: int, length: int, index: int) -> int:
    """The generator seed of one task: distinct for every (seed, length, index)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{length}:{index}".encode()).digest()[:8], "big")
