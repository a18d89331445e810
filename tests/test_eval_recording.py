"""Record and replay of model calls."""

from __future__ import annotations

import asyncio

import pytest

from rlmbox.evals.recording import RecordingLMClient, ReplayMiss
from rlmbox.llm import Completion


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, model, messages, *, timeout_s=None):
        self.calls += 1
        return Completion(f"answer {self.calls}", model, 3, 2, 0.01, 0.5, 1)


def test_a_recorded_call_is_answered_from_disk_the_same_way(tmp_path):
    inner = Counting()
    recorder = RecordingLMClient(inner, tmp_path, params={"temperature": 0}, replay=False)
    ask = [{"role": "user", "content": "q"}]

    async def main():
        first = await recorder.complete("m", ask)
        again = await recorder.complete("m", ask)
        other = await recorder.complete("m", [{"role": "user", "content": "other"}])
        replayer = RecordingLMClient(None, tmp_path, params={"temperature": 0}, replay=True)
        replayed = await replayer.complete("m", ask)
        with pytest.raises(ReplayMiss, match="no recorded answer"):
            await RecordingLMClient(None, tmp_path, params={"temperature": 1}, replay=True).complete("m", ask)
        return first, again, other, replayed

    first, again, other, replayed = asyncio.run(main())
    assert first == again == replayed and other.text == "answer 2"
    assert inner.calls == 2 and recorder.hits == 1
