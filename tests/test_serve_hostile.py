"""``rlmbox serve`` as a real server process, against clients that hold connections without authenticating
(slow headers, too many connections, a process out of descriptors) and an authenticated one whose body
never arrives. None of these may start a run, so no sandbox is needed."""

from __future__ import annotations

import json
import resource
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest

from support.openai_server import Script, ScriptedOpenAIServer
from support.scripted_run import ROOT, wait_for
from support.serving import start_serve

TOKEN = "hostile-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNREACHABLE = "http://127.0.0.1:9"
BOUND_S = 60.0  # every wait on the server is bounded by this

pytestmark = pytest.mark.attack("serve")


@dataclass
class Served:
    url: str
    port: int
    log: Path
    runs: Path

    def models_status(self, timeout: float = 10.0) -> int | None:
        """``GET /v1/models`` with a valid token on a new connection: its status, or None if it failed."""
        try:
            return httpx.get(f"{self.url}/v1/models", headers=AUTH, timeout=timeout).status_code
        except httpx.TransportError:
            return None

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


@contextmanager
def serving(
    tmp_path: Path, *flags: str, api_base: str = UNREACHABLE, nofile: int | None = None
) -> Iterator[Served]:
    """``rlmbox serve`` with ``flags``; ``nofile`` sets its descriptor limit (soft and hard)."""
    runtime_dir = Path(tempfile.mkdtemp(prefix="rbh-", dir="/tmp"))  # short: it would hold Unix sockets
    runs = tmp_path / "runs"
    log = tmp_path / "server.log"
    # A function run between fork and exec is safe only while no other thread may hold a lock.
    assert nofile is None or threading.active_count() == 1
    limit = None if nofile is None else partial(resource.setrlimit, resource.RLIMIT_NOFILE, (nofile, nofile))
    flags = ["--token", TOKEN, "--model", ROOT, "--api-base", api_base, "--warm-sandboxes", "0", *flags]
    with log.open("w") as stderr:
        process, url = start_serve(flags, runtime_dir=runtime_dir, runs=runs, log=stderr, preexec_fn=limit)
        try:
            yield Served(url, int(url.rsplit(":", 1)[1]), log, runs)
        finally:
            process.terminate()
            process.wait(timeout=BOUND_S)
            shutil.rmtree(runtime_dir, ignore_errors=True)


def connect(port: int) -> socket.socket:
    """A connection to the server; one it resets before ``connect`` returns is returned closed."""
    sock = socket.socket()
    sock.settimeout(BOUND_S)
    with suppress(ConnectionResetError):
        sock.connect(("127.0.0.1", port))
    return sock


