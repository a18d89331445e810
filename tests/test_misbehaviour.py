"""Counting a sandbox's misdeeds without letting it flood the log."""

from __future__ import annotations

from structlog.testing import capture_logs

from rlmbox.misbehaviour import Misbehaviour


def test_every_misdeed_is_counted_but_each_kind_logged_once_an_interval():
    misbehaviour = Misbehaviour("s1")
    with capture_logs() as logs:
        for _ in range(10_000):
            misbehaviour.record("bridge_connection_flood")
        misbehaviour.record("undecodable_kernel_message", channel="iopub")
    assert misbehaviour.counts == {"bridge_connection_flood": 10_000, "undecodable_kernel_message": 1}
    assert [(e["kind"], e["session"], e["suppressed"]) for e in logs] == [
        ("bridge_connection_flood", "s1", 0),
        ("undecodable_kernel_message", "s1", 0),
    ]


def test_the_next_line_of_a_kind_says_how_many_were_held_back(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("rlmbox.log.time.monotonic", lambda: clock[0])
    misbehaviour = Misbehaviour()
    with capture_logs() as logs:
        for _ in range(5):
            misbehaviour.record("bridge_bad_token")
        clock[0] += 10.0
        misbehaviour.record("bridge_bad_token")
    assert [e["suppressed"] for e in logs] == [0, 4]
