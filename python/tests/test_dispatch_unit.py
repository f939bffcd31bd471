"""Unit tests of the request threads (``dispatch.RequestThreads``)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from dspex_bridge.dispatch import RequestThreads


def _run_and_wait(threads: RequestThreads, fn: Callable[[], object]) -> None:
    done = threading.Event()

    def task() -> None:
        try:
            fn()
        finally:
            done.set()

    threads.submit(task)
    assert done.wait(5)


def test_sequential_tasks_reuse_one_thread() -> None:
    threads = RequestThreads(4, "t-seq")
    seen: list[str] = []
    for _ in range(20):
        _run_and_wait(threads, lambda: seen.append(threading.current_thread().name))
        # Let the thread go idle before the next submission (it does right after the task).
        for _ in range(100):
            if threads._idle:
                break
            threading.Event().wait(0.01)
    assert set(seen) == {"t-seq_0"}
    assert threads.started == 1


def test_concurrency_is_bounded_and_the_rest_queue_in_order() -> None:
    threads = RequestThreads(2, "t-bound")
    release = threading.Event()
    started = threading.Semaphore(0)
    order: list[int] = []
    lock = threading.Lock()
    all_done = threading.Event()
    running = 0
    peak = 0

    def task(n: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        started.release()
        release.wait(5)
        with lock:
            running -= 1
            order.append(n)
            if len(order) == 6:
                all_done.set()

    for n in range(6):
        threads.submit(task, n)
    assert started.acquire(timeout=5)
    assert started.acquire(timeout=5)
    assert not started.acquire(timeout=0.1)  # the other four wait for a free thread
    assert threads.started == 2
    release.set()
    assert all_done.wait(5)
    assert peak == 2
    assert sorted(order) == list(range(6))


def test_queued_tasks_run_first_come_first_served() -> None:
    threads = RequestThreads(1, "t-fifo")
    release = threading.Event()
    order: list[int] = []
    done = threading.Event()

    def task(n: int) -> None:
        release.wait(5)
        order.append(n)
        if n == 4:
            done.set()

    for n in range(5):
        threads.submit(task, n)
    release.set()
    assert done.wait(5)
    assert order == [0, 1, 2, 3, 4]


def test_a_failing_task_does_not_end_its_thread() -> None:
    threads = RequestThreads(1, "t-fail")

    def boom() -> None:
        raise RuntimeError("boom")

    threads.submit(boom)
    ran = threading.Event()
    threads.submit(ran.set)
    assert ran.wait(5)
    assert threads.started == 1


def test_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RequestThreads(0)
