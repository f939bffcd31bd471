"""The zygote (``--mode zygote``) as a process: preloading, forking workers, exits, refusals.

The test is the host: it hands the zygote a ``SOCK_SEQPACKET`` control socket (``pass_fds``
and ``DSPEX_ZYGOTE_FD``), and for each worker three fresh pipes, then speaks the worker
protocol to the forked child with ``conftest.Worker``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dspex_bridge import zygote as zygote_mod

from .conftest import PYTHON_DIR, Worker, qa_signature, worker_env

BOOT_TIMEOUT = 90.0  # importing DSPy, on a loaded machine
TIMEOUT = 10.0

PROJECT = {
    "zygpkg/__init__.py": "",
    "zygpkg/rand.py": """
        import random

        import dspy
        import numpy

        class Draw(dspy.Module):
            def forward(self, question):
                return {"answer": f"{random.random()!r} {numpy.random.random()!r}"}
    """,
    "zygthread.py": """
        import threading

        threading.Thread(target=threading.Event().wait, name="preload-bg", daemon=True).start()
    """,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zygote-project")
    for name, text in PROJECT.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


class Forked:
    """A worker forked by the zygote, seen like a ``Popen``: it is not the test's child, so
    its pidfd says when it has ended and the zygote's ``exit`` report gives its status."""

    def __init__(
        self, zygote: Zygote, pid: int, pidfd: int, stdin: int, stdout: int, stderr: int
    ) -> None:
        self.zygote = zygote
        self.pid = pid
        self.pidfd = pidfd
        self.stdin = open(stdin, "wb")  # noqa: SIM115 - closed by Worker.kill
        self.stdout = open(stdout, "rb")  # noqa: SIM115
        self.stderr = open(stderr, "rb")  # noqa: SIM115

    def ended(self, timeout: float | None = 0.0) -> bool:
        readable, _, _ = select.select([self.pidfd], [], [], timeout)
        return bool(readable)

    def returncode(self) -> int | None:
        """Popen's convention (``-signal``) from the zygote's report, if it has come."""
        report = self.zygote.exit_report(self.pid, timeout=0.0)
        if report is None:
            return None
        return -report["signal"] if "signal" in report else report["code"]

    def poll(self) -> int | None:
        return self.returncode() if self.ended() else None

    def wait(self, timeout: float | None = None) -> int | None:
        if not self.ended(timeout):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
        return self.returncode()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


