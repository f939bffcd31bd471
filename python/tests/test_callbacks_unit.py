"""Unit tests of reply-slot events, abandon hooks and the callback table (no subprocess)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dspex_bridge.callbacks import CallbackError, CallbackTable
from dspex_bridge.errors import Cancelled, DeadlineExceeded, ToolError, from_exception
from dspex_bridge.plain import to_plain
from dspex_bridge.programs import program_hash
from dspex_bridge.requests import ReplySlot


class Sink:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def send(self, message: dict[str, Any]) -> None:
        with self.cond:
            self.frames.append(message)
            self.cond.notify_all()

    def wait(self, count: int) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.frames) >= count, 5.0), self.frames
            return list(self.frames)


def _slot(sink: Sink, table: CallbackTable | None = None, **kw: Any) -> ReplySlot:
    return ReplySlot(
        7, "t", time.monotonic(), kw.pop("deadline_ms", None), sink.send, callbacks=table, **kw
    )


def test_events_need_the_flag_and_stop_at_the_reply() -> None:
    sink = Sink()
    quiet = _slot(sink)
    assert quiet.event("progress", {"done": 1}) is False
    loud = _slot(sink, events=True)
    assert loud.event("progress", {"done": 1}) is True
    assert loud.answer({"id": 7, "ok": True, "result": 1})
    assert loud.event("progress", {"done": 2}) is False
    assert sink.frames == [
        {"id": 7, "event": "progress", "data": {"done": 1}},
        {"id": 7, "ok": True, "result": 1},
    ]


def test_abandon_hooks_run_once_and_late_hooks_at_once() -> None:
    sink = Sink()
    slot = _slot(sink)
    ran: list[str] = []
    slot.on_abandon(lambda: ran.append("a"))
    remove = slot.on_abandon(lambda: ran.append("removed"))
    remove()
    slot.on_abandon(lambda: 1 / 0)  # a failing hook breaks nothing
    assert slot.cancel(99)
    assert ran == ["a"]
    slot.on_abandon(lambda: ran.append("late"))
    assert ran == ["a", "late"]
    assert not slot.cancel(100)
    assert ran == ["a", "late"]


def test_a_normal_answer_runs_no_hook() -> None:
    sink = Sink()
    slot = _slot(sink)
    ran: list[str] = []
    slot.on_abandon(lambda: ran.append("x"))
    slot.answer({"id": 7, "ok": True, "result": None})
    assert ran == []


def _call_in_thread(
    slot: ReplySlot, name: str, out: list[Any], timeout: float | None = None
) -> threading.Thread:
    def run() -> None:
        try:
            out.append(slot.callback(name, {"x": (1, 2)}, timeout))
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_callback_round_trip_and_error_answer() -> None:
    sink, table = Sink(), CallbackTable()
    slot = _slot(sink, table)
    out: list[Any] = []
    thread = _call_in_thread(slot, "tool", out)
    (frame,) = sink.wait(1)
    assert frame == {"id": 7, "call": 1, "name": "tool", "args": {"x": [1, 2]}}
    table.answer({"call": 1, "ok": True, "result": {"v": 1}})
    thread.join(5)
    assert out == [{"v": 1}]
    thread = _call_in_thread(slot, "tool", out)
    sink.wait(2)
    table.answer(
        {"call": 2, "ok": False, "error": {"kind": "Boom", "message": "m", "details": {"a": 1}}}
    )
    thread.join(5)
    error = out[-1]
    assert isinstance(error, CallbackError)
    assert (error.kind, error.message, error.details, error.name, error.call_id) == (
        "Boom",
        "m",
        {"a": 1},
        "tool",
        2,
    )
    wire = from_exception(error)
    assert wire["kind"] == "ToolError"
    assert wire["details"]["tool"] == "tool"
    assert isinstance(error.as_bridge_error(), ToolError)
    assert table.snapshot() == {"sent": 2, "answered": 2, "ignored": 0, "pending": 0}


def test_abandonment_releases_waiting_callbacks() -> None:
    sink, table = Sink(), CallbackTable()
    slot = _slot(sink, table)
    out: list[Any] = []
    threads = [_call_in_thread(slot, f"t{i}", out) for i in range(3)]
    sink.wait(3)
    assert table.pending() == 3
    slot.cancel(42)
    for thread in threads:
        thread.join(5)
    assert len(out) == 3
    assert all(isinstance(e, Cancelled) for e in out)
    assert table.pending() == 0
    # answered or abandoned: no callback frame any more
    with pytest.raises(Cancelled):
        slot.callback("again", {})
    assert len(sink.frames) == 4  # three calls and the Cancelled reply


def test_deadline_releases_a_waiting_callback() -> None:
    sink, table = Sink(), CallbackTable()
    slot = _slot(sink, table, deadline_ms=50)
    out: list[Any] = []
    thread = _call_in_thread(slot, "slow", out)
    sink.wait(1)
    slot.expire()  # what the scheduler does at the deadline
    thread.join(5)
    assert isinstance(out[0], DeadlineExceeded)


def test_answered_request_cannot_call_back() -> None:
    sink, table = Sink(), CallbackTable()
    slot = _slot(sink, table)
    slot.answer({"id": 7, "ok": True, "result": None})
    with pytest.raises(RuntimeError, match="answered"):
        slot.callback("late", {})
    assert len(sink.frames) == 1


def test_callback_timeout_and_bad_arguments() -> None:
    sink, table = Sink(), CallbackTable()
    slot = _slot(sink, table)
    with pytest.raises(CallbackError) as info:
        slot.callback("t", {}, timeout=0.01)
    assert info.value.kind == "Timeout"
    with pytest.raises(TypeError):
        slot.callback("t", ["not", "a", "map"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        slot.callback("", {})
    with pytest.raises(RuntimeError):
        _slot(sink).callback("t", {})  # no table


@pytest.mark.parametrize(
    "message",
    [
        {"call": 999, "ok": True},
        {"call": "1", "ok": True},
        {"call": True, "ok": True},
        {"call": 1},
        {"call": -1, "ok": False},
    ],
)
def test_unknown_and_malformed_answers_are_ignored(message: dict[str, Any]) -> None:
    table = CallbackTable()
    table.answer(message)
    assert table.snapshot()["ignored"] == 1


def test_to_plain() -> None:
    import dspy

    assert to_plain({"a": (1, {2}), 3: float("inf")}) == {"a": [1, [2]], "3": "inf"}
    assert to_plain(dspy.History(messages=[{"q": "x"}])) == {"messages": [{"q": "x"}]}
    assert to_plain(dspy.Prediction(answer="x")) == {"answer": "x"}
    assert to_plain(object).startswith("<class")


def test_program_hash_includes_module_args_only_when_not_empty() -> None:
    base = program_hash({"s": 1}, "react", [])
    assert program_hash({"s": 1}, "react", [], {}) == base
    assert program_hash({"s": 1}, "react", [], None) == base
    assert program_hash({"s": 1}, "react", [], {"max_iters": 3}) != base


def test_side_frames_that_cannot_be_framed_raise_and_write_nothing() -> None:
    import os

    from dspex_bridge.protocol import FrameWriter

    read_fd, write_fd = os.pipe()
    try:
        writer = FrameWriter(write_fd, max_frame=64)
        with pytest.raises(ValueError, match="exceeds max frame"):
            writer.send_strict({"id": 1, "event": "chunk", "data": {"text": "x" * 100}})
        sink = Sink()
        slot = ReplySlot(
            1, "t", time.monotonic(), None, sink.send, events=True, send_side=writer.send_strict
        )
        with pytest.raises(ValueError, match="exceeds"):
            slot.event("chunk", {"text": "y" * 100})
        assert slot.event("chunk", {"text": "ok"}) is True
        assert not slot.answered  # the request is still open and answers normally
        os.set_blocking(read_fd, False)
        data = os.read(read_fd, 4096)
        assert len(data) < 64  # only the small event frame was written
    finally:
        os.close(read_fd)
        os.close(write_fd)
