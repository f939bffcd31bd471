"""Fixtures that run the real worker as a subprocess and speak the protocol to it."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

PYTHON_DIR = Path(__file__).resolve().parents[1]
HEADER = struct.Struct(">I")
READ_LIMIT = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0


class Oversize:
    """The worker wrote a header larger than the test reader accepts."""

    def __init__(self, size: int) -> None:
        self.size = size


def worker_env(env: dict[str, str] | None = None, *, lazy: bool = True) -> dict[str, str]:
    """The test's environment without any ``DSPEX_`` variable, plus ``env``."""
    full_env = dict(os.environ)
    for key in list(full_env):
        if key.startswith("DSPEX_"):
            del full_env[key]
    full_env["PYTHONPATH"] = str(PYTHON_DIR)
    full_env["PYTHONUNBUFFERED"] = "1"
    if lazy:
        full_env["DSPEX_LAZY_DSPY"] = "1"
    full_env.update(env or {})
    return full_env


class Worker:
    """A worker subprocess, its frames (read by a thread) and its stderr lines."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        *,
        lazy: bool = True,
        proc: Any = None,
    ) -> None:
        """Start ``python -m dspex_bridge``, or speak to ``proc``: anything with Popen's
        ``stdin`` / ``stdout`` / ``stderr`` streams, ``pid``, ``poll``, ``wait`` and ``kill``
        (a worker forked by the zygote, ``test_zygote.Forked``)."""
        self.started = time.monotonic()
        if proc is None:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dspex_bridge", *(args or [])],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=worker_env(env, lazy=lazy),
                cwd=str(PYTHON_DIR),
                start_new_session=True,
            )
        self.proc = proc
        self.frames: queue.Queue[Any] = queue.Queue()
        self.pending: dict[int, dict[str, Any]] = {}
        self.stderr_lines: list[str] = []
        self.stderr_bytes = 0
        # Needles counted on every stderr line, even lines later trimmed from stderr_lines.
        self.stderr_watch: dict[str, int] = {}
        self.ready: dict[str, Any] = {}
        self._stderr_cond = threading.Condition()
        # Protocol 2 side frames: events and callbacks, by request id, and every decoded map
        # frame (replies too) in arrival order.
        self.side_cond = threading.Condition()
        self.log: list[dict[str, Any]] = []
        self.events: dict[int, list[dict[str, Any]]] = {}
        self.calls: dict[int, list[dict[str, Any]]] = {}
        # Called on the reader thread for each callback frame; returns the answer (without
        # "call": {"ok": True, "result": ...} or {"ok": False, "error": ...}) or None to
        # leave it unanswered (answer later with ``answer_call``).
        self.call_handler: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read_frames, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    # -- background readers -----------------------------------------------------------

    def _read_exact(self, n: int) -> bytes | None:
        assert self.proc.stdout is not None
        chunks = []
        while n > 0:
            chunk = self.proc.stdout.read1(min(n, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _read_frames(self) -> None:
        while True:
            header = self._read_exact(HEADER.size)
            if header is None:
                self.frames.put(EOFError())
                return
            (size,) = HEADER.unpack(header)
            if size > READ_LIMIT:
                self.frames.put(Oversize(size))
                return
            body = self._read_exact(size)
            if body is None:
                self.frames.put(EOFError())
                return
            try:
                decoded = msgpack.unpackb(body, raw=False)
            except (ValueError, msgpack.UnpackException) as exc:
                self.frames.put(("undecodable", body, exc))
                continue
            if (
                isinstance(decoded, dict)
                and "ok" not in decoded
                and ("event" in decoded or "call" in decoded)
            ):
                self._side_frame(decoded)
                continue
            if isinstance(decoded, dict):
                with self.side_cond:
                    self.log.append(decoded)
                    self.side_cond.notify_all()
            self.frames.put(decoded)

    def _side_frame(self, frame: dict[str, Any]) -> None:
        with self.side_cond:
            self.log.append(frame)
            table = self.calls if "call" in frame else self.events
            table.setdefault(frame.get("id"), []).append(frame)
            self.side_cond.notify_all()
            handler = self.call_handler
        if "call" in frame and handler is not None:
            answer = handler(frame)
            if answer is not None:
                self.answer_call(frame["call"], answer)

    def answer_call(self, call_id: Any, answer: dict[str, Any]) -> None:
        """Send the host's answer to callback ``call_id``."""
        self.send({"call": call_id, **answer})

    def wait_calls(
        self, request_id: int, count: int, timeout: float = DEFAULT_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Wait until request ``request_id`` has sent ``count`` callback frames."""
        deadline = time.monotonic() + timeout
        with self.side_cond:
            while len(self.calls.get(request_id, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"request {request_id}: {len(self.calls.get(request_id, []))} of "
                        f"{count} callbacks within {timeout} s"
                    )
                self.side_cond.wait(left)
            return list(self.calls[request_id])

    def frames_of(self, request_id: int) -> list[dict[str, Any]]:
        """Every frame of one request seen so far (events, callbacks, reply), in order."""
        with self.side_cond:
            return [f for f in self.log if f.get("id") == request_id and "command" not in f]

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            with self._stderr_cond:
                for needle in self.stderr_watch:
                    if needle in line:
                        self.stderr_watch[needle] += 1
                self.stderr_lines.append(line)
                self.stderr_bytes += len(raw)
                if len(self.stderr_lines) > 20000:
                    del self.stderr_lines[:10000]
                self._stderr_cond.notify_all()
        with self._stderr_cond:
            self.stderr_lines.append("<EOF>")
            self._stderr_cond.notify_all()

    # -- protocol -----------------------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        with self._write_lock:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def send_body(self, body: bytes) -> None:
        self.send_raw(HEADER.pack(len(body)) + body)

    def send(self, message: dict[str, Any]) -> None:
        self.send_body(msgpack.packb(message, use_bin_type=True))

    def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The next frame (a decoded map, ``Oversize``, ``EOFError`` or undecodable tuple)."""
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no frame from the worker within {timeout} s") from None

    def handshake(self, timeout: float = 30.0) -> dict[str, Any]:
        frame = self.recv(timeout)
        assert isinstance(frame, dict), frame
        assert frame["id"] == 0, frame
        assert frame["ok"] is True, frame
        return frame["result"]

    def submit(self, command: str, args: Any = None, **extra: Any) -> int:
        request_id = extra.pop("id", None) or self.next_id()
        message: dict[str, Any] = {"id": request_id, "command": command}
        message["args"] = {} if args is None else args
        message.update(extra)
        self.send(message)
        return request_id

    def reply(self, request_id: int, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while request_id not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no reply to request {request_id} within {timeout} s")
            frame = self.recv(left)
            if not isinstance(frame, dict):
                raise AssertionError(f"expected a reply to {request_id}, got {frame!r}")
            self.pending[frame["id"]] = frame
        return self.pending.pop(request_id)

    def request(
        self, command: str, args: Any = None, timeout: float = DEFAULT_TIMEOUT, **extra: Any
    ) -> dict[str, Any]:
        return self.reply(self.submit(command, args, **extra), timeout)

    def call(self, command: str, args: Any = None, **extra: Any) -> Any:
        """Request and return the result of a successful reply."""
        reply = self.request(command, args, **extra)
        assert reply["ok"] is True, reply
        return reply["result"]

    def error(self, command: str, args: Any = None, **extra: Any) -> dict[str, Any]:
        """Request and return the error of a failure reply."""
        reply = self.request(command, args, **extra)
        assert reply["ok"] is False, reply
        error = reply["error"]
        assert set(error) == {"kind", "message", "traceback", "details"}, error
        return error

    # -- process --------------------------------------------------------------------------

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout} s") from None

    def wait_stderr(self, needle: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        with self._stderr_cond:
            while True:
                for line in self.stderr_lines:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.stderr_lines and self.stderr_lines[-1] == "<EOF>"):
                    raise AssertionError(
                        f"{needle!r} not on stderr; tail: {self.stderr_lines[-5:]!r}"
                    )
                self._stderr_cond.wait(left)

    def wait_stderr_bytes(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self._stderr_cond:
            while self.stderr_bytes < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {self.stderr_bytes} of {count} stderr bytes")
                self._stderr_cond.wait(left)

    def stderr_text(self) -> str:
        with self._stderr_cond:
            return "".join(self.stderr_lines)

    def watch_stderr(self, needle: str) -> None:
        """Count ``needle`` on every stderr line from now on (see ``stderr_watch``)."""
        with self._stderr_cond:
            self.stderr_watch.setdefault(needle, 0)

    def sync_stderr(self) -> None:
        """Wait until every stderr line the worker wrote before this call has been read."""
        marker = f"dspex-sync-{self.next_id()}-{time.monotonic_ns()}"
        self.call("print_to_stdout", {"text": marker})
        self.wait_stderr(f"{marker} (fd 1)")

    def wait_stats(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """Poll ``get_stats``'s ``requests`` map until ``predicate`` holds (or fail)."""
        deadline = time.monotonic() + timeout
        while True:
            requests = self.call("get_stats")["requests"]
            if predicate(requests):
                return requests
            if time.monotonic() > deadline:
                raise AssertionError(f"stats never matched within {timeout} s: {requests}")
            time.sleep(0.01)  # polling the worker's counters against a deadline

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            # The worker is gone; its process group may still hold grandchildren.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        # The readers see end of input now; closing a pipe under a reading thread races.
        for reader in self._readers:
            reader.join(2.0)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


SpawnFn = Callable[..., Worker]


@pytest.fixture
def spawn() -> Iterator[SpawnFn]:
    """Start workers (lazy DSPy by default); all are killed and reaped at teardown."""
    workers: list[Worker] = []

    def start(
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        *,
        lazy: bool = True,
        faults: bool = True,
        handshake: bool = True,
    ) -> Worker:
        full_env = dict(env or {})
        if faults:
            full_env.setdefault("DSPEX_TEST_FAULTS", "1")
        worker = Worker(full_env, args, lazy=lazy)
        workers.append(worker)
        if handshake:
            worker.ready = worker.handshake()
        return worker

    yield start
    for worker in workers:
        worker.kill()


@pytest.fixture(scope="module")
def dspy_worker() -> Iterator[Worker]:
    """One worker with DSPy imported at start, shared by a test module."""
    worker = Worker({"DSPEX_TEST_FAULTS": "1"}, ["--worker-id", "shared"], lazy=False)
    try:
        worker.ready = worker.handshake(60.0)
        yield worker
    finally:
        worker.kill()


def qa_signature(**overrides: Any) -> dict[str, Any]:
    signature: dict[str, Any] = {
        "name": "QA",
        "instructions": "Answer the question.",
        "inputs": [{"name": "question", "type": "str", "description": "a question"}],
        "outputs": [{"name": "answer", "type": "str"}],
    }
    signature.update(overrides)
    return signature


class LoopbackLM:
    """An OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1, run by the test.

    It answers in DSPy's ChatAdapter format (one ``answer`` field) after ``delay`` seconds
    (cut short when the test ends) and records what it saw.
    """

    ANSWER = "from the loopback LM"

    def __init__(self) -> None:
        self.delay = 0.0
        self.release = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(size) or b"{}")
                with owner.lock:
                    owner.requests.append({"path": self.path, "body": body})
                    owner.auth.append(self.headers.get("authorization"))
                if owner.delay > 0:
                    owner.release.wait(owner.delay)
                owner.respond(self)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def respond(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        content = f"[[ ## answer ## ]]\n{self.ANSWER}\n\n[[ ## completed ## ]]"
        data = json.dumps(
            {
                "id": "chatcmpl-loopback",
                "object": "chat.completion",
                "created": 0,
                "model": "loopback",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        ).encode()
        try:
            handler.send_response(200)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass  # the client gave up (its timeout fired)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback_lm() -> Iterator[LoopbackLM]:
    server = LoopbackLM()
    try:
        yield server
    finally:
        server.close()


# The shipped dataset (the repository's data/capitals): 20 train and 10 dev question -> answer
# pairs, every dev question also in the train set.
CAPITALS_DIR = PYTHON_DIR.parent / "data" / "capitals"
CAPITALS_SIGNATURE: dict[str, Any] = {
    "name": "CapitalQA",
    "instructions": "Answer the question with the name of a city.",
    "inputs": [{"name": "question", "type": "str"}],
    "outputs": [{"name": "answer", "type": "str"}],
}


def capitals(split: str) -> list[dict[str, Any]]:
    """The ``train`` or ``dev`` split of the shipped dataset, as wire examples."""
    lines = (CAPITALS_DIR / f"{split}.jsonl").read_text("utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [
        {"inputs": {"question": r["question"]}, "labels": {"answer": r["answer"]}} for r in records
    ]