class Zygote:
    """``python -m dspex_bridge --mode zygote``, its control socket and its stderr."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        full_env = worker_env(
            {
                "DSPEX_ZYGOTE_FD": str(child.fileno()),
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                **(env or {}),
            },
            lazy=False,
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dspex_bridge", "--mode", "zygote", "--worker-id", "zyg-t"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=[child.fileno()],
            env=full_env,
            cwd=str(PYTHON_DIR),
            start_new_session=True,
        )
        child.close()
        self.messages: list[tuple[dict[str, Any], list[int]]] = []
        self.ready: dict[str, Any] = {}
        self.eof = False
        self.workers: list[Worker] = []
        self._ids = itertools.count(1)
        self.stderr_lines: list[str] = []
        self._stderr_cond = threading.Condition()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._stderr_cond:
                self.stderr_lines.append(raw.decode("utf-8", "replace"))
                self._stderr_cond.notify_all()
        with self._stderr_cond:
            self.stderr_lines.append("<EOF>")
            self._stderr_cond.notify_all()

    def wait_stderr(self, needle: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        with self._stderr_cond:
            while True:
                for line in self.stderr_lines:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.stderr_lines[-1:] == ["<EOF>"]:
                    raise AssertionError(f"{needle!r} not on stderr: {self.stderr_lines[-8:]!r}")
                self._stderr_cond.wait(left)

    # -- the control socket ---------------------------------------------------------------

    def _receive(self, timeout: float) -> None:
        """Read one message into ``messages`` (or note EOF); nothing within ``timeout``: no-op."""
        if self.eof:
            return
        self.host.settimeout(max(timeout, 0.001))
        try:
            data, fds, _, _ = socket.recv_fds(self.host, 64 * 1024, 8)
        except TimeoutError:
            return
        except OSError:
            self.eof = True
            return
        if not data and not fds:
            self.eof = True
            return
        message = json.loads(data)
        assert isinstance(message, dict), message
        assert len(message) == 1, message
        self.messages.append((message, fds))

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> tuple[dict[str, Any], list[int]]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message, fds in self.messages[seen:]:
                if predicate(message):
                    return message, fds
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise AssertionError(f"no such message within {timeout} s: {self.messages!r}")
            self._receive(left)

    def index_of(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        return next(i for i, (m, _) in enumerate(self.messages) if predicate(m))

    def first(self, timeout: float = BOOT_TIMEOUT) -> dict[str, Any]:
        """The ready or refused message."""
        message, fds = self.wait_for(lambda m: True, timeout)
        assert fds == []
        return message

    def exit_report(self, pid: int, timeout: float = TIMEOUT) -> dict[str, Any] | None:
        try:
            message, _ = self.wait_for(lambda m: m.get("exit", {}).get("pid") == pid, timeout)
        except AssertionError:
            return None
        return dict(message["exit"])

    def send(self, message: Any, fds: list[int]) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        socket.send_fds(self.host, [data], fds)

    # -- spawning -------------------------------------------------------------------------

    def request(
        self, message: Any, nfds: int = 3
    ) -> tuple[dict[str, Any], list[int], tuple[int, int, int]]:
        """Send a spawn request with ``nfds`` of a fresh worker's pipe ends; the reply, its
        fds and the host's ends (stdin write, stdout read, stderr read)."""
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        try:
            self.send(message, [stdin_r, stdout_w, stderr_w][:nfds])
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)  # the zygote has its own copies now
        request_id = message["spawn"]["id"] if isinstance(message, dict) else 0

        def answer(m: dict[str, Any]) -> bool:
            body = m.get("spawned") or m.get("error")
            return body is not None and body.get("id") == request_id

        reply, fds = self.wait_for(answer)
        return reply, fds, (stdin_w, stdout_r, stderr_r)

    def spawn_message(self, worker_id: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        return {
            "spawn": {
                "id": next(self._ids),
                "worker_id": worker_id,
                "argv": ["--worker-id", worker_id],
                "env": {"DSPEX_TEST_FAULTS": "1", **(env or {})},
            }
        }

    def fork(
        self, worker_id: str, env: dict[str, str] | None = None, *, handshake: bool = True
    ) -> Worker:
        reply, fds, (stdin, stdout, stderr) = self.request(self.spawn_message(worker_id, env))
        if "spawned" not in reply:
            for fd in (stdin, stdout, stderr, *fds):
                os.close(fd)
            raise AssertionError(f"spawn refused: {reply}")
        assert len(fds) == 1, fds
        forked = Forked(self, reply["spawned"]["pid"], fds[0], stdin, stdout, stderr)
        worker = Worker(proc=forked)
        self.workers.append(worker)
        if handshake:
            worker.ready = worker.handshake(TIMEOUT)
        return worker

    # -- teardown -------------------------------------------------------------------------

    def kill(self) -> None:
        for worker in self.workers:
            worker.kill()
            worker.proc.close()
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.host.close()
        self._stderr_reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        for _, fds in self.messages:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


@pytest.fixture
def zygotes() -> Iterator[Callable[..., Zygote]]:
    """Start zygotes; each (and every worker it forked) is killed and reaped at teardown."""
    started: list[Zygote] = []

    def start(env: dict[str, str] | None = None) -> Zygote:
        zygote = Zygote(env)
        started.append(zygote)
        return zygote

    yield start
    for zygote in started:
        zygote.kill()


@pytest.fixture(scope="module")
def zygote(project: Path) -> Iterator[Zygote]:
    """One ready zygote with the project's ``zygpkg.rand`` preloaded, shared by the module."""
    env = {"DSPEX_PROJECT_DIR": str(project), "DSPEX_ZYGOTE_PRELOAD": "zygpkg.rand, "}
    zygote = Zygote(env)
    try:
        zygote.ready = zygote.first()["ready"]
        yield zygote
    finally:
        zygote.kill()


def _tasks(pid: int) -> list[str]:
    return os.listdir(f"/proc/{pid}/task")


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_ready_message(zygote: Zygote) -> None:
    ready = zygote.ready
    assert set(ready) == {"pid", "python", "dspy", "import_ms", "preloaded", "deferred"}
    assert ready["pid"] == zygote.proc.pid
    assert ready["python"] == platform.python_version()
    assert ready["dspy"] == "3.4.1"
    assert isinstance(ready["import_ms"], float)
    assert ready["import_ms"] > 0
    preloaded = ready["preloaded"]
    assert preloaded[0] == "dspy"
    for name in ("dspex_bridge.server", "dspex_bridge.optimization", "zygpkg.rand"):
        assert name in preloaded
    assert preloaded[-1] == "zygpkg.rand"
    # What a direct worker imports only on first use comes after ready, in the planned order.
    deferred = ready["deferred"]
    assert deferred[0] == "litellm"
    assert "optuna" in deferred
    assert "litellm" not in preloaded
    assert deferred == [name for name in zygote_mod.DEFERRED_MODULES if name in deferred]
    # numpy (imported by zygpkg.rand) starts no BLAS threads in the zygote.
    assert len(_tasks(zygote.proc.pid)) == 1
    zygote.wait_stderr("dspex[zyg-t pid=")


def test_forked_worker_serves_pings_and_exits_on_eof(zygote: Zygote) -> None:
    worker = zygote.fork("zw-1")
    proc = worker.proc
    assert isinstance(proc, Forked)
    pid = proc.pid
    ready = worker.ready
    assert ready["worker_id"] == "zw-1"
    assert ready["pid"] == pid
    assert ready["protocol"] == 2
    assert ready["dspy"] == "3.4.1"
    result = worker.call("ping")
    assert result["pid"] == pid
    assert result["worker_id"] == "zw-1"
    assert os.getpgid(pid) == pid  # it leads its own process group
    assert _ppid(pid) == zygote.proc.pid
    fdinfo = Path(f"/proc/self/fdinfo/{proc.pidfd}").read_text()
    assert f"Pid:\t{pid}\n" in fdinfo  # the pidfd is the child's
    # Nothing of the zygote's (its control socket, its wakeup pipe) reached the worker.
    links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert not [link for link in links if link.startswith("socket:")], links
    worker.wait_stderr("dspex[zw-1 pid=")  # the worker's own log lines, on its own stderr
    worker.close_stdin()
    assert proc.ended(TIMEOUT)
    assert zygote.exit_report(pid) == {"pid": pid, "code": 0}
    spawned = zygote.index_of(lambda m: m.get("spawned", {}).get("pid") == pid)
    assert zygote.index_of(lambda m: m.get("exit", {}).get("pid") == pid) > spawned


def test_sigkill_of_a_worker_is_reported_as_signal_9(zygote: Zygote) -> None:
    worker = zygote.fork("zw-kill")
    pid = worker.proc.pid
    assert worker.call("ping")["pid"] == pid
    os.kill(pid, signal.SIGKILL)
    assert zygote.exit_report(pid) == {"pid": pid, "signal": 9}


def test_workers_have_their_own_random_streams(zygote: Zygote) -> None:
    draws = []
    for name in ("zw-rand-1", "zw-rand-2"):
        worker = zygote.fork(name)
        worker.call("configure_lm", {"model": "dummy"})
        module = {"module": "python", "module_args": {"path": "zygpkg.rand:Draw"}}
        worker.call("create_program", {"program_id": "draw", "signature": qa_signature(), **module})
        result = worker.call("execute_program", {"program_id": "draw", "inputs": {"question": "?"}})
        draws.append(result["outputs"]["answer"].split())
    (python_1, numpy_1), (python_2, numpy_2) = draws
    assert python_1 != python_2  # random.random()
    assert numpy_1 != numpy_2  # numpy's global generator


def test_bad_spawn_requests_are_errors_and_the_zygote_keeps_serving(zygote: Zygote) -> None:
    message = zygote.spawn_message("zw-two-fds")
    reply, fds, ends = zygote.request(message, nfds=2)
    for fd in ends:
        os.close(fd)
    assert fds == []
    assert reply["error"]["id"] == message["spawn"]["id"]
    assert "2 descriptor(s) attached; expected 3" in reply["error"]["message"]
    reply, _, ends = zygote.request(b"{not json")
    for fd in ends:
        os.close(fd)
    assert reply["error"]["id"] == 0  # no usable id
    assert "not a JSON object" in reply["error"]["message"]
    bad_env = zygote.spawn_message("zw-bad-env")
    bad_env["spawn"]["env"] = {"A": 1}
    reply, _, ends = zygote.request(bad_env)
    for fd in ends:
        os.close(fd)
    assert reply["error"]["id"] == bad_env["spawn"]["id"]
    worker = zygote.fork("zw-after-errors")
    assert worker.call("ping")["worker_id"] == "zw-after-errors"


def test_fail_import_hook_applies_to_the_forked_worker(zygote: Zygote) -> None:
    worker = zygote.fork("zw-broken", {"DSPEX_TEST_FAIL_IMPORT": "1"}, handshake=False)
    assert isinstance(worker.recv(TIMEOUT), EOFError)
    assert zygote.exit_report(worker.proc.pid) == {"pid": worker.proc.pid, "code": 1}
    worker.wait_stderr("ModuleNotFoundError: No module named 'dspy_missing_dependency'")


def test_a_preload_module_that_starts_a_thread_is_refused(
    zygotes: Callable[..., Zygote], project: Path
) -> None:
    zygote = zygotes({"DSPEX_PROJECT_DIR": str(project), "DSPEX_ZYGOTE_PRELOAD": "zygthread"})
    reason = zygote.first()["refused"]["reason"]
    assert reason.startswith("2 threads alive after preloading (MainThread, preload-bg)"), reason
    assert reason.endswith("forking is unsafe")
    assert zygote.proc.wait(TIMEOUT) == 3


def test_a_missing_preload_module_is_refused(zygotes: Callable[..., Zygote]) -> None:
    zygote = zygotes({"DSPEX_ZYGOTE_PRELOAD": "dspex_no_such_module_zz"})
    assert zygote.first() == {
        "refused": {"reason": "ModuleNotFoundError: No module named 'dspex_no_such_module_zz'"}
    }
    assert zygote.proc.wait(TIMEOUT) == 3


def test_workers_outlive_the_zygote(zygotes: Callable[..., Zygote]) -> None:
    zygote = zygotes()
    assert "ready" in zygote.first()
    worker = zygote.fork("zw-orphan")
    proc = worker.proc
    os.killpg(zygote.proc.pid, signal.SIGKILL)  # the zygote's group only: the worker has its own
    assert zygote.proc.wait(TIMEOUT) == -signal.SIGKILL
    assert worker.call("ping")["pid"] == proc.pid
    assert worker.call("ping")["requests"] == 2
    worker.close_stdin()
    assert proc.ended(TIMEOUT)  # it still ends on its stdin's EOF


def test_control_eof_exits_once_the_workers_are_gone(zygotes: Callable[..., Zygote]) -> None:
    zygote = zygotes()
    assert "ready" in zygote.first()
    first = zygote.fork("zw-a")
    second = zygote.fork("zw-b")
    zygote.host.shutdown(socket.SHUT_RDWR)
    zygote.wait_stderr("control socket closed: no more forks; waiting for 2 worker(s)")
    first.close_stdin()
    zygote.wait_stderr(f"worker pid {first.proc.pid} ended")
    assert zygote.proc.poll() is None  # one worker left
    assert second.call("ping")["worker_id"] == "zw-b"
    second.close_stdin()
    assert zygote.proc.wait(TIMEOUT) == 0


def test_stdin_eof_stops_forking_but_reports_exits(zygotes: Callable[..., Zygote]) -> None:
    zygote = zygotes()
    assert "ready" in zygote.first()
    worker = zygote.fork("zw-last")
    assert zygote.proc.stdin is not None
    zygote.proc.stdin.close()
    zygote.wait_stderr("end of input on stdin: no more forks")
    reply, _, ends = zygote.request(zygote.spawn_message("zw-too-late"))
    for fd in ends:
        os.close(fd)
    assert reply["error"]["message"] == "the zygote is stopping"
    worker.close_stdin()
    assert zygote.exit_report(worker.proc.pid) == {"pid": worker.proc.pid, "code": 0}
    assert zygote.proc.wait(TIMEOUT) == 0


def test_sigterm_without_workers_exits_zero(zygotes: Callable[..., Zygote]) -> None:
    zygote = zygotes()
    assert "ready" in zygote.first()
    zygote.proc.send_signal(signal.SIGTERM)
    assert zygote.proc.wait(TIMEOUT) == 0
    zygote.wait_stderr("received SIGTERM: no more forks")


def test_deferred_modules_reach_workers_forked_once_the_zygote_was_idle(zygote: Zygote) -> None:
    assert "litellm" in zygote.ready["deferred"]
    line = zygote.wait_stderr("deferred preload done in ", BOOT_TIMEOUT)
    assert ": litellm, " in line, line
    worker = zygote.fork("zw-deferred")
    stats = worker.call("get_stats")
    assert stats["modules"] == {"dspy": True, "litellm": True}
    assert len(_tasks(zygote.proc.pid)) == 1  # the deferred imports started no thread


def test_a_spawn_right_after_ready_is_served_before_the_deferred_imports(
    zygotes: Callable[..., Zygote],
) -> None:
    zygote = zygotes()
    assert "litellm" in zygote.first()["ready"]["deferred"]
    # A pool's first burst, sent at once (each request restarts the zygote's 300 ms idle
    # wait); the handshakes come after.
    workers = [zygote.fork(f"zw-burst-{i}", handshake=False) for i in range(3)]
    for worker in workers:
        worker.ready = worker.handshake(TIMEOUT)
        assert worker.ready["worker_id"].startswith("zw-burst-")
        assert worker.call("get_stats")["modules"] == {"dspy": True, "litellm": False}
    assert not [line for line in zygote.stderr_lines if "deferred preload done" in line]
    zygote.wait_stderr("deferred preload done in ", BOOT_TIMEOUT)
    late = zygote.fork("zw-after-burst")
    assert late.call("get_stats")["modules"]["litellm"] is True
    assert workers[0].call("ping")["worker_id"] == "zw-burst-0"


def test_lazy_dspy_zygote_imports_no_dspy_and_its_workers_import_it_on_demand(
    zygotes: Callable[..., Zygote],
) -> None:
    zygote = zygotes({"DSPEX_LAZY_DSPY": "1"})
    ready = zygote.first()["ready"]
    assert ready["dspy"] == "3.4.1"  # read from the package's metadata, not imported
    preloaded = ready["preloaded"]
    assert "dspy" not in preloaded
    assert "dspex_bridge.server" in preloaded
    assert "dspex_bridge.deadline_lm" not in preloaded  # it imports DSPy at module level
    assert ready["deferred"] == []
    zygote.wait_stderr("DSPy lazy; deferred: none")
    worker = zygote.fork("zw-lazy")
    assert worker.call("ping")["worker_id"] == "zw-lazy"
    stats = worker.call("get_stats")
    assert stats["modules"] == {"dspy": False, "litellm": False}
    assert stats["dspy_loaded"] is False
    assert worker.call("configure_lm", {"model": "dummy"})["status"] == "configured"
    stats = worker.call("get_stats")
    assert stats["modules"]["dspy"] is True
    assert stats["dspy_loaded"] is True
    # The zygote itself stays without DSPy: the next child starts as lazy as the first.
    assert zygote.fork("zw-lazy-2").call("get_stats")["modules"]["dspy"] is False


def test_deferred_import_failures_are_skipped_and_a_thread_stops_forking(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process: the zygote's deferred step on its own (this process has threads of its
    own, so the thread census is the test's)."""
    host, control = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    census = iter([None, None, "2 threads alive after the deferred import of x (MainThread, t)"])
    monkeypatch.setattr(zygote_mod, "threads_alive", lambda when: next(census))
    zyg = zygote_mod.Zygote(control, {}, None, [], ["dspex_no_such_module_zz", "json", "csv"])
    try:
        zyg.last_control -= zygote_mod.IDLE_BEFORE_DEFERRED_S
        assert zyg.idle()
        assert zyg.poll_timeout_ms() == 0
        with caplog.at_level("INFO", logger="dspex_bridge.zygote"):
            zyg.import_deferred()
            assert zyg.deferred_skipped == ["dspex_no_such_module_zz"]
            assert "deferred preload of dspex_no_such_module_zz failed" in caplog.text
            zyg.import_deferred()
            assert zyg.deferred_imported == ["json"]
            zyg.import_deferred()  # the census now sees a thread
        assert zyg.unsafe is not None
        assert not zyg.deferred
        assert zyg.poll_timeout_ms() == zygote_mod.POLL_MS
        assert "every spawn request is an error from now on" in caplog.text
        pipes = [os.pipe() for _ in range(3)]
        fds = [pipes[0][0], pipes[1][1], pipes[2][1]]
        message = {"spawn": {"id": 7, "worker_id": "w", "argv": [], "env": {}}}
        zyg.on_message(json.dumps(message).encode(), fds, 0)
        reply = json.loads(host.recv(65536))
        assert reply == {"error": {"id": 7, "message": zyg.unsafe}}
        assert "(MainThread, t)" in reply["error"]["message"]
        for r, w in pipes:
            os.close(r)
            os.close(w)
    finally:
        host.close()
        control.close()
        os.close(zyg.wake_r)
        os.close(zyg.wake_w)


def test_sigterm_interrupts_a_deferred_import(zygotes: Callable[..., Zygote]) -> None:
    zygote = zygotes()
    assert zygote.first()["ready"]["deferred"][0] == "litellm"
    zygote.wait_stderr("deferred preload starting: litellm, ", BOOT_TIMEOUT)
    zygote.proc.send_signal(signal.SIGTERM)  # litellm's import takes seconds
    assert zygote.proc.wait(TIMEOUT) == 0
    zygote.wait_stderr("received SIGTERM during a deferred import: no more forks")
    assert not [line for line in zygote.stderr_lines if "deferred preload done" in line]
