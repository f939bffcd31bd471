"""Helpers shared by the anchors: the worker's environment, the result line, statistics."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

# The directory that holds the ``dspex_bridge`` package (what the Rust spawner puts on
# PYTHONPATH).
PYTHON_DIR = Path(__file__).resolve().parents[2]


def worker_env() -> dict[str, str]:
    """This process's environment as the Rust spawner sets it for a worker.

    ``DSPEX_*`` variables are dropped (so DSPy is imported before the handshake, as by
    default); PYTHONPATH, PYTHONUNBUFFERED and LITELLM_LOCAL_MODEL_COST_MAP are set.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env["PYTHONPATH"] = str(PYTHON_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return env


def log(message: str) -> None:
    print(f"dspex-bench: {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """Print the result: one JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of an ascending, non-empty list."""
    rank = max(1, math.ceil(len(sorted_values) * q / 100))
    return sorted_values[rank - 1]


def median(values: list[float]) -> float:
    return float(statistics.median(values))
