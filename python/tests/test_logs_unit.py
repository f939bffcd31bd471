"""Unit tests of ``log`` events: the slot's cap and count, and the request log handler."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dspex_bridge import logs
from dspex_bridge.requests import MAX_LOG_EVENTS, ReplySlot, bind, current_request


class Sink:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.frames.append(message)


def _slot(sink: Sink, *, logs_on: bool = True, deadline_ms: float | None = None) -> ReplySlot:
    return ReplySlot(1, "test", time.monotonic(), deadline_ms, sink.send, logs=logs_on)


def _data(message: str) -> dict[str, Any]:
    return {"level": "INFO", "logger": "t", "message": message}


def _log_messages(frames: list[dict[str, Any]]) -> list[str]:
    return [f["data"]["message"] for f in frames if f.get("event") == "log"]


def test_log_events_only_for_a_slot_that_asked() -> None:
    sink = Sink()
    slot = _slot(sink, logs_on=False)
    assert not slot.log_event(_data("x"))
    assert slot.answer({"id": 1, "ok": True, "result": None})
    assert sink.frames == [{"id": 1, "ok": True, "result": None}]


def test_log_events_are_capped_and_the_rest_counted_just_before_the_reply() -> None:
    sink = Sink()
    slot = _slot(sink)
    sent = [slot.log_event(_data(f"r{i}")) for i in range(MAX_LOG_EVENTS + 150)]
    assert sent == [True] * MAX_LOG_EVENTS + [False] * 150
    assert slot.answer({"id": 1, "ok": True, "result": None})
    assert not slot.log_event(_data("after the reply"))
    assert len(sink.frames) == MAX_LOG_EVENTS + 2
    for frame in sink.frames[:-1]:
        assert set(frame) == {"id", "event", "data"}
        assert frame["id"] == 1
        assert frame["event"] == "log"
    assert _log_messages(sink.frames[:MAX_LOG_EVENTS]) == [f"r{i}" for i in range(MAX_LOG_EVENTS)]
    assert sink.frames[MAX_LOG_EVENTS]["data"] == {
        "level": "WARNING",
        "logger": "dspex_bridge",
        "message": "150 more log records suppressed",
    }
    assert sink.frames[-1] == {"id": 1, "ok": True, "result": None}


def test_no_count_without_suppressed_records_and_none_without_a_reply() -> None:
    sink = Sink()
    slot = _slot(sink)
    for i in range(MAX_LOG_EVENTS):
        assert slot.log_event(_data(f"r{i}"))
    assert slot.answer({"id": 1, "ok": True, "result": None})
    assert len(sink.frames) == MAX_LOG_EVENTS + 1  # no count: nothing was suppressed
    quiet = Sink()
    closed = _slot(quiet)
    for i in range(MAX_LOG_EVENTS + 1):
        closed.log_event(_data(f"r{i}"))
    assert closed.answer(None)  # closed without a frame (NoReply): no count either
    assert len(quiet.frames) == MAX_LOG_EVENTS


def test_the_count_also_precedes_a_deadline_reply() -> None:
    sink = Sink()
    slot = _slot(sink, deadline_ms=60_000)
    for i in range(MAX_LOG_EVENTS + 3):
        slot.log_event(_data(f"r{i}"))
    assert slot.expire()
    assert sink.frames[-2]["data"]["message"] == "3 more log records suppressed"
    assert sink.frames[-1]["error"]["kind"] == "DeadlineExceeded"


# --- the handler ---------------------------------------------------------------------------


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own with a ``RequestLogHandler``, the worker's level at INFO."""
    logger = logging.getLogger("dspex_test.request_logs")
    handler = logs.RequestLogHandler(current_request)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    old_level = logging.root.level
    logging.root.setLevel(logging.INFO)
    try:
        yield logger
    finally:
        logging.root.setLevel(old_level)
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def test_handler_sends_records_of_the_current_request_at_the_worker_level(
    logger: logging.Logger,
) -> None:
    sink = Sink()
    slot = _slot(sink)
    logger.warning("outside any request")
    with bind(slot):
        logger.debug("below the worker's level")
        logger.info("hello %s", "world")
        try:
            raise ValueError("broken")
        except ValueError:
            logger.exception("it broke")
    logger.warning("outside again")
    first, second = sink.frames
    assert first == {
        "id": 1,
        "event": "log",
        "data": {"level": "INFO", "logger": "dspex_test.request_logs", "message": "hello world"},
    }
    assert second["data"]["level"] == "ERROR"
    message = second["data"]["message"]
    assert message.startswith("it broke\nTraceback (most recent call last):\n")
    assert message.endswith("ValueError: broken")


