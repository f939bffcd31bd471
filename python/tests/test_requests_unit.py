"""Unit tests of reply slots, the deadline scheduler, call timeouts, redaction, named LMs."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from dspex_bridge import logs
from dspex_bridge.errors import KINDS, Cancelled, DeadlineExceeded
from dspex_bridge.lm import NamedLms, build_lm, config_secrets, parse_lm_config
from dspex_bridge.requests import (
    BY_CANCEL,
    BY_DEADLINE,
    DeadlineScheduler,
    ReplySlot,
    RequestTable,
    bind,
    cooperative_sleep,
    current_request,
)


class Sink:
    """Collects the frames slots send."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.sent = threading.Event()

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.frames.append(message)
        self.sent.set()


def _slot(sink: Sink, deadline_ms: float | None = None, request_id: int = 1) -> ReplySlot:
    return ReplySlot(request_id, "test", time.monotonic(), deadline_ms, sink.send)


def test_first_answer_wins() -> None:
    sink = Sink()
    slot = _slot(sink)
    assert slot.begin()
    assert slot.answer({"id": 1, "ok": True, "result": 1})
    assert not slot.answer({"id": 1, "ok": True, "result": 2})
    assert not slot.expire()
    assert not slot.cancel(by=9)
    assert sink.frames == [{"id": 1, "ok": True, "result": 1}]
    assert not slot.abandoned.is_set()


