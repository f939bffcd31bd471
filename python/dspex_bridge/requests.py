"""Reply slots, the deadline scheduler and the table of pending requests.

Every request the worker dispatches gets a ``ReplySlot``. Whoever answers a request goes
through its slot: the handler (its result or error), the deadline scheduler
(``DeadlineExceeded``) and ``cancel`` (``Cancelled``). ``ReplySlot.answer`` is "first answer
wins": a lock and an ``answered`` flag, and the winner writes its frame while holding the
lock, so a request id is answered exactly once and a loser returns only after the winner's
frame is on the wire (``cancel``'s own reply therefore always follows the reply it lost to).

Answering by the deadline or by ``cancel`` sets the slot's ``abandoned`` event, so
cooperative code (the dummy LM's simulated latency, the ``sleep`` fault, the LM call hook)
stops early; its late result is discarded.

While a handler runs, its slot is the thread's *current request* (a context variable):
``current_request()`` gives code deep inside DSPy the deadline and the abandoned event.

One daemon thread (``DeadlineScheduler``) keeps a heap of ``(deadline, slot)`` and fires
expired slots, so a deadline is honoured even when every request thread is busy or the
request is still queued in the thread pool.

A slot also carries the request's other frames (Protocol 2): event frames
(``slot.event(kind, data)``, only when the request carried ``"events": true``) and callback
frames (``slot.callback(name, args)``, see ``callbacks.py``). Both are written under the
slot's lock and only while it is unanswered, so none can follow the reply. Code that must
stop when the request is abandoned registers a hook (``slot.on_abandon(fn)``): pending
callbacks are released that way, and a streaming run is cancelled.

A request that carried ``"logs": true`` also gets a ``log`` event for each log record made in
its context (``slot.log_event(data)``, from ``logs.RequestLogHandler``): at most
``MAX_LOG_EVENTS``, then one event counting the rest, written just before the reply.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import BridgeError, Cancelled, DeadlineExceeded

if TYPE_CHECKING:
    from .callbacks import CallbackTable

log = logging.getLogger("dspex_bridge.requests")

MAX_REQUEST_ID = (1 << 64) - 1

Send = Callable[[dict[str, Any]], None]
# Called once per slot, after its answer: (slot, error kind or None, whether a frame was sent).
OnAnswer = Callable[["ReplySlot", str | None, bool], None]
AbandonHook = Callable[[], None]

# Who answered a slot.
BY_HANDLER = "handler"
BY_DEADLINE = "deadline"
BY_CANCEL = "cancel"

# The deadline heap drops the entries of answered slots when it grows past this size.
COMPACT_MIN = 4096

# ``log`` events of one request; the records after these are counted, and the count is sent
# as one more event just before the reply.
MAX_LOG_EVENTS = 100
LOG_SUMMARY_LOGGER = "dspex_bridge"

_current: contextvars.ContextVar[ReplySlot | None] = contextvars.ContextVar(
    "dspex_current_request", default=None
)


# The DSPy setting (``dspy.context(dspex_request=slot)``) through which a request reaches
# threads DSPy starts itself: ``dspy.Parallel`` / ``Evaluate`` copy the settings overrides of
# the thread that started them into their own threads, not other context variables.
DSPY_SETTING = "dspex_request"


def current_request() -> ReplySlot | None:
    """The slot of the request whose handler runs in this thread (None outside handlers).

    In a thread DSPy started (the threads of ``Evaluate`` inside an optimizer) it is the
    request named by the DSPy setting ``DSPY_SETTING``, which DSPy carries into its threads.
    """
    slot = _current.get()
    if slot is not None:
        return slot
    return _inherited()


def _inherited() -> ReplySlot | None:
    settings = sys.modules.get("dspy.dsp.utils.settings")
    if settings is None:
        return None
    overrides = settings.thread_local_overrides.get()
    slot = overrides.get(DSPY_SETTING) if isinstance(overrides, dict) else None
    return slot if isinstance(slot, ReplySlot) else None


class bind:  # used as a function: ``with bind(slot):``
    """Make ``slot`` the current request for the duration of the block.

    A class rather than a ``contextlib.contextmanager`` generator: entered once per request
    on the hot path, where the generator machinery costs several times the ``set``.
    """

    __slots__ = ("_slot", "_token")

    def __init__(self, slot: ReplySlot) -> None:
        self._slot = slot
        self._token: contextvars.Token[ReplySlot | None] | None = None

    def __enter__(self) -> ReplySlot:
        self._token = _current.set(self._slot)
        return self._slot

    def __exit__(self, *exc: object) -> None:
        token, self._token = self._token, None
        if token is not None:
            _current.reset(token)


def error_reply(request_id: int, error: BridgeError) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": error.to_wire()}


class ReplySlot:
    """The one reply of one request: first answer wins."""

    def __init__(
        self,
        request_id: int,
        command: str,
        received: float,
        deadline_ms: float | None,
        send: Send,
        on_answer: OnAnswer | None = None,
        *,
        events: bool = False,
        logs: bool = False,
        callbacks: CallbackTable | None = None,
        send_side: Send | None = None,
    ) -> None:
        self.request_id = request_id
        self.command = command
        self.received = received
        self.deadline_ms = deadline_ms
        self.deadline: float | None = (
            None if deadline_ms is None else received + deadline_ms / 1000.0
        )
        self.abandoned = threading.Event()
        # Whether the request carried ``"events": true`` (only then are event frames sent).
        self.events = events
        # Whether it carried ``"logs": true`` (only then are ``log`` events sent).
        self.logs = logs
        self._logs_sent = 0
        self._logs_dropped = 0
        self._callbacks = callbacks
        self._send = send
        # Writes event and callback frames: raises (writing nothing) when one cannot be
        # framed, where ``send`` would turn it into an error *reply*.
        self._send_side = send_side or send
        self._on_answer = on_answer
        # Reentrant: a record logged while this thread holds it (writing the reply or an
        # event in the request's context, e.g. the server's error when a write fails)
        # reaches ``log_event`` on the same thread, which must not deadlock (it sends
        # nothing then: see ``log_event``).
        self._lock = threading.RLock()
        self._answered = False
        # True while this slot's lock holder writes one of its event or callback frames.
        self._writing = False
        self._started = False
        self._hooks: list[AbandonHook] = []
        self.answered_by: str | None = None

    def __repr__(self) -> str:
        return (
            f"ReplySlot(id={self.request_id}, command={self.command!r}, "
            f"answered_by={self.answered_by!r})"
        )

    # -- state ----------------------------------------------------------------------------

    @property
    def answered(self) -> bool:
        return self._answered

    @property
    def started(self) -> bool:
        return self._started

    def begin(self) -> bool:
        """Mark the handler as started; False if the request was answered already."""
        with self._lock:
            if self._answered:
                return False
            self._started = True
            return True

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.received) * 1000.0, 3)

    def remaining(self) -> float | None:
        """Seconds left until the deadline (negative once it passed), None without one."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    # -- answering --------------------------------------------------------------------------

    def answer(
        self, message: dict[str, Any] | None, *, by: str = BY_HANDLER, abandon: bool = False
    ) -> bool:
        """Answer with ``message`` (None: close without a frame) unless answered already.

        Returns True if this call answered the request. The frame is written while the
        slot's lock is held, so when a competing call returns False the winner's frame has
        already been written.
        """
        return self._answer(lambda: message, by, abandon)

    def _answer(self, build: Callable[[], dict[str, Any] | None], by: str, abandon: bool) -> bool:
        hooks: list[AbandonHook] = []
        with self._lock:
            if self._answered:
                return False
            self._answered = True
            self.answered_by = by
            if abandon:
                self.abandoned.set()
                hooks, self._hooks = self._hooks, []
            # Built under the lock: ``started`` cannot change any more (``begin`` takes it).
            message = build()
            if message is not None:
                if self._logs_dropped:
                    self._send_log_summary()
                self._send(message)
        for hook in hooks:
            _run_hook(hook, self)
        if self._on_answer is not None:
            kind: str | None = None
            if message is not None and message.get("ok") is False:
                error = message.get("error")
                kind = error.get("kind") if isinstance(error, dict) else None
            self._on_answer(self, kind, message is not None)
        return True

    # -- other frames of the request (Protocol 2) -------------------------------------------

    def send_frame(self, message: dict[str, Any]) -> bool:
        """Write a non-reply frame of this request unless it was answered; True if written.

        Written under the slot's lock, so no frame of a request ever follows its reply. A
        frame that cannot be framed (too large) raises ``ValueError``.
        """
        with self._lock:
            if self._answered:
                return False
            self._writing = True
            try:
                self._send_side(message)
            finally:
                self._writing = False
            return True

    def event(self, kind: str, data: dict[str, Any]) -> bool:
        """Send ``{"id", "event": kind, "data"}`` if the request asked for events (and is open)."""
        if not self.events:
            return False
        return self.send_frame({"id": self.request_id, "event": kind, "data": data})

    def log_event(self, data: dict[str, Any]) -> bool:
        """Send a ``log`` event ``data`` if the request asked for logs and is unanswered.

        Past ``MAX_LOG_EVENTS`` the record is only counted (the count goes out just before
        the reply). A record logged while this thread is writing one of the request's frames
        (the lock is reentrant) is dropped: after the reply it cannot be sent anyway, and
        while an event is written it must not be written into its middle.
        """
        if not self.logs:
            return False
        with self._lock:
            if self._answered or self._writing:
                return False
            if self._logs_sent >= MAX_LOG_EVENTS:
                self._logs_dropped += 1
                return False
            self._logs_sent += 1
            self._writing = True
            try:
                self._send_side({"id": self.request_id, "event": "log", "data": data})
            finally:
                self._writing = False
            return True

    def _send_log_summary(self) -> None:
        """The count of the records past ``MAX_LOG_EVENTS`` as one ``log`` event (lock held)."""
        dropped, self._logs_dropped = self._logs_dropped, 0
        data = {
            "level": "WARNING",
            "logger": LOG_SUMMARY_LOGGER,
            "message": f"{dropped} more log records suppressed",
        }
        with contextlib.suppress(ValueError):  # cannot happen: a small frame
            self._send_side({"id": self.request_id, "event": "log", "data": data})

    def callback(
        self,
        name: str,
        args: dict[str, Any],
        timeout: float | None = None,
        as_request: int | None = None,
    ) -> Any:
        """Ask the host to run ``name(args)`` and wait for its answer (see ``callbacks.py``).

        Raises ``callbacks.CallbackError`` for an error answer (or a ``timeout``), and the
        abandonment error (``Cancelled`` / ``DeadlineExceeded``) at once when the request is
        abandoned while waiting. ``as_request`` is for fault injection only (see
        ``CallbackTable.call``).
        """
        if self._callbacks is None:
            raise RuntimeError("this request cannot call back to the host (no callback table)")
        return self._callbacks.call(self, name, args, timeout, as_request)

    def on_abandon(self, hook: AbandonHook) -> Callable[[], None]:
        """Run ``hook`` when the request is abandoned (at once if it already is).

        Returns a function that unregisters the hook. Hooks run on the thread that abandons
        the request (the deadline scheduler, or the reader thread for ``cancel``): they must
        be quick and must not block.
        """
        with self._lock:
            if not self.abandoned.is_set():
                self._hooks.append(hook)
                registered = True
            else:
                registered = False
        if not registered:
            _run_hook(hook, self)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._hooks.remove(hook)

        return remove

    def deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"request {self.request_id} ({self.command}) was not done within its deadline "
            f"of {self.deadline_ms:g} ms",
            {
                "deadline_ms": self.deadline_ms,
                "elapsed_ms": self.elapsed_ms(),
                "started": self._started,
            },
        )

    def expire(self) -> bool:
        """Answer ``DeadlineExceeded`` now (if nothing answered first) and abandon the work."""
        return self._answer(
            lambda: error_reply(self.request_id, self.deadline_error()), BY_DEADLINE, True
        )

    def cancel(self, by: int) -> bool:
        """Answer ``Cancelled`` (if nothing answered first) and abandon the work."""
        error = Cancelled(
            f"request {self.request_id} ({self.command}) was cancelled by request {by}",
            {"by": by},
        )
        return self._answer(lambda: error_reply(self.request_id, error), BY_CANCEL, True)

    def abandon_error(self) -> BridgeError:
        """The error cooperative code raises to stop work that was abandoned."""
        if self.answered_by == BY_CANCEL:
            return Cancelled(f"request {self.request_id} was cancelled", {"abandoned": True})
        return DeadlineExceeded(
            f"request {self.request_id} passed its deadline of {self.deadline_ms:g} ms",
            {"deadline_ms": self.deadline_ms, "elapsed_ms": self.elapsed_ms(), "started": True},
        )

    def check(self) -> None:
        """Raise if the work should stop: abandoned, or its deadline has passed.

        A passed deadline is answered here (``expire``) so the raised error is never the
        reply: the request is answered ``DeadlineExceeded`` exactly as the scheduler would.
        """
        if not self.abandoned.is_set() and self.expired():
            self.expire()
        if self.abandoned.is_set():
            raise self.abandon_error()

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``; abandonment or the deadline cuts it short (then raise)."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            left = end - now
            if self.deadline is not None:
                if now >= self.deadline:
                    self.check()
                left = min(left, self.deadline - now)
            if left <= 0:
                return
            if self.abandoned.wait(left):
                raise self.abandon_error()


