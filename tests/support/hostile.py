"""Cells that attack the host process, not the container: each function returns the source of one cell.

    run_beside_neighbour([hostile.frame_flood()], runtime_dir, tmp_path)      # support.neighbour
    run_attack([hostile.lone_surrogate("final")], runtime_dir, tmp_path)      # support.attacks

The cells speak to the host directly, past every check the kernel-side helpers make: on the kernel's own
iopub socket (raw frames, or messages signed with the session's key) and on the bridge socket. A cell that
gets an answer prints it on one line after ``REPORT:`` (see ``AttackRun.report``).
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "HARMLESS",
    "bridge_connection_flood",
    "bridge_json_amplification",
    "frame_flood",
    "lone_surrogate",
    "multipart_memory",
    "zmq_abort",
]

# A cell that attacks nothing: the baseline the others are measured against.
HARMLESS = "print(1)"

# The running cell's request, and a sender that bypasses the kernel's output cap (it wraps the instance's
# ``send``; the class's is the original).
_FORGE = """
import json
kernel = get_ipython().kernel
session = kernel.session
parent = kernel.get_parent()['header']

def send(msg_type, parent_header, content):
    type(session).send(session, kernel.iopub_socket, msg_type, content, parent=parent_header)
"""

# A raw connection to the bridge: the session's token, and one framed exchange.
_BRIDGE = """
import json, socket, struct, threading
session_file = json.load(open('/rlmbox/session.json'))

def exchange(frame, timeout):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect('/rlmbox/bridge.sock')
        s.sendall(frame)
        data = b''
        while len(data) < 4 or len(data) < 4 + struct.unpack('>I', data[:4])[0]:
            chunk = s.recv(1 << 16)
            if not chunk:
                return 'connection closed'
            data += chunk
        reply = json.loads(data[4:])
        if reply.get('ok'):
            return 'ANSWERED'
        return reply['error']['type'] + ': ' + reply['error']['message'][:120]
    except OSError as e:
        return type(e).__name__ + ': ' + str(e)[:80]
    finally:
        s.close()
"""

SurrogatePlace = Literal["stream", "result", "error", "final"]

_SURROGATE_MESSAGES: dict[str, str] = {
    "stream": "'stream', {'name': 'stdout', 'text': bad}",
    "result": "'execute_result', {'data': {'text/plain': bad}, 'metadata': {}, 'execution_count': 1}",
    "error": "'error', {'ename': 'ValueError', 'evalue': bad, 'traceback': ['ValueError: ' + bad]}",
    "final": (
        "'display_data', {'data': {'application/vnd.rlmbox.final+json': {'answer': bad}}, 'metadata': {}}"
    ),
}


def zmq_abort(
    *,
    frames: int = 20_000,
    frame_bytes: int = 1000,
    sends: int = 3,
    sleep_s: float = 0.05,
    from_sent: bool = True,
) -> str:
    """Multipart iopub messages of many small frames, then SIGKILL the kernel while the host reads them.

    The kill comes ``sleep_s`` after the kernel's IO thread has handed the last message to ZMQ, when the
    host is likely inside one (0.03-0.06 s: the host aborted at the first try in 6 of 6 tries on a 2-core
    machine). With ``from_sent=False`` the sleep starts when the sends are queued instead (with 0.2 s: about
    one abort in 8 tries)."""
    wait = "sent = threading.Event()\nkernel.iopub_thread.schedule(sent.set)\nsent.wait()\n"
    return f"""
