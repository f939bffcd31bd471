"""Callbacks (Protocol 2): code running for request R asks the host to run something.

The worker writes ``{"id": R, "call": C, "name": <str>, "args": <map>}`` (``C`` a u64
unique within the worker, counting from 1) and the calling thread blocks until the host
answers on stdin with ``{"call": C, "ok": true, "result": <any>}`` or
``{"call": C, "ok": false, "error": {"kind", "message", "details"?}}``:

* a result is returned; an error answer raises ``CallbackError`` (``kind``, ``message``,
  ``details`` as the host sent them);
* when R is abandoned (its deadline passed, or it was cancelled) a waiting callback is
  released at once and raises the abandonment error (``DeadlineExceeded`` / ``Cancelled``);
  a callback is never sent for a request that was answered already;
* several callbacks may be outstanding at once (the threads of one batch, several requests);
* an answer for an unknown ``C`` (never sent, already answered, released) is logged and
  ignored, as is a malformed answer (``call`` not a positive integer, ``ok`` not a bool).

Code reaches this through the current request's slot:
``dspex_bridge.requests.current_request().callback(name, args, timeout=None)``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ToolError
from .plain import to_plain

if TYPE_CHECKING:
    from .requests import ReplySlot

log = logging.getLogger("dspex_bridge.callbacks")

MAX_CALL_ID = (1 << 64) - 1
MAX_NAME = 256


class CallbackError(Exception):
    """The host answered a callback with an error (or did not answer within ``timeout``).

    ``kind``, ``message`` and ``details`` are the host's. Escaping a handler it becomes a
    ``ToolError`` reply naming the function (``as_bridge_error``).
    """

    def __init__(
        self,
        name: str,
        call_id: int,
        kind: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{name}: {kind}: {message}")
        self.name = name
        self.call_id = call_id
        self.kind = kind
        self.message = message
        self.details = details

    def as_bridge_error(self) -> ToolError:
        return ToolError(
            f"host function {self.name!r} failed: {self.kind}: {self.message}",
            {
                "tool": self.name,
                "call": self.call_id,
                "error": {"kind": self.kind, "message": self.message, "details": self.details},
            },
        )


@dataclass
class _Pending:
    call_id: int
    request_id: int
    name: str
    done: threading.Event = field(default_factory=threading.Event)
    # (True, result) or (False, CallbackError) once answered.
    outcome: tuple[bool, Any] | None = None


class CallbackTable:
    """The callbacks of one worker that wait for an answer, by call id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self.sent = 0
        self.answered = 0
        self.ignored = 0

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "sent": self.sent,
                "answered": self.answered,
                "ignored": self.ignored,
                "pending": len(self._pending),
            }

    def call(
        self,
        slot: ReplySlot,
        name: str,
        args: dict[str, Any],
        timeout: float | None = None,
        as_request: int | None = None,
    ) -> Any:
        """Send a callback for ``slot``'s request and wait for its answer (see the module doc).

        ``as_request`` (fault injection only) writes another request id into the frame, as a
        confused worker would; the host must answer it without harm.
        """
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise ValueError(f"a callback name must be a string of 1-{MAX_NAME} characters")
        if not isinstance(args, dict):
            raise TypeError(f"callback arguments must be a map, got {type(args).__name__}")
        if timeout is not None and timeout < 0:
            raise ValueError("a callback timeout must be >= 0")
        slot.check()  # abandoned, or past its deadline: no callback any more
        plain_args = to_plain(args)
        with self._lock:
            call_id = next(self._ids)
            pending = _Pending(call_id, slot.request_id, name)
            self._pending[call_id] = pending
        remove_hook = slot.on_abandon(pending.done.set)
        try:
            frame_id = slot.request_id if as_request is None else as_request
            frame = {"id": frame_id, "call": call_id, "name": name, "args": plain_args}
            if not slot.send_frame(frame):
                if slot.abandoned.is_set():
                    raise slot.abandon_error()
                raise RuntimeError(
                    f"request {slot.request_id} was answered; it cannot call {name!r} any more"
                )
            with self._lock:
                self.sent += 1
            log.debug("request %d: callback %d (%s) sent", slot.request_id, call_id, name)
            pending.done.wait(timeout)
        finally:
            remove_hook()
            with self._lock:
                self._pending.pop(call_id, None)
        outcome = pending.outcome
        if outcome is not None:
            ok, value = outcome
            if ok:
                return value
            raise value
        if slot.abandoned.is_set():
            log.debug(
                "request %d: callback %d (%s) released (%s)",
                slot.request_id,
                call_id,
                name,
                slot.answered_by,
            )
            raise slot.abandon_error()
        raise CallbackError(
            name, call_id, "Timeout", f"the host did not answer within {timeout:g} s", None
        )

    def answer(self, message: dict[str, Any]) -> None:
        """Route a host frame with a ``call`` key (and no ``command``) to its waiting callback."""
        call_id = message.get("call")
        if (
            not isinstance(call_id, int)
            or isinstance(call_id, bool)
            or not 0 < call_id <= MAX_CALL_ID
        ):
            self._ignore("malformed callback answer (call is not a positive integer): %r", call_id)
            return
        ok = message.get("ok")
        if not isinstance(ok, bool):
            self._ignore("malformed answer to callback %d (ok is not a bool); ignored", call_id)
            return
        with self._lock:
            pending = self._pending.get(call_id)
            if pending is None or pending.outcome is not None:
                self.ignored += 1
                known = pending is not None
            else:
                pending.outcome = (
                    (True, message.get("result"))
                    if ok
                    else (False, _error_of(pending, message.get("error")))
                )
                self.answered += 1
                known = None
        if known is not None:
            log.warning(
                "answer to %s callback %d ignored",
                "an already answered" if known else "an unknown",
                call_id,
            )
            return
        assert pending is not None
        pending.done.set()

    def _ignore(self, text: str, *values: Any) -> None:
        with self._lock:
            self.ignored += 1
        log.warning(text, *values)


def _error_of(pending: _Pending, error: Any) -> CallbackError:
    if not isinstance(error, dict):
        return CallbackError(
            pending.name,
            pending.call_id,
            "ProtocolError",
            "the host's error answer carried no error map",
        )
    kind = error.get("kind")
    message = error.get("message")
    details = error.get("details")
    return CallbackError(
        pending.name,
        pending.call_id,
        kind if isinstance(kind, str) and kind else "Error",
        message if isinstance(message, str) else str(message or ""),
        details if isinstance(details, dict) else None,
    )
