"""What DSPy alone costs: B3 (``import dspy``), B5 (memory after it), B6/B7 (CPU per call)."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .common import PYTHON_DIR, log, median, worker_env

# The child of B3 prints how long the import itself took (interpreter start-up excluded).
_IMPORT_CHILD = "import time; t = time.perf_counter(); import dspy; print(time.perf_counter() - t)"


def import_time(repeats: int, warmup: int) -> dict[str, Any]:
    """B3: ``import dspy`` in a fresh interpreter, spawn to exit (median of ``repeats``)."""
    walls: list[float] = []
    insides: list[float] = []
    for i in range(warmup + repeats):
        started = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", _IMPORT_CHILD],
            env=worker_env(),
            cwd=str(PYTHON_DIR),
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - started
        if i >= warmup:
            walls.append(wall)
            insides.append(float(child.stdout.strip().splitlines()[-1]))
    return {
        "import_wall_s": median(walls),
        "import_inside_s": median(insides),
        "samples_wall_s": walls,
    }


def _proc_kib(path: str, key: str) -> int:
    """The ``key:  N kB`` line of a /proc file, in bytes."""
    with open(path, encoding="ascii") as lines:
        for line in lines:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(f"no {key} in {path}")


def memory() -> dict[str, Any]:
    """B5: this process's RSS and PSS after ``import dspy``."""
    import dspy  # noqa: F401 - the import is what is measured

    return {
        "rss_bytes": _proc_kib("/proc/self/status", "VmRSS"),
        "pss_bytes": _proc_kib("/proc/self/smaps_rollup", "Pss"),
    }


def dummy_lm(latency_ms: float = 0.0) -> Any:
    """The LM a worker builds for ``{"model": "dummy", "latency_ms": latency_ms}``."""
    from dspex_bridge.lm import build_lm, parse_lm_config

    return build_lm(parse_lm_config({"model": "dummy", "latency_ms": latency_ms})).lm


def cpu_per_call(calls: int, threads: int, warmup: int) -> dict[str, Any]:
    """B7 (and B6's CPU bound): ``dspy.Predict`` in-process on the dummy LM, no latency.

    Run with the settings the worker runs a program with (``lm`` and ``disable_history``),
    configured globally so every thread sees them.
    """
    import dspy

    dspy.configure(lm=dummy_lm(), disable_history=True)
    predict = dspy.Predict("question -> answer")

    def call(n: int) -> None:
        predict(question=f"What is question number {n}?")

    for n in range(warmup):
        call(n)
    log(f"{warmup} warmup calls done; timing {calls} calls on {threads} thread(s)")
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    if threads == 1:
        for n in range(warmup, warmup + calls):
            call(n)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(call, range(warmup, warmup + calls)))
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    return {
        "cpu_per_call_us": cpu / calls * 1e6,
        "wall_per_call_us": wall / calls * 1e6,
        "calls": calls,
        "threads": threads,
    }