def test_exactly_one_answer_under_a_race() -> None:
    for round_ in range(200):
        sink = Sink()
        slot = _slot(sink, deadline_ms=0.0, request_id=round_ + 1)
        gate = threading.Barrier(4)
        wins: list[str] = []

        def racer(
            kind: str,
            slot: ReplySlot = slot,
            gate: threading.Barrier = gate,
            wins: list[str] = wins,
        ) -> None:
            gate.wait()
            if kind == "handler":
                won = slot.answer({"id": slot.request_id, "ok": True, "result": None})
            elif kind == "deadline":
                won = slot.expire()
            else:
                won = slot.cancel(by=7)
            if won:
                wins.append(kind)

        threads = [
            threading.Thread(target=racer, args=(k,))
            for k in ("handler", "deadline", "cancel", "handler")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1, wins
        assert len(sink.frames) == 1
        assert slot.abandoned.is_set() == (wins[0] != "handler")


def test_deadline_and_cancel_replies() -> None:
    sink = Sink()
    slot = _slot(sink, deadline_ms=50)
    assert slot.expire()
    frame = sink.frames[0]
    assert frame["ok"] is False
    error = frame["error"]
    assert error["kind"] == "DeadlineExceeded"
    assert error["traceback"] is None
    assert set(error["details"]) == {"deadline_ms", "elapsed_ms", "started"}
    assert error["details"]["deadline_ms"] == 50
    assert error["details"]["started"] is False
    assert slot.answered_by == BY_DEADLINE
    assert slot.abandoned.is_set()
    assert not slot.begin()  # a queued handler never runs once answered

    other = _slot(sink, request_id=2)
    assert other.begin()
    assert other.cancel(by=3)
    error = sink.frames[1]["error"]
    assert (error["kind"], error["details"]) == ("Cancelled", {"by": 3})
    assert other.answered_by == BY_CANCEL
    assert isinstance(other.abandon_error(), Cancelled)
    assert isinstance(slot.abandon_error(), DeadlineExceeded)
    assert "Cancelled" in KINDS


def test_answer_without_frame_closes_the_slot() -> None:
    sink = Sink()
    slot = _slot(sink)
    assert slot.answer(None)
    assert sink.frames == []
    assert not slot.expire()


def test_scheduler_fires_in_deadline_order_and_skips_answered() -> None:
    sink = Sink()
    scheduler = DeadlineScheduler()
    now = time.monotonic()
    slots = [ReplySlot(i, "t", now, ms, sink.send) for i, ms in [(1, 60), (2, 20), (3, 40)]]
    early = ReplySlot(4, "t", now, 30, sink.send)
    for slot in [*slots, early]:
        scheduler.add(slot)
    early.answer({"id": 4, "ok": True, "result": None})
    deadline = time.monotonic() + 5
    while len(sink.frames) < 4:
        assert time.monotonic() < deadline, sink.frames
        sink.sent.wait(0.05)
        sink.sent.clear()
    elapsed = time.monotonic() - now
    assert [f["id"] for f in sink.frames] == [4, 2, 3, 1]
    assert elapsed >= 0.06
    assert scheduler.fired == 3


def test_scheduler_drops_answered_entries_when_the_heap_grows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dspex_bridge import requests as requests_mod

    monkeypatch.setattr(requests_mod, "COMPACT_MIN", 64)
    sink = Sink()
    scheduler = DeadlineScheduler()
    scheduler._compact_at = 64
    for i in range(1000):
        slot = ReplySlot(i + 1, "t", time.monotonic(), 600_000, sink.send)
        scheduler.add(slot)
        slot.answer({"id": i + 1, "ok": True, "result": None})
    assert scheduler.size() <= 128


def test_request_table_cancel_and_pending() -> None:
    sink = Sink()
    answered: list[tuple[int, str | None, bool]] = []
    table = RequestTable(sink.send, lambda s, k, r: answered.append((s.request_id, k, r)))
    slot = table.open(5, "sleep", time.monotonic(), None)
    inline = table.open(6, "ping", time.monotonic(), None, track=False)
    assert table.pending() == 1
    assert table.get(5) is slot
    assert table.get(6) is None
    assert table.cancel(5, by=8)
    assert not table.cancel(5, by=9)
    assert not table.cancel(77, by=9)
    assert table.pending() == 0
    assert answered == [(5, "Cancelled", True)]
    assert inline.answer({"id": 6, "ok": True, "result": None})
    assert answered[-1] == (6, None, True)


def test_current_request_and_cooperative_sleep() -> None:
    sink = Sink()
    assert current_request() is None
    started = time.monotonic()
    cooperative_sleep(0.02)  # no request: a plain sleep
    assert time.monotonic() - started >= 0.02
    slot = _slot(sink, deadline_ms=80)
    slot.begin()
    with bind(slot):
        assert current_request() is slot
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            cooperative_sleep(10.0)
        assert 0.07 <= time.monotonic() - started < 2.0
    assert current_request() is None
    assert slot.answered_by == BY_DEADLINE  # the sleeper answered it, exactly as the scheduler
    assert sink.frames[0]["error"]["details"]["started"] is True

    cancelled = _slot(sink, request_id=2)
    threading.Timer(0.05, cancelled.cancel, kwargs={"by": 3}).start()
    with bind(cancelled), pytest.raises(Cancelled):
        cooperative_sleep(10.0)

    short = _slot(sink, deadline_ms=10_000, request_id=3)
    with bind(short):
        cooperative_sleep(0.01)  # ends normally well before the deadline
    assert not short.answered


def test_call_timeout_grid() -> None:
    from dspex_bridge.deadline_lm import TIMEOUT_FLOOR_S, call_timeout

    assert call_timeout(-5) == TIMEOUT_FLOOR_S
    assert call_timeout(0.01) == TIMEOUT_FLOOR_S
    values = set()
    for i in range(1, 3000):
        remaining = i / 100
        timeout = call_timeout(remaining)
        assert remaining <= timeout <= max(remaining, TIMEOUT_FLOOR_S) * 1.091 + 1e-6
        values.add(timeout)
    assert len(values) <= 8 * 9  # eight per doubling from 0.1 s to 30 s


def test_redaction_of_registered_secrets() -> None:
    logs.SECRETS.clear()
    logs.register_secrets(["sk-unit-secret-1", "abc", "Bearer tok-unit-9876543"])
    assert logs.redact("key=sk-unit-secret-1!") == "key=[REDACTED]!"
    assert logs.redact("abc is too short to be redacted") == "abc is too short to be redacted"
    assert "tok-unit" not in logs.redact("Authorization: Bearer tok-unit-9876543")
    handler = logs.OneLineHandler(2)
    record = logging.LogRecord("x", logging.DEBUG, __file__, 1, "%s", ("sk-unit-secret-1",), None)
    assert "sk-unit" not in logs.redact(handler.format(record))
    logs.SECRETS.clear()


def test_config_secrets_are_every_string_option_but_the_model() -> None:
    raw = {
        "model": "openai/gpt-4o-mini",
        "model_type": "chat",
        "api_key": "sk-1",
        "api_base": "http://host/v1",
        "extra_headers": {"Authorization": "Bearer tok-123456789"},
        "stop": ["END"],
        "temperature": 0.5,
    }
    found = config_secrets(raw)
    assert "openai/gpt-4o-mini" not in found
    assert "chat" not in found
    for value in ("sk-1", "http://host/v1", "Bearer tok-123456789", "tok-123456789", "END"):
        assert value in found
    assert config_secrets("not a map") == []


def test_named_lms_lru_evicts_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    named = NamedLms(size=2)
    handles = {n: build_lm(parse_lm_config({"model": "dummy", "seed": n})) for n in "abc"}
    named.put("a", handles["a"])
    named.put("b", handles["b"])
    assert named.get("a") is handles["a"]  # now b is the least recently used
    with caplog.at_level(logging.INFO, logger="dspex_bridge.lm"):
        named.put("c", handles["c"])
    assert named.ids() == ["a", "c"]
    assert named.get("b") is None
    assert any("evicted lm_id 'b'" in r.getMessage() for r in caplog.records)
    assert named.clear() == 2
    assert len(named) == 0


def test_a_sequential_callers_answered_slots_leave_the_heap_at_once() -> None:
    sink = Sink()
    table = RequestTable(sink.send)
    scheduler = table.scheduler
    live = table.open(1, "sleep", time.monotonic(), 600_000)  # stays pending
    for request_id in range(2, 200):
        slot = table.open(request_id, "echo", time.monotonic(), 600_000)
        assert scheduler.size() == 2
        slot.answer({"id": request_id, "ok": True, "result": None})
        assert scheduler.size() == 1
    # An entry that is not the last stays until it comes up (or the heap is compacted).
    first = table.open(300, "echo", time.monotonic(), 600_000)
    table.open(301, "echo", time.monotonic(), 600_000)
    first.answer({"id": 300, "ok": True, "result": None})
    assert scheduler.size() == 3
    assert live.expired() is False


def test_an_earlier_deadline_wakes_the_scheduler_after_a_discarded_later_one() -> None:
    sink = Sink()
    table = RequestTable(sink.send)
    late = table.open(1, "echo", time.monotonic(), 60_000)
    time.sleep(0.05)  # the scheduler now sleeps until the late deadline
    late.answer({"id": 1, "ok": True, "result": None})  # discarded from the heap
    started = time.monotonic()
    soon = table.open(2, "sleep", started, 50)
    assert soon.abandoned.wait(2.0)
    assert time.monotonic() - started < 1.0
    assert [f["id"] for f in sink.frames] == [1, 2]
    assert sink.frames[1]["error"]["kind"] == "DeadlineExceeded"
