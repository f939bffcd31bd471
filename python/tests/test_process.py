"""Process behaviour of the real worker: handshake, framing, EOF, signals, concurrency."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import signal
import struct
import time
from pathlib import Path

import msgpack
import pytest

from .conftest import SpawnFn


def test_handshake_is_first_frame_before_any_input(spawn: SpawnFn) -> None:
    worker = spawn(args=["--worker-id", "w-7", "--mode", "worker"])
    ready = worker.ready
    assert ready == {
        "event": "ready",
        "protocol": 2,
        "features": ["deadline", "events", "callbacks", "cancel", "logs"],
        "worker_id": "w-7",
        "pid": worker.proc.pid,
        "python": platform.python_version(),  # the worker runs on this same interpreter
        "dspy": importlib.metadata.version("dspy"),
    }
    assert worker.ready["dspy"] == "3.4.1"  # the pinned version


def test_default_worker_id_and_unknown_flags(spawn: SpawnFn) -> None:
    worker = spawn(args=["--bogus", "--other=1", "positional", "--max-concurrency", "nope"])
    assert worker.ready["worker_id"] == f"worker-{worker.proc.pid}"
    assert worker.call("ping")["status"] == "ok"
    worker.wait_stderr("ignoring unknown arguments")


def test_ping(spawn: SpawnFn) -> None:
    worker = spawn(args=["--worker-id", "p1"])
    result = worker.call("ping", {"anything": [1, 2]})
    assert result["status"] == "ok"
    assert result["worker_id"] == "p1"
    assert result["pid"] == worker.proc.pid
    assert result["uptime_s"] >= 0
    assert result["requests"] == 1
    assert worker.call("ping")["requests"] == 2


def test_args_may_be_omitted(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.send({"id": 5, "command": "ping"})
    reply = worker.reply(5)
    assert reply["ok"] is True


def test_eof_idle_exits_zero_within_one_second(spawn: SpawnFn) -> None:
    worker = spawn()
    started = time.monotonic()
    worker.close_stdin()
    assert worker.wait_exit(1.0) == 0
    assert time.monotonic() - started < 1.0


def test_eof_busy_exits_zero_within_one_second(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.submit("sleep", {"ms": 30_000})
    worker.submit("hang")
    worker.call("ping")  # both are now in flight
    started = time.monotonic()
    worker.close_stdin()
    assert worker.wait_exit(1.0) == 0
    assert time.monotonic() - started < 1.0


def test_eof_lets_short_work_finish(spawn: SpawnFn) -> None:
    worker = spawn()
    request_id = worker.submit("sleep", {"ms": 100})
    worker.close_stdin()
    reply = worker.reply(request_id, timeout=2.0)
    assert reply["ok"] is True
    assert worker.wait_exit(1.0) == 0


def test_eof_during_startup_import_exits_within_one_second(spawn: SpawnFn) -> None:
    worker = spawn(lazy=False, handshake=False)
    worker.wait_stderr("test fault commands enabled")  # the DSPy import is under way
    started = time.monotonic()
    worker.close_stdin()
    assert worker.wait_exit(1.0) == 0
    assert time.monotonic() - started < 1.0


def test_requests_sent_before_ready_are_served(spawn: SpawnFn) -> None:
    worker = spawn(lazy=False, handshake=False)
    request_id = worker.submit("echo", {"early": True})
    worker.close_stdin()
    assert worker.handshake()["event"] == "ready"
    assert worker.reply(request_id, timeout=15.0)["result"] == {"early": True}
    assert worker.wait_exit(1.0) == 0


def test_sigterm_exits_promptly(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.call("ping")
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(1.0) == 0
    assert time.monotonic() - started < 1.0
    worker.wait_stderr("received SIGTERM")


def test_sigterm_while_busy_exits_promptly(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.submit("hang", {"busy": True})
    worker.submit("sleep", {"ms": 30_000})
    worker.call("ping")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(1.0) == 0


def test_stderr_lines_carry_worker_id_and_pid(spawn: SpawnFn) -> None:
    worker = spawn(args=["--worker-id", "tagged"])
    line = worker.wait_stderr("ready (protocol 2")
    assert f"dspex[tagged pid={worker.proc.pid}]" in line


def test_print_and_fd1_writes_never_reach_the_protocol(spawn: SpawnFn) -> None:
    worker = spawn(args=["--worker-id", "printer"])
    for _ in range(3):
        assert worker.call("print_to_stdout", {"text": "MARK-123"}) == {"printed": True}
        assert worker.call("ping")["status"] == "ok"
    printed = worker.wait_stderr("MARK-123 (print)")
    assert "dspex[printer" in printed
    worker.wait_stderr("MARK-123 (fd 1)")


def test_not_msgpack_is_protocol_error_and_worker_keeps_serving(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.send_body(b"\xc1\xc1\xc1")
    reply = worker.recv()
    assert reply["id"] == 0
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "ProtocolError"
    assert set(reply["error"]) == {"kind", "message", "traceback", "details"}
    assert worker.call("ping")["status"] == "ok"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (msgpack.packb([1, "ping", {}]), "not_a_map"),
        (msgpack.packb("ping"), "not_a_map"),
        (msgpack.packb({"command": "ping", "args": {}}), "bad_id"),
        (msgpack.packb({"id": 0, "command": "ping"}), "bad_id"),
        (msgpack.packb({"id": -3, "command": "ping"}), "bad_id"),
        (msgpack.packb({"id": "7", "command": "ping"}), "bad_id"),
        (msgpack.packb({"id": True, "command": "ping"}), "bad_id"),
        (msgpack.packb({"id": 9, "args": {}}), "no_command"),
        (msgpack.packb({"id": 9, "command": 3}), "no_command"),
        (msgpack.packb({"id": 1, "command": "ping"}) + b"\x00", "decode"),
        (b"", "decode"),
    ],
)
def test_undecodable_requests(spawn: SpawnFn, body: bytes, reason: str) -> None:
    worker = spawn()
    worker.send_body(body)
    reply = worker.recv()
    assert reply["id"] == 0
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "ProtocolError"
    assert reply["error"]["details"]["reason"] == reason
    assert worker.call("ping")["status"] == "ok"


def test_oversize_header_rejected_and_stream_stays_in_sync(spawn: SpawnFn) -> None:
    worker = spawn(env={"DSPEX_MAX_FRAME": "1024"})
    big = msgpack.packb({"id": 1, "command": "echo", "args": {"pad": "x" * 5000}})
    worker.send_body(big)
    reply = worker.recv()
    assert reply["id"] == 0
    assert reply["error"]["kind"] == "ProtocolError"
    assert reply["error"]["details"]["reason"] == "oversize"
    assert reply["error"]["details"]["size"] == len(big)
    assert worker.call("echo", {"after": "oversize"}) == {"after": "oversize"}


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_huge_header_is_rejected_before_allocating(spawn: SpawnFn) -> None:
    worker = spawn()
    before = _rss_kib(worker.proc.pid)
    worker.send_raw(struct.pack(">I", 3 * 1024**3))
    reply = worker.recv()
    assert reply["id"] == 0
    assert reply["error"]["kind"] == "ProtocolError"
    assert reply["error"]["details"]["size"] == 3 * 1024**3
    worker.send_raw(b"\0" * (1 << 20))  # being discarded in bounded chunks
    assert _rss_kib(worker.proc.pid) - before < 16 * 1024
    worker.close_stdin()
    assert worker.wait_exit(1.0) == 0


def test_reply_larger_than_max_frame_becomes_an_error(spawn: SpawnFn) -> None:
    worker = spawn(env={"DSPEX_MAX_FRAME": "2048"})
    reply = worker.request("echo", {"pad": "y" * 1500})
    assert reply["ok"] is True
    # an UnknownCommand reply repeats the (long) name twice: too large to frame
    error = worker.error("c" * 1200)
    assert error["kind"] == "ProtocolError"
    assert error["details"]["max_frame"] == 2048
    assert worker.call("ping")["status"] == "ok"


def test_non_string_keys_inside_args_still_answered_by_id(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.send({"id": 41, "command": "ping", "args": {1: "one"}})
    assert worker.reply(41)["ok"] is True


def test_bad_envelope_fields_are_invalid_arguments(spawn: SpawnFn) -> None:
    worker = spawn()
    assert worker.error("ping", [1, 2])["kind"] == "InvalidArguments"
    assert worker.error("ping", session_id=5)["details"]["field"] == "session_id"
    assert worker.error("ping", deadline_ms=-1)["details"]["field"] == "deadline_ms"
    assert worker.error("ping", deadline_ms="soon")["details"]["field"] == "deadline_ms"
    assert worker.call("ping", session_id="s-1", deadline_ms=10_000)["status"] == "ok"


def test_unknown_command(spawn: SpawnFn) -> None:
    worker = spawn()
    error = worker.error("frobnicate", {"x": 1})
    assert error["kind"] == "UnknownCommand"
    assert "frobnicate" in error["message"]
    assert "ping" in error["details"]["available"]


def test_fault_commands_absent_without_env(spawn: SpawnFn) -> None:
    worker = spawn(faults=False)
    for command in ("echo", "sleep", "exit", "hang", "raise", "write_garbage", "ignore_shutdown"):
        assert worker.error(command, {})["kind"] == "UnknownCommand"
    assert worker.call("ping")["status"] == "ok"


def test_deadline_already_passed(spawn: SpawnFn) -> None:
    worker = spawn(args=["--max-concurrency", "1"])
    blocker = worker.submit("sleep", {"ms": 300})
    late = worker.submit("echo", {"x": 1}, deadline_ms=50)
    fine = worker.submit("echo", {"x": 2}, deadline_ms=60_000)
    error = worker.reply(late)["error"]
    assert error["kind"] == "DeadlineExceeded"
    assert worker.reply(fine)["result"] == {"x": 2}
    assert worker.reply(blocker)["ok"] is True
    assert worker.error("ping", deadline_ms=0)["kind"] == "DeadlineExceeded"


def test_concurrent_requests_answered_by_id_out_of_order(spawn: SpawnFn) -> None:
    worker = spawn()
    durations = [800, 600, 400, 200, 0]
    ids = [worker.submit("sleep", {"ms": ms}) for ms in durations]
    started = time.monotonic()
    order = []
    for _ in ids:
        frame = worker.recv(5.0)
        order.append(frame["id"])
        assert frame["ok"] is True
    elapsed = time.monotonic() - started
    assert sorted(order) == sorted(ids)
    assert order == list(reversed(ids))
    assert elapsed < 1.6  # ran concurrently, not 2 s in sequence


def test_max_concurrency_limits_parallelism(spawn: SpawnFn) -> None:
    worker = spawn(env={"DSPEX_MAX_CONCURRENCY": "2"})
    ids = [worker.submit("sleep", {"ms": 200}) for _ in range(4)]
    for request_id in ids:
        assert worker.reply(request_id)["ok"] is True
    stats = worker.call("get_stats")
    assert stats["max_concurrency"] == 2
    assert stats["requests"]["max_in_flight"] >= 3  # queued requests count as in flight


def test_many_requests_each_answered_exactly_once(spawn: SpawnFn) -> None:
    worker = spawn()
    ids = [worker.submit("echo", {"n": i}) for i in range(300)]
    seen = {}
    for _ in ids:
        frame = worker.recv(10.0)
        assert frame["id"] not in seen
        seen[frame["id"]] = frame["result"]["n"]
    assert seen == {request_id: i for i, request_id in enumerate(ids)}
    assert worker.frames.empty()


def test_get_stats_and_reset_state(spawn: SpawnFn) -> None:
    worker = spawn(args=["--worker-id", "st"])
    worker.call("echo")
    worker.error("nope")
    stats = worker.call("get_stats")
    assert stats["worker_id"] == "st"
    assert stats["pid"] == worker.proc.pid
    assert stats["uptime_s"] >= 0
    assert stats["memory"]["rss_bytes"] > 1_000_000
    assert stats["requests"]["total"] >= 2
    assert stats["requests"]["errors_by_kind"]["UnknownCommand"] == 1
    assert stats["requests"]["in_flight"] == 1
    assert stats["dspy_loaded"] is False  # lazy worker, nothing needed DSPy yet
    assert stats["programs"] == 0
    reset = worker.call("reset_state")
    assert reset == {"status": "reset", "programs_cleared": 0}
    after = worker.call("get_stats")
    assert after["requests"]["total"] == 1
    assert after["requests"]["errors_by_kind"] == {}


def test_shutdown_replies_then_exits_zero(spawn: SpawnFn) -> None:
    worker = spawn()
    result = worker.call("shutdown")
    assert result["status"] == "shutting_down"
    assert worker.wait_exit(2.0) == 0


def test_fail_import_dies_before_handshake(spawn: SpawnFn) -> None:
    worker = spawn(env={"DSPEX_TEST_FAIL_IMPORT": "1"}, handshake=False)
    assert worker.wait_exit(10.0) == 1
    assert isinstance(worker.recv(5.0), EOFError)
    worker.wait_stderr("ModuleNotFoundError: No module named 'dspy_missing_dependency'")
    assert "Traceback" in worker.stderr_text()


def test_protocol_pipes_are_not_inherited_by_children(spawn: SpawnFn) -> None:
    worker = spawn()
    pid = worker.call("spawn_grandchild")["pid"]
    # Look once the child runs `sleep` itself: between fork and exec it briefly
    # holds descriptors that exec closes.
    deadline = time.monotonic() + 5.0
    while Path(f"/proc/{pid}/comm").read_text().strip() != "sleep":
        assert time.monotonic() < deadline, "the grandchild never exec'd sleep"
        time.sleep(0.005)
    child_fds = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        # The listing's own descriptor may be gone already.
        with contextlib.suppress(FileNotFoundError):
            child_fds.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    assert worker.proc.stdout is not None
    assert worker.proc.stdin is not None
    stdout_pipe = f"pipe:[{os.fstat(worker.proc.stdout.fileno()).st_ino}]"
    stdin_pipe = f"pipe:[{os.fstat(worker.proc.stdin.fileno()).st_ino}]"
    assert stdout_pipe not in child_fds
    assert stdin_pipe not in child_fds
    # the worker's own fd 1 is stderr now; the protocol pipe is a private fd
    assert os.readlink(f"/proc/{worker.proc.pid}/fd/1") == os.readlink(
        f"/proc/{worker.proc.pid}/fd/2"
    )
