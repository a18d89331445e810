"""Record and replay of model calls."""

from __future__ import annotations

import asyncio

import pytest

from rlmbox.evals.recording import RecordingLMClient, ReplayMiss
from rlmbox.llm import Completion


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, model, messages, *, timeout_s=None, params=None):
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


def test_a_calls_own_params_are_part_of_its_key_and_reach_the_model(tmp_path):
    """A resampled turn (its own temperature and seed) is recorded apart from the plain call with the same
    messages; a call without params keeps the key recordings made before had (the digest below is that
    of the key material they used)."""
    seen = []

    class Model(Counting):
        async def complete(self, model, messages, *, timeout_s=None, params=None):
            seen.append(params)
            return await super().complete(model, messages, timeout_s=timeout_s, params=params)

    recorder = RecordingLMClient(Model(), tmp_path, params={"temperature": 0}, replay=False)
    ask = [{"role": "user", "content": "q"}]
    sampled = {"temperature": 0.7, "seed": 2}

    async def main():
        plain = await recorder.complete("m", ask)
        resampled = await recorder.complete("m", ask, params=sampled)
        replayer = RecordingLMClient(None, tmp_path, params={"temperature": 0}, replay=True)
        return plain, resampled, await replayer.complete("m", ask, params=sampled)

    plain, resampled, replayed = asyncio.run(main())
    assert plain.text == "answer 1" and resampled.text == replayed.text == "answer 2"
    assert seen == [None, sampled]
    assert recorder.key("m", ask) == recorder.key("m", ask, {}) != recorder.key("m", ask, sampled)
    assert recorder.key("m", ask) == "a64d05b54cd303720a1b7db4402f6229612676ee2ceb68ed2e46b47016197dac"
