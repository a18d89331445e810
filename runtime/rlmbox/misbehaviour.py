"""What a sandbox did against the protocol, counted for its run and logged without letting it flood the log.

A hostile kernel can repeat a misdeed thousands of times a second (garbage on a channel, a connection to
the bridge opened and dropped in a loop). Every occurrence is counted, and the counts go into the run's
trajectory and result; each kind is logged the first time, then at most once per ``LOG_INTERVAL_S`` with
the number of repeats held back.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog

from rlmbox.log import Throttled

__all__ = ["Misbehaviour"]

log = structlog.get_logger(__name__)


class Misbehaviour:
    """The misdeeds of one sandbox (``session`` names it in the log), by kind."""

    def __init__(self, session: str = "") -> None:
        self.session = session
        self.counts: Counter[str] = Counter()
        self._logs: dict[str, Throttled] = {}

    def record(self, kind: str, **detail: Any) -> None:
        """Count one misdeed of ``kind``; log it unless that kind was logged less than an interval ago."""
        self.counts[kind] += 1
        if kind not in self._logs:
            self._logs[kind] = Throttled(log.warning, "sandbox.misbehaved")
        self._logs[kind](kind=kind, session=self.session, **detail)
