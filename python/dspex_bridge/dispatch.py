"""The request threads: long-lived threads that run the handlers the reader hands them.

A ``concurrent.futures.ThreadPoolExecutor`` costs more per request than a worker needs: a
``Future`` and a work item per call, and its idle threads all wait on one queue, so
sequential requests wander from thread to thread (each with its own cold stack and
caches). ``RequestThreads`` hands a task straight to the thread that went idle *last*
(LIFO): under a sequential load one hot thread serves every request, woken by a lock of
its own. Threads are started on demand up to ``max_threads``; when every one is busy the
task waits in a FIFO queue, taken by the next thread to finish, as in the executor.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("dspex_bridge.dispatch")

Task = tuple[Callable[..., Any], tuple[Any, ...]]


class _Thread:
    """One request thread's hand-off: ``task`` is set, then ``wake`` is released."""

    __slots__ = ("task", "wake")

    def __init__(self) -> None:
        self.task: Task | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


class RequestThreads:
    """Up to ``max_threads`` threads; a task goes to the most recently idle one."""

    def __init__(self, max_threads: int, name_prefix: str = "dspex-req") -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self._prefix = name_prefix
        self._lock = threading.Lock()
        self._idle: list[_Thread] = []  # a stack: the last to go idle is woken first
        self._queued: deque[Task] = deque()
        self._started = 0

    @property
    def started(self) -> int:
        """Threads started so far (they never end)."""
        return self._started

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a request thread (queued if every thread is busy)."""
        task: Task = (fn, args)
        with self._lock:
            if self._idle:
                thread = self._idle.pop()
                thread.task = task
                thread.wake.release()
                return
            if self._started >= self.max_threads:
                self._queued.append(task)
                return
            self._started += 1
            number = self._started
        me = _Thread()
        me.task = task
        threading.Thread(
            target=self._run, args=(me,), name=f"{self._prefix}_{number - 1}", daemon=True
        ).start()

    def _run(self, me: _Thread) -> None:
        lock, idle, queued = self._lock, self._idle, self._queued
        while True:
            task, me.task = me.task, None
            if task is not None:
                _call(task)
                task = None  # no reference to the request kept while idle
            with lock:
                if queued:
                    me.task = queued.popleft()
                    continue
                idle.append(me)
            me.wake.acquire()


def _call(task: Task) -> None:
    fn, args = task
    try:
        fn(*args)
    except BaseException:
        log.exception("a request thread's task failed")
