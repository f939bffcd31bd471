"""Protocol 2 on the real worker: deadlines, cancel, the GIL hang, the fail-import hook."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import SpawnFn, Worker

# A reply due at D ms after the worker read the request may come this much later on a
# loaded 2-core machine.
TOLERANCE_S = 0.15


def _deadline_error(reply: dict[str, Any], deadline_ms: float, *, started: bool) -> None:
    assert reply["ok"] is False, reply
    error = reply["error"]
    assert error["kind"] == "DeadlineExceeded", error
    assert error["traceback"] is None
    details = error["details"]
    assert set(details) == {"deadline_ms", "elapsed_ms", "started"}
    assert details["deadline_ms"] == deadline_ms
    assert isinstance(details["elapsed_ms"], float)
    assert details["elapsed_ms"] >= deadline_ms
    assert details["started"] is started


def _cancel_in_order(worker: Worker, target: int) -> dict[str, Any]:
    """Cancel ``target``; its ``Cancelled`` reply must come before the cancel's own."""
    cancel_id = worker.submit("cancel", {"request_id": target})
    first = worker.recv()
    second = worker.recv()
    assert first["id"] == target, (first, second)
    assert first["ok"] is False
    assert first["error"] == {
        "kind": "Cancelled",
        "message": first["error"]["message"],
        "traceback": None,
        "details": {"by": cancel_id},
    }
    assert second == {"id": cancel_id, "ok": True, "result": {"cancelled": True}}
    return first


def test_deadline_exceeded_at_the_deadline_while_the_handler_sleeps(spawn: SpawnFn) -> None:
    worker = spawn()
    started = time.monotonic()
    request_id = worker.submit("sleep", {"ms": 30_000}, deadline_ms=200)
    reply = worker.reply(request_id, timeout=5.0)
    elapsed = time.monotonic() - started
    _deadline_error(reply, 200, started=True)
    assert 0.2 <= elapsed < 0.2 + TOLERANCE_S
    assert worker.call("echo", {"next": 1}) == {"next": 1}  # still in service
    # The sleep waits on the abandoned event: its thread ends now, not in 30 s.
    stats = worker.wait_stats(lambda r: r["late_results"] == 1 and r["in_flight"] == 1, 2.0)
    assert stats["deadline_exceeded"] == 1
    assert stats["errors_by_kind"]["DeadlineExceeded"] == 1
    assert stats["unanswered"] == 1  # the get_stats itself


def test_no_deadline_behaves_as_before(spawn: SpawnFn) -> None:
    worker = spawn()
    assert worker.call("sleep", {"ms": 50}) == {"slept_ms": 50}
    assert worker.call("sleep", {"ms": 50}, deadline_ms=10_000) == {"slept_ms": 50}
    stats = worker.call("get_stats")["requests"]
    assert (stats["deadline_exceeded"], stats["late_results"], stats["cancelled"]) == (0, 0, 0)


def test_handshake_announces_protocol_2_and_deadline_zero_never_runs(spawn: SpawnFn) -> None:
    worker = spawn()
    assert worker.ready["protocol"] == 2
    assert worker.ready["features"] == ["deadline", "events", "callbacks", "cancel", "logs"]
    _deadline_error(worker.request("sleep", {"ms": 30_000}, deadline_ms=0), 0, started=False)
    _deadline_error(worker.request("ping", deadline_ms=0), 0, started=False)
    stats = worker.call("get_stats")["requests"]
    assert stats["deadline_exceeded"] == 2
    assert stats["in_flight"] == 1


def test_queued_requests_expire_while_every_thread_is_busy(spawn: SpawnFn) -> None:
    worker = spawn(args=["--max-concurrency", "2"])
    busy = [worker.submit("sleep", {"ms": 30_000}) for _ in range(2)]
    started = time.monotonic()
    queued = {worker.submit("echo", {"n": ms}, deadline_ms=ms): ms for ms in (150, 300)}
    for request_id, ms in queued.items():
        reply = worker.reply(request_id, timeout=5.0)
        elapsed = time.monotonic() - started
        _deadline_error(reply, ms, started=False)
        assert ms / 1000 <= elapsed < ms / 1000 + TOLERANCE_S
    # cancel is served inline: it works while both threads are busy
    for request_id in busy:
        _cancel_in_order(worker, request_id)
    assert worker.call("echo", {"after": True}) == {"after": True}
    stats = worker.wait_stats(lambda r: r["in_flight"] == 1 and r["late_results"] == 2, 2.0)
    assert (stats["deadline_exceeded"], stats["cancelled"]) == (2, 2)
    assert stats["by_command"]["echo"] == 3  # the expired ones never ran, but were requests