import os, signal, threading, time
kernel = get_ipython().kernel
sock = kernel.iopub_socket
frames = [b'x' * {frame_bytes}] * {frames}
for _ in range({sends}):
    sock.send_multipart(frames)
{wait if from_sent else ""}time.sleep({sleep_s})
os.kill(os.getpid(), signal.SIGKILL)
"""


def multipart_memory(*, frames: int = 80, frame_bytes: int = 12_000_000) -> str:
    """One iopub message of ``frames`` frames, each the same ``frame_bytes`` buffer: each frame is under the
    host's frame limit, the message is not. Sent without copying, so the kernel holds one buffer."""
    return f"""
sock = get_ipython().kernel.iopub_socket
buf = b'm' * {frame_bytes}
sock.send_multipart([buf] * {frames}, copy=False)
print('REPORT:', {frames * frame_bytes})
"""


def bridge_json_amplification(
    *,
    field: Literal["queries", "prompts"] = "queries",
    item: str = "0",
    body_bytes: int | None = None,
    connections: int = 1,
    timeout_s: float = 600.0,
) -> str:
    """Bridge requests of tiny invalid JSON values (``{"op":"rlm_query",...,"queries":[0,0,...]}``), each
    body just under the bridge's frame cap (or ``body_bytes``), on ``connections`` connections at once.

    What one 2 MiB body cost the host to parse and refuse (pydantic 2.14, one validation error per value):
    ``queries`` of ``0`` x851 its size, ``prompts`` of ``0`` x601, of ``[]`` x438, of ``null`` x240; a body
    at the 32 MiB cap scales that to 14-27 GiB.
    """
    op = "rlm_query" if field == "queries" else "llm_query"
    return (
        _BRIDGE
        + f"""
head = json.dumps({{'op': {op!r}, 'id': 1, 'token': session_file['token']}})[:-1] + ', "{field}": ['
limit = {body_bytes!r} or session_file['max_request_bytes']
item = {item!r}.encode()
count = (limit - len(head) - 2) // (len(item) + 1)
body = head.encode() + (item + b',') * (count - 1) + item + b']}}'
frame = struct.pack('>I', len(body)) + body
del body
results = [None] * {connections}

def attack(i):
    results[i] = exchange(frame, {timeout_s})

threads = [threading.Thread(target=attack, args=(i,)) for i in range({connections})]
for t in threads:
    t.start()
for t in threads:
    t.join()
print('REPORT:', [len(frame) - 4, count, results])
"""
    )


def lone_surrogate(place: SurrogatePlace = "stream") -> str:
    """A signed iopub message for the running cell whose JSON carries a lone surrogate (``\\ud800``): in a
    stream text, an execute_result's text/plain, an error's evalue, or a FINAL answer."""
    return (
        _FORGE
        + f"""
bad = 'lone ' + chr(0xD800) + ' surrogate'
msg_type, content = {_SURROGATE_MESSAGES[place]}
parts = [
    json.dumps(part, default=str).encode()  # ASCII: the surrogate goes as the escape \\ud800
    for part in (session.msg_header(msg_type), parent, {{}}, content)
]
kernel.iopub_socket.send_multipart([b'<IDS|MSG>', session.sign(parts), *parts])
print('forged')
"""
    )


def bridge_connection_flood(*, seconds: float = 10.0, threads: int = 1) -> str:
    """Connect to the bridge socket and close at once, in a tight loop, for ``seconds``, from ``threads``."""
    return f"""
import errno, socket, threading, time
deadline = time.monotonic() + {seconds}
counts, errors = [0] * {threads}, {{}}

def flood(i):
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect('/rlmbox/bridge.sock')
            counts[i] += 1
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
        finally:
            s.close()

workers = [threading.Thread(target=flood, args=(i,)) for i in range({threads})]
for w in workers:
    w.start()
for w in workers:
    w.join()
print('REPORT:', [sum(counts), errors])
"""


def frame_flood(*, messages: int = 40, chars: int = 12_000_000) -> str:
    """``messages`` signed stream messages of ``chars`` characters each, past the kernel's output cap."""
    return (
        _FORGE
        + f"""
chunk = 'f' * {chars}
for _ in range({messages}):
    send('stream', parent, {{'name': 'stdout', 'text': chunk}})
print('sent')
"""
    )
