"""What a sandbox did against the protocol, counted for its run and logged without letting it flood the log.

A hostile kernel can repeat a misdeed thousands of times a second (garbage on a channel, a connection to
the bridge opened and dropped in a loop). Each kind is logged the first time, then at most once per
``LOG_INTERVAL_S`` with the number of repeats it stands for; every occurrence is counted, and the counts
go into the run's trajectory and result.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import structlog

__all__ = ["LOG_INTERVAL_S", "Misbehaviour"]

log = structlog.get_logger(__name__)

LOG_INTERVAL_S = 10.0


class Misbehaviour:
    """The misdeeds of one sandbox (``session`` names it in the log), by kind."""

    def __init__(self, session: str = "") -> None:
        self.session = session
        self.counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def record(self, kind: str, **detail: Any) -> None:
        """Count one misdeed of ``kind``; log it unless that kind was logged less than an interval ago."""
        self.counts[kind] += 1
        now = time.monotonic()
        last = self._logged_at.get(kind)
        if last is not None and now - last < LOG_INTERVAL_S:
            self._unlogged[kind] += 1
            return
        self._logged_at[kind] = now
        repeats = self._unlogged.pop(kind, 0)
        log.warning("sandbox.misbehaved", kind=kind, session=self.session, unlogged_repeats=repeats, **detail)

    def total(self) -> int:
        return sum(self.counts.values())
