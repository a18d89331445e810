"""The kernel-side output cap, on messages shaped as ipykernel builds them (no kernel needed)."""

from __future__ import annotations

from rlmbox_kernel._output_cap import MAX_REPLY_BYTES, OutputCap, cut
from rlmbox_kernel._wire import DROPPED_MIME, FINAL_MIME


def message(kind: str, content: dict, parent: str = "cell-1") -> dict:
    return {"header": {"msg_type": kind}, "parent_header": {"msg_id": parent}, "content": content}


def test_cut_never_splits_a_character_and_counts_bytes():
    assert cut("abcdef", 4) == ("abcd", 2)
    assert cut("ééé", 3) == ("é", 4)  # two bytes a character: the second would not fit whole
    assert cut("short", 100) == ("short", 0)


def test_each_stream_of_a_cell_has_its_own_budget_and_excess_is_dropped():
    cap = OutputCap(10)
    first = cap.limit(message("stream", {"name": "stdout", "text": "0123456789abc"}))
    assert first["content"]["text"] == "0123456789"
    assert cap.limit(message("stream", {"name": "stdout", "text": "more"})) is None
    assert cap.limit(message("stream", {"name": "stderr", "text": "err"}))["content"]["text"] == "err"
    assert cap.take_dropped("cell-1") == 3 + 4 and cap.take_dropped("cell-1") == 0
    assert cap.limit(message("stream", {"name": "stdout", "text": "next cell"}, "cell-2")) is not None


def test_displays_keep_only_capped_plain_text():
    cap = OutputCap(5)
    shown = cap.limit(message("display_data", {"data": {"text/plain": "1234567", "image/png": "AAAA"}}))
    assert shown["content"]["data"] == {"text/plain": "12345"}
    assert cap.limit(message("display_data", {"data": {"image/png": "AAAA"}})) is None
    assert cap.take_dropped("cell-1") == 2 + len('"AAAA"') * 2


def test_final_answers_and_drop_reports_pass_untouched():
    cap = OutputCap(5)
    final = {"data": {FINAL_MIME: {"answer": "x" * 100}, "text/plain": "[final answer recorded]"}}
    assert cap.limit(message("display_data", final))["content"] == final
    report = {"data": {DROPPED_MIME: {"bytes": 3}, "text/plain": "[3 bytes dropped]"}}
    assert cap.limit(message("display_data", report))["content"] == report


def test_tracebacks_are_capped_on_iopub_and_in_replies():
    cap = OutputCap(100)
    error = cap.limit(message("error", {"ename": "E", "evalue": "v" * 10_000, "traceback": ["t" * 500] * 3}))
    assert len(error["content"]["evalue"]) == 2000 and len(error["content"]["traceback"][0]) == 100
    reply = {"status": "error", "evalue": "v", "traceback": ["t" * 100_000] * 3}
    capped = cap.limit(message("execute_reply", reply))
    assert len(capped["content"]["traceback"][0]) == MAX_REPLY_BYTES


def test_large_messages_of_other_kinds_are_dropped():
    cap = OutputCap(10)
    assert cap.limit(message("comm_msg", {"data": "z" * (MAX_REPLY_BYTES + 1)})) is None
    assert cap.limit(message("comm_msg", {"data": "small"})) is not None
    assert cap.limit(message("status", {"execution_state": "idle"})) is not None


def test_install_wraps_a_real_session_for_every_way_ipykernel_calls_send():
    from types import SimpleNamespace

    from jupyter_client.session import Session

    from rlmbox_kernel._output_cap import install

    session = Session(key=b"k")
    sent: list[dict] = []

    def record(stream, msg_or_type, content=None, parent=None, ident=None, buffers=None, track=False, **kw):
        sent.append(msg_or_type)
        return msg_or_type

    session.send = record
    install(SimpleNamespace(kernel=SimpleNamespace(session=session)), 8)
    parent = session.msg("execute_request", {})["header"]
    # kernelbase sends replies with five positional arguments, send_response with nine.
    session.send(None, "kernel_info_reply", {"status": "ok"}, parent, [b"ident"])
    session.send(None, "execute_reply", {"status": "ok"}, parent, None, None, False, None, None)
    session.send(None, "stream", {"name": "stdout", "text": "0123456789"}, parent)
    session.send(None, "status", {"execution_state": "idle"}, parent)
    kinds = [m["header"]["msg_type"] for m in sent]
    assert kinds == ["kernel_info_reply", "execute_reply", "stream", "display_data", "status"]
    assert sent[2]["content"]["text"] == "01234567"
    assert sent[3]["content"]["data"][DROPPED_MIME] == {"bytes": 2}
    assert sent[3]["parent_header"]["msg_id"] == parent["msg_id"]
