"""The ``dspex bench`` anchors (python -m dspex_bridge.bench), each run once with tiny sizes.

Only the shape of each result is checked: one JSON object on stdout, positive figures.
Timing thresholds never go into tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dspex_bridge.bench.common import percentile

PYTHON_DIR = Path(__file__).resolve().parents[1]
TIMEOUT = 60


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env["PYTHONPATH"] = str(PYTHON_DIR)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


def run_anchor(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "dspex_bridge.bench", *args],
        env=_env(),
        cwd=str(PYTHON_DIR),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, f"stdout must hold only the result line: {done.stdout!r}"
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_b1_pools():
    result = run_anchor("b1", "--requests", "200", "--callers", "8", "--processes", "2")
    assert set(result) == {"multiprocessing_pool_per_s", "process_pool_executor_per_s", "requests"}
    assert positive(result["multiprocessing_pool_per_s"])
    assert positive(result["process_pool_executor_per_s"])
    assert result["requests"] == 200


def test_b2_bare_loop():
    result = run_anchor("b2", "--requests", "200", "--warmup", "10")
    assert set(result) == {"p50_us", "p99_us", "mean_us", "requests"}
    assert all(positive(result[k]) for k in ("p50_us", "p99_us", "mean_us"))
    assert result["p50_us"] <= result["p99_us"]
    assert result["requests"] == 200


def test_b3_import():
    result = run_anchor("b3", "--repeats", "1", "--warmup", "0")
    assert set(result) == {"import_wall_s", "import_inside_s", "samples_wall_s"}
    assert positive(result["import_wall_s"])
    assert positive(result["import_inside_s"])
    assert result["import_inside_s"] < result["import_wall_s"]
    assert result["samples_wall_s"] == [result["import_wall_s"]]


def test_b5_memory():
    result = run_anchor("b5")
    assert set(result) == {"rss_bytes", "pss_bytes"}
    assert all(isinstance(result[k], int) and result[k] > 0 for k in result)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_per_call(threads):
    result = run_anchor("cpu", "--calls", "20", "--warmup", "2", "--threads", str(threads))
    assert set(result) == {"cpu_per_call_us", "wall_per_call_us", "calls", "threads"}
    assert positive(result["cpu_per_call_us"])
    assert positive(result["wall_per_call_us"])
    assert result["calls"] == 20
    assert result["threads"] == threads


def test_bad_arguments_exit_2():
    done = subprocess.run(
        [sys.executable, "-m", "dspex_bridge.bench", "b1", "--requests", "0"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


@pytest.mark.skipif(
    importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None,
    reason="fastapi / uvicorn not installed (see dspex_bridge/bench/serve-requirements.txt)",
)
def test_serve_recipe():
    proc = subprocess.Popen(
        [sys.executable, "-m", "dspex_bridge.bench", "serve", "--port", "0", "--latency-ms", "5"],
        env=_env(),
        cwd=str(PYTHON_DIR),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["listening"]
        assert isinstance(port, int)
        assert port > 0
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict",
            data=json.dumps({"question": "What is the capital of France?"}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            body = json.load(response)
        assert set(body) == {"answer"}
        assert body["answer"].startswith("answer: ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
