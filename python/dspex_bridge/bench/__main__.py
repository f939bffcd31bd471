"""``python -m dspex_bridge.bench <anchor> [options]``: run one anchor, print its JSON line."""

from __future__ import annotations

import argparse
from typing import Any

from .common import emit


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m dspex_bridge.bench", description=__doc__)
    anchors = top.add_subparsers(dest="anchor", required=True)

    b1 = anchors.add_parser("b1", help="no-op throughput of multiprocessing pools")
    b1.add_argument("--requests", type=_positive, default=20_000)
    b1.add_argument("--callers", type=_positive, default=64, help="tasks outstanding at most")
    b1.add_argument("--processes", type=_positive, default=2)

    b2 = anchors.add_parser("b2", help="the bare loop: ping round trips to a worker")
    b2.add_argument("--requests", type=_positive, default=5_000)
    b2.add_argument("--warmup", type=_non_negative, default=200)

    b3 = anchors.add_parser("b3", help="import dspy in a fresh interpreter")
    b3.add_argument("--repeats", type=_positive, default=5)
    b3.add_argument("--warmup", type=_non_negative, default=1, help="runs not counted")

    anchors.add_parser("b5", help="RSS and PSS of this process after import dspy")

    cpu = anchors.add_parser("cpu", help="plain DSPy's CPU per Predict call on the dummy LM")
    cpu.add_argument("--calls", type=_positive, default=2_000)
    cpu.add_argument("--threads", type=_positive, default=1)
    cpu.add_argument("--warmup", type=_non_negative, default=50)

    serve = anchors.add_parser("serve", help="DSPy's FastAPI + asyncify + uvicorn recipe")
    serve.add_argument("--port", type=_non_negative, required=True, help="0: a free port")
    serve.add_argument("--latency-ms", type=float, default=0.0)
    serve.add_argument("--async-max-workers", type=_positive, default=8, help="DSPy's default: 8")
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result: dict[str, Any]
    if args.anchor == "b1":
        from .pools import run as b1

        result = b1(args.requests, args.callers, args.processes)
    elif args.anchor == "b2":
        from .bare import run as b2

        result = b2(args.requests, args.warmup)
    elif args.anchor == "b3":
        from .dspy_cost import import_time

        result = import_time(args.repeats, args.warmup)
    elif args.anchor == "b5":
        from .dspy_cost import memory

        result = memory()
    elif args.anchor == "cpu":
        from .dspy_cost import cpu_per_call

        result = cpu_per_call(args.calls, args.threads, args.warmup)
    else:
        from .serve import run as serve

        serve(args.port, args.latency_ms, args.async_max_workers)
        return
    emit(result)


if __name__ == "__main__":
    main()