def _run_hook(hook: AbandonHook, slot: ReplySlot) -> None:
    try:
        hook()
    except Exception:  # a hook must never break answering
        log.exception("abandon hook of request %d failed", slot.request_id)


def cooperative_sleep(seconds: float) -> None:
    """``time.sleep`` that the current request's deadline or abandonment cuts short."""
    slot = current_request()
    if slot is None:
        time.sleep(seconds)
    else:
        slot.wait(seconds)


class DeadlineScheduler:
    """One daemon thread that expires slots at their deadline.

    The entry of a slot answered before its deadline is dropped at once when it is the
    heap's last (``discard``: a sequential caller's); the others stay in the heap until they
    come up (or until the heap doubles past ``COMPACT_MIN`` entries, when they are dropped
    at once), so the heap holds at most about twice the live deadlines.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, ReplySlot]] = []
        self._seq = itertools.count()
        self._compact_at = COMPACT_MIN
        self._thread: threading.Thread | None = None
        # When the scheduler thread wakes by itself from its last wait (None: it waits
        # until notified). A new deadline wakes it only if it is earlier: the thread never
        # sleeps past the earliest live deadline, and is not woken for every request.
        self._wake_at: float | None = None
        self.fired = 0

    def add(self, slot: ReplySlot) -> None:
        if slot.deadline is None:
            return
        with self._cond:
            if len(self._heap) >= self._compact_at:
                self._heap = [entry for entry in self._heap if not entry[2].answered]
                heapq.heapify(self._heap)
                self._compact_at = max(COMPACT_MIN, 2 * len(self._heap))
            heapq.heappush(self._heap, (slot.deadline, next(self._seq), slot))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dspex-deadline", daemon=True
                )
                self._thread.start()
            if self._wake_at is None or slot.deadline < self._wake_at:
                self._cond.notify()

    def discard(self, slot: ReplySlot) -> None:
        """Drop an answered slot's entry now if that is cheap: when it is the heap's last.

        A sequential caller's requests each have the latest deadline, so each entry is the
        last one when its request is answered: the heap stays small, and answered slots are
        not kept alive (into the collector's oldest generation) until their deadline.
        """
        with self._cond:
            heap = self._heap
            if heap and heap[-1][2] is slot:
                heap.pop()  # the last entry is a leaf: the rest is still a heap

    def size(self) -> int:
        """Heap entries, including those of slots answered early (for tests)."""
        with self._cond:
            return len(self._heap)

    def _next_expired(self) -> ReplySlot:
        with self._cond:
            while True:
                if not self._heap:
                    self._wake_at = None
                    self._cond.wait()
                    continue
                deadline, _, slot = self._heap[0]
                if slot.answered:
                    heapq.heappop(self._heap)
                    continue
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._wake_at = deadline
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                return slot

    def _run(self) -> None:
        while True:
            slot = self._next_expired()
            try:
                if slot.expire():
                    self.fired += 1
                    log.debug(
                        "request %d (%s) answered DeadlineExceeded after %.1f ms (started=%s)",
                        slot.request_id,
                        slot.command,
                        slot.elapsed_ms(),
                        slot.started,
                    )
            except Exception:  # the scheduler must survive anything
                log.exception("deadline scheduler failed on request %d", slot.request_id)


class RequestTable:
    """The pending requests of a worker by id (for ``cancel``) and their deadlines."""

    def __init__(
        self,
        send: Send,
        on_answer: OnAnswer | None = None,
        callbacks: CallbackTable | None = None,
        send_side: Send | None = None,
    ) -> None:
        self._send = send
        self._send_side = send_side
        self._on_answer = on_answer
        self.callbacks = callbacks
        self._lock = threading.Lock()
        self._pending: dict[int, ReplySlot] = {}
        self.scheduler = DeadlineScheduler()

    def open(
        self,
        request_id: int,
        command: str,
        received: float,
        deadline_ms: float | None,
        *,
        track: bool = True,
        events: bool = False,
        logs: bool = False,
    ) -> ReplySlot:
        """A slot for a new request; ``track`` registers it for ``cancel`` and its deadline."""
        slot = ReplySlot(
            request_id,
            command,
            received,
            deadline_ms,
            self._send,
            self._answered,
            events=events,
            logs=logs,
            callbacks=self.callbacks,
            send_side=self._send_side,
        )
        if track:
            with self._lock:
                self._pending[request_id] = slot
            self.scheduler.add(slot)
        return slot

    def get(self, request_id: int) -> ReplySlot | None:
        with self._lock:
            return self._pending.get(request_id)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def cancel(self, request_id: int, by: int) -> bool:
        """Answer ``request_id`` ``Cancelled`` if it is pending; True if it was."""
        slot = self.get(request_id)
        return slot is not None and slot.cancel(by)

    def _answered(self, slot: ReplySlot, kind: str | None, replied: bool) -> None:
        with self._lock:
            if self._pending.get(slot.request_id) is slot:
                del self._pending[slot.request_id]
        if slot.deadline is not None:
            self.scheduler.discard(slot)
        if self._on_answer is not None:
            self._on_answer(slot, kind, replied)
