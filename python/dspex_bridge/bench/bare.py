"""B2's anchor: the bare loop, one caller driving the real worker over its pipes.

A plain blocking client: write a frame, read the reply, one request at a time. Each request
carries ``deadline_ms`` as the Rust side's do.
"""

from __future__ import annotations

import os
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

import msgpack

from .common import PYTHON_DIR, log, percentile, worker_env

HEADER = struct.Struct(">I")
DEADLINE_MS = 30_000


def _read_exact(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the worker closed its stdout")
        data += chunk
    return data


def read_frame(fd: int) -> Any:
    (size,) = HEADER.unpack(_read_exact(fd, HEADER.size))
    return msgpack.unpackb(_read_exact(fd, size), raw=False)


def write_frame(fd: int, message: dict[str, Any]) -> None:
    body = msgpack.packb(message, use_bin_type=True)
    os.write(fd, HEADER.pack(len(body)) + body)


def run(requests: int, warmup: int) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dspex_bridge", "--worker-id", "bare"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=worker_env(),
        cwd=str(PYTHON_DIR),
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    out, inp = proc.stdout.fileno(), proc.stdin.fileno()
    try:
        ready = read_frame(out)
        if not (ready.get("ok") and ready.get("result", {}).get("event") == "ready"):
            raise RuntimeError(f"unexpected handshake: {ready!r}")
        log(f"worker ready (pid {ready['result'].get('pid')}, dspy {ready['result'].get('dspy')})")
        samples: list[float] = []
        for request_id in range(1, warmup + requests + 1):
            message = {"id": request_id, "command": "ping", "args": {}, "deadline_ms": DEADLINE_MS}
            started = time.perf_counter_ns()
            write_frame(inp, message)
            reply = read_frame(out)
            elapsed = time.perf_counter_ns() - started
            if reply.get("id") != request_id or not reply.get("ok"):
                raise RuntimeError(f"unexpected reply to request {request_id}: {reply!r}")
            if request_id > warmup:
                samples.append(elapsed / 1000.0)
    finally:
        proc.stdin.close()  # end of input: the worker exits 0 within 1 s
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    samples.sort()
    return {
        "p50_us": percentile(samples, 50),
        "p99_us": percentile(samples, 99),
        "mean_us": statistics.fmean(samples),
        "requests": requests,
    }
