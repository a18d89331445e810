"""What the built-in suites share."""

CHARS_PER_TOKEN = 4
"""Context lengths are given in tokens; the generators count about four characters a token."""
