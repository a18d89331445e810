"""Escape suite, host: attacks on the host process itself, each run beside a healthy neighbour session.

The kernel and the bridge are the attacker's way to the host: a sandbox must not be able to end the host
process, grow its memory past the stated bounds, or stall its event loop, and one session's failure must
never reach another. Each test runs the attack in one session while a neighbour in the same event loop
keeps making sub-calls (``support.neighbour``), and asserts the neighbour's work all arrived, no container
is left, and what the host process paid. The figures go in the table of docs/SECURITY.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlmbox.protocol import MAX_REQUEST_VALUES
from rlmbox.untrusted import UntrustedDataError, check_json_values

from support import hostile
from support.attacks import run_attack
from support.neighbour import PairRun, run_beside_neighbour
from support.openai_server import Reply

pytestmark = [pytest.mark.docker, pytest.mark.attack("host")]

MiB = 2**20


def impact(pair: PairRun) -> str:
    host = pair.host
    return (
        f"host peak RSS +{host.peak_rss_growth / MiB:.0f} MiB, longest loop stall "
        f"{host.max_loop_stall_s * 1000:.0f} ms, {host.log_lines} log lines; neighbour: "
        f"{pair.neighbour_cells} cells, all answered"
    )


def deaths(pair: PairRun) -> list[str]:
    return [e["reason"] for e in pair.attacker_events if e["event"] == "kernel_died"]


def assert_contained(pair: PairRun) -> None:
    """The attacker's run went on to its probe, the neighbour's work all arrived, nothing was left."""
    assert pair.attacker is not None, f"the attacker's run raised {pair.attacker_error!r}"
    assert pair.attacker.survived
    assert pair.neighbour_ok, pair.neighbour_error
    assert pair.leftovers == []


def test_a_kernel_dying_in_the_middle_of_a_message_ends_only_its_kernel(runtime_dir, tmp_path, observe):
    """With libzmq in the host, a kernel killed while the host read one of its many-frame messages made
    libzmq assert (``!_more``, fq.cpp) and the whole host process abort: every session gone."""
    cells = [f"{hostile.zmq_abort()}\n# attempt {n}" for n in range(3)]  # the same reply thrice ends a run
    pair = run_beside_neighbour(cells, runtime_dir, tmp_path, sandbox={"memory": "1g"})
    assert_contained(pair)
    assert len(deaths(pair)) == 3
    observe(
        "a kernel killed while the host reads its 20,000-frame messages, three times",
        f"each time only its channel closed and the kernel was replaced; {impact(pair)}",
    )


def test_a_message_of_many_large_frames_is_cut_off_at_its_byte_limit(runtime_dir, tmp_path, observe):
    """libzmq buffered a whole message whatever its frame count: 80 frames of 12 MB cost the host 940 MiB."""
    pair = run_beside_neighbour([hostile.multipart_memory()], runtime_dir, tmp_path, sandbox={"memory": "1g"})
    assert_contained(pair)
    (death,) = deaths(pair)
    assert "broke its iopub channel (a message of more than 13," in death
    assert pair.host.peak_rss_growth < 100 * MiB  # at most one message's worth is ever read
    observe("one iopub message of 80 frames of 12 MB", f"cut off at 13 MiB, kernel replaced; {impact(pair)}")


def test_a_message_one_frame_over_the_limit_breaks_the_channel(runtime_dir, tmp_path, observe):
    at_limit = "get_ipython().kernel.iopub_socket.send_multipart([b'f'] * 16)\nprint('sixteen sent')"
    over = "get_ipython().kernel.iopub_socket.send_multipart([b'f'] * 17)\nimport time\ntime.sleep(30)"
    run = run_attack([at_limit, over], runtime_dir, tmp_path)
    deaths_seen = [e["reason"] for e in run.events if e["event"] == "kernel_died"]
    assert "sixteen sent" in run.feedback[0]  # 16 frames: dropped as undecodable, the channel stays
    assert deaths_seen == [
        "the kernel broke its iopub channel (a message of more than 16 frames); it was stopped"
    ]
    assert run.result.tree.misbehaviour["undecodable_kernel_message"] >= 1
    assert run.survived and run.leftovers == []
    observe(
        "iopub messages of 16 and 17 frames", "16: dropped as garbage; 17: channel broken, kernel replaced"
    )


def test_raw_bytes_written_on_the_kernels_own_connection_get_it_replaced(runtime_dir, tmp_path, observe):
    """Past libzmq: the kernel finds the host's iopub connection among its descriptors and writes a frame
    header announcing a terabyte. The host reads the nine bytes of the header, never the body."""
    inject = """
import os, socket
done = 0
for fd in map(int, os.listdir('/proc/self/fd')):
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        continue
    try:
        s.getpeername()  # only connected sockets: the host's connections, not the listeners
        if s.family == socket.AF_UNIX and s.getsockname() == '/rlmbox-ipc/k-2':
            s.send(b'\\x02' + (2 ** 40).to_bytes(8, 'big'))
            done += 1
    except OSError:
        pass
    finally:
        s.close()