def test_handler_redacts_then_cuts_to_2_kib(logger: logging.Logger) -> None:
    logs.SECRETS.clear()
    logs.register_secrets(["sk-unit-log-secret-77"])
    sink = Sink()
    try:
        with bind(_slot(sink)):
            logger.warning("key %s used", "sk-unit-log-secret-77")
            logger.warning("%s", "é" * 3000)  # 6000 bytes of UTF-8
            logger.warning("%s", "x" * 2040 + "sk-unit-log-secret-77")
            logger.warning("bad \udcff byte")
    finally:
        logs.SECRETS.clear()
    redacted, long, late_secret, surrogate = _log_messages(sink.frames)
    assert redacted == "key [REDACTED] used"
    assert long == "é" * 1024  # 2048 bytes, cut at a character boundary
    assert len(long.encode()) == logs.MAX_LOG_MESSAGE
    assert late_secret == ("x" * 2040 + "[REDACTED]")[: logs.MAX_LOG_MESSAGE]
    assert "sk-unit" not in late_secret
    assert surrogate == "bad \\udcff byte"


def test_wire_text() -> None:
    assert logs.wire_text("short", 10) == "short"
    assert logs.wire_text("abcdef", 3) == "abc"
    assert logs.wire_text("aé", 2) == "a"  # never half a character
    assert logs.wire_text("\ud800", 100) == "\\ud800"


def test_dspy_threads_reach_the_request_through_its_setting(logger: logging.Logger) -> None:
    """What DSPy's ParallelExecutor does: copy the settings overrides into its threads."""
    pytest.importorskip("dspy")
    from dspy.dsp.utils.settings import thread_local_overrides

    from dspex_bridge.requests import DSPY_SETTING

    sink = Sink()
    slot = _slot(sink)
    token = thread_local_overrides.set({DSPY_SETTING: slot})
    try:
        parent = thread_local_overrides.get().copy()
    finally:
        thread_local_overrides.reset(token)

    def in_dspy_thread() -> None:
        inner = thread_local_overrides.set(parent)
        try:
            logger.warning("from a DSPy thread")
        finally:
            thread_local_overrides.reset(inner)

    def in_plain_thread() -> None:
        logger.warning("from a plain thread")

    for target in (in_dspy_thread, in_plain_thread):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert _log_messages(sink.frames) == ["from a DSPy thread"]


def test_a_record_logged_while_writing_a_frame_neither_recurses_nor_deadlocks(
    logger: logging.Logger,
) -> None:
    """The writer logs (a failed or oversize write) while the slot's lock is held."""
    frames: list[dict[str, Any]] = []

    def send(message: dict[str, Any]) -> None:
        logger.error("writing %s", "event" if "event" in message else "reply")
        frames.append(message)

    slot = ReplySlot(1, "test", time.monotonic(), None, send, logs=True)
    done = threading.Event()

    def run() -> None:
        with bind(slot):
            logger.warning("first")  # its own write logs again: that one is not sent
            slot.event("progress", {})  # not sent: no "events"
            assert slot.send_frame({"id": 1, "event": "custom", "data": {}})
            assert slot.answer({"id": 1, "ok": True, "result": None})
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert done.wait(5), "deadlocked"
    assert [f.get("event") for f in frames] == ["log", "custom", None]
    assert frames[0]["data"]["message"] == "first"
