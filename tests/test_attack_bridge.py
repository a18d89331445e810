"""Escape suite, bridge: sandboxed code spending past its budget or speaking garbage to the host's socket.

The bridge is the one door from the sandbox to the host; these attacks talk to it both through
``llm_query`` and over raw sockets, bypassing every check the kernel-side helpers make.
"""

from __future__ import annotations

import ast
import asyncio
import time

import pytest

from rlmbox import RLM, Settings

from support.attacks import run_attack
from support.containers import rlmbox_containers
from support.openai_server import Reply, Script, ScriptedOpenAIServer
from support.scripted_run import SUB_SEEN, repl, scripted_settings

pytestmark = [pytest.mark.docker, pytest.mark.attack("bridge")]

RAW_BRIDGE = r"""
import json, socket, struct, threading, time
session = json.load(open('/rlmbox/session.json'))

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect('/rlmbox/bridge.sock')
    s.settimeout(5)
    return s

def frame(fields):
    body = json.dumps({'op': 'llm_query', 'id': 7, 'token': session['token'], 'prompts': ['hi'], **fields})
    return struct.pack('>I', len(body)) + body.encode()

def send(raw):
    s = connect()
    try:
        s.sendall(raw)
        head = s.recv(4)
        if len(head) < 4:
            return 'connection closed'
        size, data = struct.unpack('>I', head)[0], b''
        while len(data) < size:
            data += s.recv(size - len(data))
        reply = json.loads(data)
        if reply['ok']:
            return 'ANSWERED'
        return reply['error']['type'] + ': ' + reply['error']['message'][:60]
    except socket.timeout:
        return 'no answer'
    finally:
        s.close()

report = {
    'wrong token': send(frame({'token': 'x' * 43})),
    'oversize prompt over a raw socket': send(frame({'prompts': ['x' * (session['max_prompt_chars'] + 1)]})),
    'batch over the limit over a raw socket': send(frame({'prompts': ['x'] * 100_000})),
    'garbage bytes': send(b'\x00\xff' * 1000),
    'frame header claiming 2 GB': send(struct.pack('>I', 2**31)),
    'invalid JSON': send(struct.pack('>I', 5) + b'{{{{{'),
    'unknown operation': send(frame({'op': 'shell', 'cmd': 'id'})),
}
held, stop = [], threading.Event()
for _ in range(20):  # partial frames, never finished
    s = connect()
    s.sendall(struct.pack('>I', 1000) + b'{"op": "llm')
    held.append(s)

def slow_writer():
    s = connect()
    held.append(s)
    for byte in frame({'prompts': ['slow']}):
        if stop.wait(0.2):
            return
        s.send(bytes([byte]))

writers = [threading.Thread(target=slow_writer, daemon=True) for _ in range(10)]
for writer in writers:
    writer.start()
time.sleep(0.5)
started = time.perf_counter()
answer = llm_query('ping while 30 connections hang')
report['llm_query while 30 connections hang'] = [answer, round(time.perf_counter() - started, 3)]
time.sleep(HOLD_S)
stop.set()
for s in held:
    s.close()
print('REPORT:', report)
"""


def test_raw_garbage_and_slow_writers_block_nobody(runtime_dir, tmp_path, observe):
    """One session attacks its bridge socket while a second session, in the same host process, keeps
    making sub-calls: neither the attacker's own llm_query nor the victim's may stall."""
    victim_cells = [
        "import time\nlatencies = []\nfor i in range(30):\n    t = time.perf_counter()\n"
        "    llm_query(f'victim {i}')\n    latencies.append(time.perf_counter() - t)\n    time.sleep(0.05)\n"
        "print('REPORT:', [len(latencies), round(max(latencies), 3)])"
    ]
    script = Script(
        {
            "root-a": [
                repl(RAW_BRIDGE.replace("HOLD_S", "2")),
                repl("print('alive')"),
                Reply(text="FINAL(a)"),
            ],
            "root-b": [repl(victim_cells[0]), Reply(text="FINAL(b)")],
        },
        default=Reply(text="pong"),
    )

    def settings(root: str, server: ScriptedOpenAIServer) -> Settings:
        return scripted_settings(server.url, runtime_dir, tmp_path, llm={"model": f"openai/{root}"})

    async def both(server: ScriptedOpenAIServer):
        return await asyncio.gather(
            RLM(settings("root-a", server)).arun("ctx", "attack"),
            RLM(settings("root-b", server)).arun("ctx", "work"),
        )

    with ScriptedOpenAIServer(script) as server:
        attacker, victim = asyncio.run(both(server))
    assert attacker.status == victim.status == "completed"
    attack_feedback = script.requests_for("root-a")[1]["messages"][-1]["content"]
    victim_feedback = script.requests_for("root-b")[1]["messages"][-1]["content"]
    report = ast.literal_eval(attack_feedback.split("REPORT:", 1)[1].split("\n", 1)[0])
    calls, slowest = ast.literal_eval(victim_feedback.split("REPORT:", 1)[1].split("\n", 1)[0])
    assert report["wrong token"].startswith("ProtocolError: bad bridge token")
    assert report["oversize prompt over a raw socket"].startswith("ProtocolError: prompt of")
    assert report["batch over the limit over a raw socket"].startswith("ProtocolError:")
    # Garbage read as a length below the limit leaves the host waiting for the rest of that frame: only
    # this connection waits (and its claimed bytes count against the session's bridge budget).
    assert report["garbage bytes"] in {"no answer", "connection closed"}
    for name in ("frame header claiming 2 GB", "invalid JSON", "unknown operation"):
        assert report[name] == "connection closed" or report[name].startswith("ProtocolError"), name
    answer, latency = report.pop("llm_query while 30 connections hang")
    assert answer == "pong" and latency < 2.0
    assert calls == 30 and slowest < 2.0
    assert "alive" in script.requests_for("root-a")[2]["messages"][-1]["content"]
    assert rlmbox_containers(runtime_dir) == []
    report["garbage bytes"] = "read as a 16 MiB frame header: only this connection waits for the body"
    for name, outcome in report.items():
        observe(name, outcome)
    observe(
        "20 partial frames + 10 one-byte-a-200ms writers",
        f"the session's own llm_query answered in {latency}s",
    )
    observe("the same, seen from another session", f"30 sub-calls, slowest {slowest}s: not stalled")


