"""B1's anchors: no-op tasks through ``multiprocessing.Pool`` and ``ProcessPoolExecutor``."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

WARMUP_PER_PROCESS = 50


def noop() -> None:
    """The task: nothing at all (module level, so it pickles by reference)."""


def _windowed(submit: Callable[[Callable[[], None]], None], requests: int, callers: int) -> float:
    """Submit ``requests`` tasks with at most ``callers`` outstanding; tasks per second.

    ``submit(done)`` starts one task and arranges for ``done()`` to be called when it ends.
    """
    window = threading.BoundedSemaphore(callers)
    finished = threading.Event()
    lock = threading.Lock()
    left = requests

    def done() -> None:
        nonlocal left
        window.release()
        with lock:
            left -= 1
            if left == 0:
                finished.set()

    started = time.perf_counter()
    for _ in range(requests):
        window.acquire()
        submit(done)
    finished.wait()
    return requests / (time.perf_counter() - started)


def multiprocessing_pool(requests: int, callers: int, processes: int) -> float:
    with multiprocessing.Pool(processes) as pool:

        def submit(done: Callable[[], None]) -> None:
            pool.apply_async(noop, callback=lambda _: done(), error_callback=lambda _: done())

        _windowed(submit, WARMUP_PER_PROCESS * processes, callers)
        return _windowed(submit, requests, callers)


def process_pool_executor(requests: int, callers: int, processes: int) -> float:
    with ProcessPoolExecutor(processes) as executor:

        def submit(done: Callable[[], None]) -> None:
            future: Future[Any] = executor.submit(noop)
            future.add_done_callback(lambda _: done())

        _windowed(submit, WARMUP_PER_PROCESS * processes, callers)
        return _windowed(submit, requests, callers)


def run(requests: int, callers: int, processes: int) -> dict[str, Any]:
    return {
        "multiprocessing_pool_per_s": multiprocessing_pool(requests, callers, processes),
        "process_pool_executor_per_s": process_pool_executor(requests, callers, processes),
        "requests": requests,
    }