def test_exactly_one_reply_per_id_when_handler_and_deadline_race(spawn: SpawnFn) -> None:
    worker = spawn()
    kinds: dict[str, int] = {"ok": 0, "DeadlineExceeded": 0}
    started_late = 0
    total = 0
    for round_ in range(16):
        batch = [
            worker.submit("sleep", {"ms": 10 + (round_ + i) % 7 * 5}, deadline_ms=25)
            for i in range(8)
        ]
        seen: dict[int, dict[str, Any]] = {}
        for _ in batch:
            frame = worker.recv(5.0)
            assert frame["id"] in batch, frame
            assert frame["id"] not in seen, frame
            seen[frame["id"]] = frame
        for frame in seen.values():
            if frame["ok"]:
                kinds["ok"] += 1
            else:
                assert frame["error"]["kind"] == "DeadlineExceeded", frame
                kinds["DeadlineExceeded"] += 1
                started_late += frame["error"]["details"]["started"]
        total += len(batch)
    assert kinds["ok"] > 0
    assert kinds["DeadlineExceeded"] > 0
    # Every handler has finished by the time this longer sleep is answered; a second reply
    # to any id would have come first.
    sentinel = worker.submit("sleep", {"ms": 150})
    assert worker.recv(5.0)["id"] == sentinel
    assert worker.frames.empty()
    stats = worker.wait_stats(lambda r: r["in_flight"] == 1, 2.0)
    assert stats["ok"] == kinds["ok"] + 1
    assert stats["deadline_exceeded"] == kinds["DeadlineExceeded"]
    assert stats["late_results"] == started_late  # each started, expired handler: discarded


def test_cancel(spawn: SpawnFn) -> None:
    worker = spawn()
    target = worker.submit("sleep", {"ms": 30_000})
    reply = _cancel_in_order(worker, target)
    assert str(target) in reply["error"]["message"]
    assert worker.call("cancel", {"request_id": target}) == {"cancelled": False}  # answered
    assert worker.call("cancel", {"request_id": 987_654}) == {"cancelled": False}  # unknown
    done = worker.submit("echo", {"x": 1})
    assert worker.reply(done)["ok"] is True
    assert worker.call("cancel", {"request_id": done}) == {"cancelled": False}
    for bad in (
        {},
        {"request_id": 0},
        {"request_id": -4},
        {"request_id": "7"},
        {"request_id": True},
    ):
        error = worker.error("cancel", bad)
        assert error["kind"] == "InvalidArguments"
        assert error["details"] == {"field": "request_id"}
    stats = worker.wait_stats(lambda r: r["late_results"] == 1 and r["in_flight"] == 1, 2.0)
    assert stats["cancelled"] == 1


def test_cancel_queued_and_running_while_every_thread_is_busy(spawn: SpawnFn) -> None:
    worker = spawn(args=["--max-concurrency", "1"])
    running = worker.submit("sleep", {"ms": 30_000})
    queued = worker.submit("echo", {"queued": True})
    _cancel_in_order(worker, queued)
    _cancel_in_order(worker, running)
    assert worker.call("echo", {"free": True}) == {"free": True}
    stats = worker.wait_stats(lambda r: r["in_flight"] == 1, 2.0)
    assert stats["cancelled"] == 2
    assert stats["late_results"] == 1  # the sleep; the cancelled echo never ran


def test_hang_with_a_deadline_is_answered_and_the_worker_keeps_serving(spawn: SpawnFn) -> None:
    worker = spawn()
    started = time.monotonic()
    hung = worker.submit("hang", deadline_ms=150)
    _deadline_error(worker.reply(hung, timeout=5.0), 150, started=True)
    assert time.monotonic() - started < 0.15 + TOLERANCE_S
    assert worker.call("ping")["status"] == "ok"
    assert worker.call("get_stats")["requests"]["in_flight"] == 2  # the hung thread stays
    started = time.monotonic()
    worker.close_stdin()
    assert worker.wait_exit(1.0) == 0
    assert time.monotonic() - started < 0.4  # nothing unanswered: no EOF grace to wait out


def test_hang_gil_stops_the_whole_interpreter(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.submit("hang", {"gil": True}, deadline_ms=200)
    worker.wait_stderr("gil=True")
    worker.submit("ping")
    worker.proc.send_signal(signal.SIGTERM)  # its Python handler can never run now
    with pytest.raises(AssertionError, match="no frame"):
        worker.recv(timeout=0.8)  # neither the DeadlineExceeded (at 0.2 s) nor the ping reply
    assert worker.proc.poll() is None
    worker.kill()
    assert worker.proc.returncode == -signal.SIGKILL


def test_fail_import_if_exists_until_the_environment_is_fixed(
    spawn: SpawnFn, tmp_path: Path
) -> None:
    marker = tmp_path / "environment-broken"
    marker.write_text("remove me to fix the environment\n")
    env = {"DSPEX_TEST_FAIL_IMPORT_IF_EXISTS": str(marker)}
    broken = spawn(env=env, handshake=False)
    assert broken.wait_exit(10.0) == 1
    assert isinstance(broken.recv(5.0), EOFError)
    broken.wait_stderr("ModuleNotFoundError: No module named 'dspy_missing_dependency'")
    marker.unlink()
    fixed = spawn(env=env)
    assert fixed.ready["event"] == "ready"
    assert fixed.call("ping")["status"] == "ok"