def test_flooding_llm_query_past_the_budget_is_refused(runtime_dir, tmp_path, observe):
    flood = """
answered = refused = 0
for i in range(60):
    try:
        llm_query(f'question {i}')
        answered += 1
    except BudgetExceededError:
        refused += 1
try:
    llm_query_batched(['more'] * 5)
except BudgetExceededError as e:
    refused += 5
print('REPORT:', [answered, refused])
"""
    run = run_attack([flood], runtime_dir, tmp_path, limits={"max_sub_calls": 10}, sub_model=Reply(text="ok"))
    assert run.report(0) == [10, 55]
    assert len(run.script.requests_for(SUB_SEEN)) == run.result.sub_calls == 10
    assert run.survived
    observe("65 sub-calls against a budget of 10", "10 answered, 55 refused with BudgetExceededError")


def test_calls_from_a_thread_that_outlives_the_run_are_refused_or_counted(runtime_dir, tmp_path, observe):
    spawn = """
import threading
results = []
def hammer():
    while True:
        try:
            results.append(llm_query('background'))
        except Exception as e:
            results.append(type(e).__name__)
threading.Thread(target=hammer, daemon=True).start()
import time
time.sleep(0.3)
print('started', len(results))
"""
    run = run_attack([spawn], runtime_dir, tmp_path, sub_model=Reply(text="ok"))
    sent = len(run.script.requests_for(SUB_SEEN))
    logged = sum(1 for e in run.events if e["event"] == "sub_call")
    assert sent == logged == run.result.sub_calls > 0  # every call that reached the model was counted
    time.sleep(0.5)
    assert len(run.script.requests_for(SUB_SEEN)) == sent  # none after the run ended
    observe("a thread calling llm_query forever", f"{sent} calls, every one in the ledger and the trajectory")


def test_a_model_the_run_did_not_configure_is_refused(runtime_dir, tmp_path, observe):
    run = run_attack(["llm_query('x', model='openai/gpt-5')"], runtime_dir, tmp_path)
    assert "LLMQueryError" in run.feedback[0] and "not configured for this run" in run.feedback[0]
    assert run.script.requests_for("gpt-5") == []
    observe("llm_query(model='openai/gpt-5')", "LLMQueryError: not configured for this run")


def test_a_fan_out_of_child_rlms_past_the_budget_is_refused_whole(runtime_dir, tmp_path, observe):
    bomb = """
try:
    rlm_query_batched(['spawn'] * 500)
except BudgetExceededError as e:
    print('REPORT:', repr(str(e)))
"""
    run = run_attack([bomb], runtime_dir, tmp_path, limits={"max_depth": 2})
    assert "not enough budget left for 500 child RLM(s)" in run.report(0)
    assert run.result.tree.node_count == 1 and run.result.sub_calls == 0  # nothing started, nothing held
    assert run.survived and run.leftovers == []
    observe(
        "rlm_query_batched of 500 children",
        "refused whole by the tree's iteration budget; no sandbox started",
    )


def test_contexts_that_are_not_json_never_leave_the_sandbox(runtime_dir, tmp_path, observe):
    probes = """
deep = []
for _ in range(100_000):
    deep = [deep]
outcomes = []
for value in (object(), {1, 2}, deep, [float('nan')]):
    try:
        rlm_query('x', context=value)
    except TypeError as e:
        outcomes.append(str(e)[:40])
print('REPORT:', outcomes)
"""
    run = run_attack([probes], runtime_dir, tmp_path, limits={"max_depth": 2})
    assert len(run.report(0)) == 4 and all("context must" in text for text in run.report(0))
    assert run.result.tree.node_count == 1 and run.result.sub_calls == 0
    assert run.survived and run.leftovers == []
    observe("rlm_query contexts: an object, a set, 100,000-deep nesting, NaN", "TypeError in the cell")


def test_a_cell_spinning_while_a_thread_keeps_the_bridge_busy_is_still_cut_off(
    runtime_dir, tmp_path, observe
):
    # Time waiting for the host does not count against a cell's time limit, up to ten times the limit; so a
    # thread keeping a call in flight buys the spinning cell at most that, even with no wall-clock budget.
    spin = """
import threading
def hammer():
    while True:
        llm_query('slow')
threading.Thread(target=hammer, daemon=True).start()
while True:
    pass
"""
    run = run_attack(
        [spin],
        runtime_dir,
        tmp_path,
        sandbox={"cell_timeout_s": 1, "interrupt_grace_s": 2},
        limits={"max_wall_s": None},
        sub_model=Reply(text="ok", delay_s=2),
    )
    (cell, _probe) = run.cells()
    assert cell["timed_out"] and 10 <= cell["duration_s"] < 20
    assert run.survived and run.leftovers == []
    observe(
        "a spinning cell whose thread keeps an llm_query in flight, no wall-clock budget",
        f"interrupted after {cell['duration_s']:.1f}s: its 1s limit plus at most 10x that of waiting",
    )