class Watched:
    """Raw client sockets, and which of them the server has closed (end of stream or reset)."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks
        self.received = {id(s): b"" for s in socks}
        self.closed: set[int] = set()

    def poll(self) -> None:
        for sock in self.socks:
            if id(sock) in self.closed:
                continue
            sock.setblocking(False)
            try:
                while data := sock.recv(65536):
                    self.received[id(sock)] += data
                self.closed.add(id(sock))
            except BlockingIOError:
                pass
            except OSError:
                self.closed.add(id(sock))

    def all_closed(self) -> bool:
        self.poll()
        return len(self.closed) == len(self.socks)

    def none_closed(self) -> bool:
        self.poll()
        return not self.closed

    def trickle(self, data: bytes) -> None:
        """Send ``data`` on every socket still open, as a slow client does between its bytes."""
        for sock in self.socks:
            if id(sock) not in self.closed:
                with suppress(OSError):
                    sock.send(data)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def test_slow_headers_are_cut_off_after_the_header_timeout(tmp_path, observe):
    """Connections whose headers trickle in are closed; a valid client is served meanwhile."""
    with serving(tmp_path, "--header-timeout", "2") as served:
        slow = Watched([connect(served.port) for _ in range(20)])
        slow.trickle(b"GET /v1/models HTTP/1.1\r\nHost: rlmbox\r\nX-Slow: ")
        assert served.models_status() == 200

        def cut_off() -> bool:
            slow.trickle(b"a")
            return slow.all_closed()

        wait_for(cut_off, BOUND_S)
        assert not any(slow.received.values())  # closed without an answer
        slow.close()
    observe(
        "20 connections sending their headers a byte at a time (before: held without limit)",
        "closed at the header timeout; a valid client served meanwhile",
    )


def test_past_the_pending_cap_the_oldest_pending_connections_make_room(tmp_path, observe):
    """Past ``--max-pending`` connections without a token, each new one resets the oldest pending one, so
    silent connections cannot keep a new client out; a connection that presented a token is never counted
    and keeps being served."""
    with (
        serving(tmp_path, "--max-pending", "4", "--header-timeout", "120") as served,
        httpx.Client(
            base_url=served.url,
            headers=AUTH,
            limits=httpx.Limits(max_connections=1, keepalive_expiry=300),
            timeout=BOUND_S,
        ) as client,
    ):
        assert client.get("/v1/models").status_code == 200  # its connection is no longer pending
        oldest = Watched([connect(served.port) for _ in range(4)])  # the cap, filled by silent clients
        newer = Watched([connect(served.port) for _ in range(6)])  # accepted in order: each evicts one
        wait_for(oldest.all_closed, BOUND_S)
        assert not any(oldest.received.values())  # reset before anything was sent to them
        assert client.get("/v1/models").status_code == 200  # the same, authenticated connection
        assert served.models_status() == 200  # a new client gets in although the cap is full
        evicted = [json.loads(x) for x in served.log_lines() if "serve.pending_evicted" in x]
        assert evicted and evicted[0]["cap"] == 4
        assert len(evicted) == 1  # one line for all the evictions of the interval
        oldest.close()
        newer.close()
    observe(
        "10 silent connections against a cap of 4 pending",
        "the oldest reset to make room, one log line; new and authenticated clients served",
    )


def test_malformed_requests_are_logged_at_most_once_per_interval(tmp_path, observe):
    """Requests aiohttp cannot parse get a 400 each, but the log gets one line, without a traceback."""
    with serving(tmp_path) as served:
        for _ in range(20):
            bad = Watched([connect(served.port)])
            bad.trickle(b"GET /v1/models HTTP/1.1\r\nNot a header\r\n\r\n")
            wait_for(bad.all_closed, BOUND_S)
            assert b" 400 Bad Request" in next(iter(bad.received.values()))
            bad.close()
        lines = served.log_lines()
    assert not any("Traceback" in x for x in lines)
    logged = [json.loads(x) for x in lines if "serve.http_error" in x]
    assert 1 <= len(logged) <= 2 and "Invalid header" in logged[0]["error"]
    observe("20 malformed requests (before: a traceback each)", f"400 each; {len(logged)} log line")


def test_running_out_of_descriptors_is_logged_boundedly_and_survived(tmp_path, observe):
    """At the descriptor limit, failed accepts are logged at most once per interval, not once each; when
    the connections holding the descriptors close, valid clients are served again."""
    nofile = 96
    with serving(tmp_path, "--max-pending", "10000", "--header-timeout", "300", nofile=nofile) as served:
        attackers: list[socket.socket] = []
        for _ in range(nofile + 60):  # what the server cannot accept waits in its listen backlog
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", served.port))
            attackers.append(sock)
        wait_for(
            lambda: any("EMFILE" in x or "Too many open files" in x for x in served.log_lines()), BOUND_S
        )
        for sock in attackers:
            sock.close()
        wait_for(lambda: served.models_status(timeout=5) == 200, BOUND_S)
        lines = served.log_lines()
    # Startup, each failure interval and the recovery: a handful of lines, however many accepts failed.
    assert len(lines) <= 20, lines[:40]
    failed = [json.loads(x) for x in lines if "serve.accept_failed" in x]
    assert failed and failed[0]["error"] == "EMFILE" and failed[0]["fd_limit"] == nofile
    assert any("serve.accepting_again" in x for x in lines)
    observe(
        f"{nofile + 60} connections against a descriptor limit of {nofile} (before: 128 MB of log a minute)",
        f"{len(lines)} log lines in all; valid clients served again once they closed",
    )


def test_a_slow_body_ends_in_408_and_starts_no_run(tmp_path, observe):
    """An authenticated request whose body does not arrive in time is answered 408, its connection is
    closed, and no run starts."""
    script = Script()
    with (
        ScriptedOpenAIServer(script) as upstream,
        serving(tmp_path, "--body-timeout", "1", api_base=upstream.url) as served,
    ):
        body = json.dumps(
            {
                "model": f"rlmbox/{ROOT}",
                "messages": [{"role": "user", "content": "q"}],
                "context": "c" * 100_000,
            }
        ).encode()
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: rlmbox\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        slow = Watched([connect(served.port)])
        slow.trickle(head.encode() + body[:100])

        def answered() -> bool:
            slow.trickle(b"c")
            slow.poll()
            return b"\r\n\r\n" in next(iter(slow.received.values()))

        wait_for(answered, BOUND_S)
        answer = next(iter(slow.received.values()))
        status, headers = answer.split(b"\r\n", 1)
        assert status.startswith(b"HTTP/1.1 408") and b"Connection: close" in headers
        wait_for(slow.all_closed, BOUND_S)
        slow.close()
        assert served.models_status() == 200
    assert script.requests == [] and not list(served.runs.glob("*.jsonl"))
    observe("an authenticated request whose body trickles in", "408 at the body timeout; no run started")