print('REPORT:', done)
import time
time.sleep(30)
"""
    run = run_attack([inject], runtime_dir, tmp_path)
    (death,) = [e["reason"] for e in run.events if e["event"] == "kernel_died"]
    assert "broke its iopub channel" in death
    assert run.survived and run.leftovers == []
    observe("a frame header announcing 2^40 bytes, written on the host's iopub connection", death)


@pytest.mark.parametrize(
    ("field", "item"), [("queries", "0"), ("prompts", "[]")], ids=["queries-of-numbers", "prompts-of-lists"]
)
def test_bridge_requests_of_tiny_json_values_are_refused_before_parsing(
    runtime_dir, tmp_path, observe, field, item
):
    """Four requests at once, each just under the 32 MiB frame cap and made of ten million tiny values:
    parsing them cost the host gigabytes and froze its event loop for seconds."""
    cell = hostile.bridge_json_amplification(field=field, item=item, connections=4)
    pair = run_beside_neighbour([cell], runtime_dir, tmp_path, sandbox={"memory": "1g"})
    assert_contained(pair)
    size, values, answers = pair.attacker.report(0)
    assert values > 10_000_000 and size > 31 * MiB
    assert all(f"more than {MAX_REQUEST_VALUES:,} JSON values" in answer for answer in answers), answers
    assert pair.host.peak_rss_growth < 300 * MiB  # the four bodies, read within the bridge's budget
    assert pair.attacker.result.tree.misbehaviour["bridge_malformed_request"] == 4
    observe(
        f"4 bridge requests of 32 MiB, each ~{values / 1e6:.0f} million tiny JSON values ({field} of {item})",
        f"refused unparsed; {impact(pair)}",
    )


def _context_at_value_limit() -> int:
    """How many list items make the kernel's rlm_query request hold exactly MAX_REQUEST_VALUES values (as
    the kernel's client encodes it; the token's length and letters do not change the count)."""

    def request(items: int) -> bytes:
        query = {"prompt": "count", "context": [0] * items}
        payload = {"op": "rlm_query", "id": 1, "token": "t" * 43, "queries": [query], "model": None}
        return json.dumps(payload, separators=(",", ":")).encode()

    # Sixteen values besides the items: the request, its five keys and five values (the queries list among
    # them), the query, its two keys and two values (the context list among them).
    items = MAX_REQUEST_VALUES - 16
    check_json_values(request(items), MAX_REQUEST_VALUES)
    with pytest.raises(UntrustedDataError):
        check_json_values(request(items + 1), MAX_REQUEST_VALUES)
    return items


def test_a_bridge_request_at_the_value_limit_is_answered_and_one_over_is_refused(
    runtime_dir, tmp_path, observe
):
    items = _context_at_value_limit()
    cell = f"""
for items in ({items}, {items + 1}):
    try:
        answer = rlm_query('count', context=[0] * items)
        print('REPORT-' + str(items) + ':', 'answered', answer[:40])
    except Exception as exc:
        print('REPORT-' + str(items) + ':', type(exc).__name__, str(exc)[:80])
"""
    run = run_attack([cell], runtime_dir, tmp_path, sub_model=_echo_size)
    assert f"REPORT-{items}: answered" in run.feedback[0]
    assert (
        f"REPORT-{items + 1}: LLMQueryError a request of more than {MAX_REQUEST_VALUES:,}" in run.feedback[0]
    )
    assert run.survived and run.leftovers == []
    observe(
        f"a bridge request of exactly {MAX_REQUEST_VALUES:,} JSON values, then one more",
        "the first answered, the second refused with its reason",
    )


def _echo_size(request: dict) -> Reply:
    return Reply(text=f"{len(request['messages'][-1]['content'])} chars")


@pytest.mark.parametrize("place", ["stream", "result", "error", "final"])
def test_a_lone_surrogate_from_the_kernel_is_replaced_at_the_boundary(runtime_dir, tmp_path, observe, place):
    """A signed message with an escaped lone surrogate made the trajectory writer raise UnicodeEncodeError
    out of RLM.arun: no result and no run_finished."""
    run = run_attack([hostile.lone_surrogate(place)], runtime_dir, tmp_path)
    lines = Path(run.result.trajectory).read_bytes().decode("utf-8").splitlines()  # strict: valid UTF-8
    events = [json.loads(line) for line in lines]
    assert events[-1]["event"] == "run_finished"
    if place == "final":
        assert run.result.answer == "lone \ufffd surrogate"
    else:
        assert "lone \ufffd surrogate" in run.feedback[0]
        assert run.survived
    assert run.leftovers == []
    observe(f"a lone surrogate in a forged {place} message", "replaced by U+FFFD; the trajectory stays valid")


def test_a_flood_of_bridge_connections_is_throttled_and_logged_once(runtime_dir, tmp_path, observe):
    """Connecting to the bridge and hanging up in a loop made the host write tens of thousands of log lines
    and spend more CPU than the flood's own duration."""
    cell = hostile.bridge_connection_flood(seconds=3, threads=8)
    pair = run_beside_neighbour([cell], runtime_dir, tmp_path)
    assert_contained(pair)
    connections, errors = pair.attacker.report(0)
    assert pair.attacker.result.tree.misbehaviour["bridge_connection_flood"] >= 1
    assert pair.host.log_lines <= 10
    observe(
        "8 threads connecting to the bridge and hanging up, for 3 s",
        f"{connections} connections accepted (a burst of 64, then 20 a second; the rest waited in the "
        f"kernel's connect{', errors ' + str(errors) if errors else ''}); {impact(pair)}",
    )
