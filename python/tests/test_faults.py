"""Every test-only fault command, injected into the real worker loop."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest

from .conftest import Oversize, SpawnFn


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _cmdline(pid: int, within: float) -> list[bytes]:
    """The argv of ``pid`` once its exec has finished (empty while the exec is under way)."""
    deadline = time.monotonic() + within
    while True:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
        if argv != [b""] or time.monotonic() > deadline:
            return argv
        time.sleep(0.001)  # polling OS state against a deadline


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` (not our child) to terminate, via a pidfd: no polling loop."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def test_echo_returns_args(spawn: SpawnFn) -> None:
    worker = spawn()
    args = {"a": 1, "b": [1.5, "x", None, True], "c": {"d": b"\x00\x01"}}
    assert worker.call("echo", args) == args


def test_sleep(spawn: SpawnFn) -> None:
    worker = spawn()
    started = time.monotonic()
    assert worker.call("sleep", {"ms": 150}) == {"slept_ms": 150}
    assert time.monotonic() - started >= 0.15
    assert worker.error("sleep", {"ms": -1})["kind"] == "InvalidArguments"
    assert worker.error("sleep", {"ms": "soon"})["kind"] == "InvalidArguments"


@pytest.mark.parametrize("code", [0, 3])
def test_exit_without_reply(spawn: SpawnFn, code: int) -> None:
    worker = spawn()
    worker.submit("exit", {"code": code})
    assert worker.wait_exit(5.0) == code
    assert isinstance(worker.recv(5.0), EOFError)


def test_exit_rejects_bad_code(spawn: SpawnFn) -> None:
    worker = spawn()
    assert worker.error("exit", {"code": 300})["kind"] == "InvalidArguments"


@pytest.mark.parametrize("sig", [9, "SIGKILL", "KILL"])
def test_kill_self_sigkill(spawn: SpawnFn, sig: object) -> None:
    worker = spawn()
    worker.submit("kill_self", {"signal": sig})
    assert worker.wait_exit(5.0) == -signal.SIGKILL
    assert isinstance(worker.recv(5.0), EOFError)


def test_kill_self_default_is_sigkill(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.submit("kill_self")
    assert worker.wait_exit(5.0) == -signal.SIGKILL


def test_kill_self_sigterm_exits_zero(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.submit("kill_self", {"signal": "SIGTERM"})
    assert worker.wait_exit(5.0) == 0


def test_kill_self_unknown_signal(spawn: SpawnFn) -> None:
    worker = spawn()
    assert worker.error("kill_self", {"signal": "SIGNOPE"})["kind"] == "InvalidArguments"


@pytest.mark.parametrize("busy", [False, True])
def test_hang_never_replies_but_worker_serves_others(spawn: SpawnFn, busy: bool) -> None:
    worker = spawn()
    hung = worker.submit("hang", {"busy": busy})
    assert worker.call("echo", {"still": "serving"}) == {"still": "serving"}
    with pytest.raises(AssertionError, match=r"no (reply|frame)"):
        worker.reply(hung, timeout=0.3)
    worker.close_stdin()
    assert worker.wait_exit(1.0) == 0


@pytest.mark.parametrize(
    "name", ["ValueError", "KeyError", "ZeroDivisionError", "RuntimeError", "OSError"]
)
def test_raise_is_python_exception(spawn: SpawnFn, name: str) -> None:
    worker = spawn()
    error = worker.error("raise", {"exception": name, "message": "boom 42"})
    assert error["kind"] == "PythonException"
    assert error["details"] == {"exception": name}
    assert "boom 42" in error["message"]
    assert error["traceback"]
    assert "Traceback" in error["traceback"]
    assert name in error["traceback"]
    assert worker.call("ping")["status"] == "ok"


def test_raise_default_and_whitelist(spawn: SpawnFn) -> None:
    worker = spawn()
    assert worker.error("raise")["details"] == {"exception": "RuntimeError"}
    for bad in ("SystemExit", "KeyboardInterrupt", "os.system", "BaseException"):
        assert worker.error("raise", {"exception": bad})["kind"] == "InvalidArguments"


def test_write_garbage_is_a_framed_non_msgpack_body(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.submit("write_garbage", {"n": 37})
    frame = worker.recv()
    assert isinstance(frame, tuple)
    assert frame[0] == "undecodable"
    assert frame[1] == b"\xc1" * 37
    # the stream is still framed correctly: the next reply decodes
    assert worker.call("ping")["status"] == "ok"
    assert worker.call("get_stats")["requests"]["no_reply"] == 1


def test_write_oversize_header_then_nothing(spawn: SpawnFn) -> None:
    worker = spawn()
    worker.submit("write_oversize_header")
    frame = worker.recv()
    assert isinstance(frame, Oversize)
    assert frame.size == 3 * 1024**3
    worker.close_stdin()
    assert worker.wait_exit(1.0) == 0


def test_spam_stderr_then_reply(spawn: SpawnFn) -> None:
    worker = spawn()
    before = worker.stderr_bytes
    size = 4 * 1024 * 1024 + 17
    assert worker.call("spam_stderr", {"bytes": size}, timeout=30) == {"written": size}
    worker.wait_stderr_bytes(before + size)
    assert worker.call("ping")["status"] == "ok"
    spam = [line for line in worker.stderr_lines if line.startswith("dspex spam")]
    assert spam
    assert all(line.endswith("\n") for line in spam)


def test_spawn_grandchild_in_same_process_group(spawn: SpawnFn) -> None:
    worker = spawn()
    pid = worker.call("spawn_grandchild")["pid"]
    assert _alive(pid)
    assert os.getpgid(pid) == os.getpgid(worker.proc.pid)
    assert _cmdline(pid, within=5.0)[:2] == [b"sleep", b"1000"]
    os.killpg(worker.proc.pid, signal.SIGKILL)
    assert worker.wait_exit(5.0) == -signal.SIGKILL
    assert _wait_gone(pid, 2.0)


def test_print_to_stdout(spawn: SpawnFn) -> None:
    worker = spawn()
    assert worker.call("print_to_stdout") == {"printed": True}
    worker.wait_stderr("print_to_stdout marker (print)")
    worker.wait_stderr("print_to_stdout marker (fd 1)")


def test_ignore_shutdown_survives_sigterm_and_eof(spawn: SpawnFn) -> None:
    worker = spawn()
    assert worker.call("ignore_shutdown")["ignoring"] == ["SIGTERM", "EOF"]
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.call("ping")["status"] == "ok"  # SIGTERM was ignored
    worker.close_stdin()
    worker.wait_stderr("end of input ignored")
    with pytest.raises(AssertionError, match="still running"):
        worker.wait_exit(0.5)
    worker.proc.send_signal(signal.SIGKILL)
    assert worker.wait_exit(5.0) == -signal.SIGKILL
