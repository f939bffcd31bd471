"""Protocol 2 event and callback frames, against a real worker (fault commands, no DSPy)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from .conftest import Worker


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    worker = Worker({"DSPEX_TEST_FAULTS": "1"}, ["--worker-id", "events"], lazy=True)
    try:
        worker.ready = worker.handshake()
        yield worker
    finally:
        worker.kill()


def _only_keys(frame: dict[str, Any], keys: set[str]) -> None:
    assert set(frame) == keys, frame


def test_handshake_announces_every_protocol_2_feature(worker: Worker) -> None:
    assert worker.ready["protocol"] == 2
    assert worker.ready["features"] == ["deadline", "events", "callbacks", "cancel", "logs"]


def test_events_only_for_a_request_that_asked(worker: Worker) -> None:
    quiet = worker.submit("emit_events", {"count": 3})
    assert worker.reply(quiet)["result"] == {"sent": 0}
    loud = worker.submit("emit_events", {"count": 3}, events=True)
    reply = worker.reply(loud)
    assert reply["result"] == {"sent": 3}
    frames = worker.frames_of(loud)
    assert frames[-1] == reply  # the reply comes last
    events = frames[:-1]
    assert [e["data"] for e in events] == [{"done": i, "total": 3} for i in (1, 2, 3)]
    for event in events:
        _only_keys(event, {"id", "event", "data"})
        assert event["id"] == loud
        assert event["event"] == "progress"
    assert worker.events.get(quiet) is None


def test_events_flag_must_be_a_bool(worker: Worker) -> None:
    reply = worker.request("ping", {}, events="yes")
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "InvalidArguments"
    assert reply["error"]["details"] == {"field": "events"}


def test_callback_answer_is_routed_to_its_caller(worker: Worker) -> None:
    request_id = worker.submit("call_host", {"name": "lookup", "args": {"city": "Paris"}})
    (call,) = worker.wait_calls(request_id, 1)
    _only_keys(call, {"id", "call", "name", "args"})
    assert call["id"] == request_id
    assert call["name"] == "lookup"
    assert call["args"] == {"city": "Paris", "index": 0}
    assert isinstance(call["call"], int)
    assert call["call"] >= 1
    worker.answer_call(call["call"], {"ok": True, "result": {"temp": 21, "unit": "C"}})
    reply = worker.reply(request_id)
    assert reply["result"] == {"results": [{"ok": True, "result": {"temp": 21, "unit": "C"}}]}
    # callbacks need no "events" flag, and the reply follows the callback
    assert worker.frames_of(request_id)[-1]["ok"] is True


def test_several_outstanding_callbacks_answered_out_of_order(worker: Worker) -> None:
    request_id = worker.submit("call_host", {"name": "tool", "count": 4})
    calls = worker.wait_calls(request_id, 4)
    ids = [c["call"] for c in calls]
    assert len(set(ids)) == 4  # unique within the worker
    by_index = {c["args"]["index"]: c["call"] for c in calls}
    for index in (3, 1, 0, 2):
        worker.answer_call(by_index[index], {"ok": True, "result": index * 10})
    reply = worker.reply(request_id)
    assert reply["result"]["results"] == [{"ok": True, "result": i * 10} for i in range(4)]


def test_error_answer_raises_callback_error_with_details(worker: Worker) -> None:
    request_id = worker.submit("call_host", {"name": "broken"})
    (call,) = worker.wait_calls(request_id, 1)
    error = {"kind": "ToolFailed", "message": "no such city", "details": {"city": "Atlantis"}}
    worker.answer_call(call["call"], {"ok": False, "error": error})
    result = worker.reply(request_id)["result"]
    assert result == {"results": [{"ok": False, "error": error}]}


def test_unknown_and_malformed_answers_are_ignored(worker: Worker) -> None:
    before = worker.call("get_stats")["callbacks"]
    worker.watch_stderr("answer to an unknown callback 987654")
    worker.send({"call": 987654, "ok": True, "result": 1})
    worker.send({"call": "seven", "ok": True})
    worker.send({"call": 5, "result": 1})  # no ok
    # none of them got a reply; the worker is still in step
    assert worker.call("ping")["status"] == "ok"
    after = worker.call("get_stats")["callbacks"]
    assert after["ignored"] == before["ignored"] + 3
    worker.sync_stderr()
    assert worker.stderr_watch["answer to an unknown callback 987654"] == 1
    # a callback still works afterwards, and a second answer to it is ignored
    request_id = worker.submit("call_host", {"name": "again"})
    (call,) = worker.wait_calls(request_id, 1)
    worker.answer_call(call["call"], {"ok": True, "result": "first"})
    assert worker.reply(request_id)["result"]["results"][0]["result"] == "first"
    worker.answer_call(call["call"], {"ok": True, "result": "second"})
    assert worker.call("ping")["status"] == "ok"


def test_error_answer_without_error_map(worker: Worker) -> None:
    request_id = worker.submit("call_host", {"name": "sloppy"})
    (call,) = worker.wait_calls(request_id, 1)
    worker.answer_call(call["call"], {"ok": False})
    (entry,) = worker.reply(request_id)["result"]["results"]
    assert entry["ok"] is False
    assert entry["error"]["kind"] == "ProtocolError"


def test_cancel_releases_pending_callbacks(worker: Worker) -> None:
    request_id = worker.submit("call_host", {"name": "slow", "count": 2})
    calls = worker.wait_calls(request_id, 2)
    cancel = worker.submit("cancel", {"request_id": request_id})
    reply = worker.reply(request_id)
    assert reply["error"]["kind"] == "Cancelled"
    assert worker.reply(cancel)["result"] == {"cancelled": True}
    # the waiting threads were released: nothing is pending any more
    stats = worker.wait_stats(lambda r: r["in_flight"] == 1)
    assert stats["late_results"] >= 1
    assert worker.call("get_stats")["callbacks"]["pending"] == 0
    # a late answer to a released callback is ignored, and nothing follows the reply
    worker.answer_call(calls[0]["call"], {"ok": True, "result": "too late"})
    assert worker.call("ping")["status"] == "ok"
    assert worker.frames_of(request_id)[-1] == reply


def test_deadline_releases_a_pending_callback(worker: Worker) -> None:
    request_id = worker.submit("call_host", {"name": "never"}, deadline_ms=300)
    worker.wait_calls(request_id, 1)
    reply = worker.reply(request_id, timeout=5.0)
    assert reply["error"]["kind"] == "DeadlineExceeded"
    worker.wait_stats(lambda r: r["in_flight"] == 1)
    assert worker.call("get_stats")["callbacks"]["pending"] == 0


def test_callback_timeout(worker: Worker) -> None:
    request_id = worker.submit("call_host", {"name": "unanswered", "timeout_ms": 50})
    (entry,) = worker.reply(request_id)["result"]["results"]
    assert entry["ok"] is False
    assert entry["error"]["kind"] == "Timeout"
    assert len(worker.calls[request_id]) == 1


def test_callbacks_of_many_requests_at_once(worker: Worker) -> None:
    """Callbacks of several requests in flight at once, answered as they come."""

    def handler(frame: dict[str, Any]) -> dict[str, Any] | None:
        return {"ok": True, "result": [frame["name"], frame["args"]["index"]]}

    worker.call_handler = handler
    try:
        ids = [worker.submit("call_host", {"name": f"t{i}", "count": 3}) for i in range(5)]
        for i, request_id in enumerate(ids):
            results = worker.reply(request_id)["result"]["results"]
            assert results == [{"ok": True, "result": [f"t{i}", j]} for j in range(3)]
    finally:
        worker.call_handler = None


def test_answer_frame_is_plain_msgpack_map(worker: Worker) -> None:
    # a host frame with both "call" and "command" is a request (the command wins)
    reply = worker.request("ping", {}, call=3)
    assert reply["ok"] is True
    # a bare non-map frame is still a ProtocolError with id 0
    worker.send_body(msgpack.packb([1, 2, 3]))
    frame = worker.recv()
    assert frame["id"] == 0
    assert frame["error"]["kind"] == "ProtocolError"
