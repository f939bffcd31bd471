"""``DeadlineLM``: a ``dspy.LM`` whose calls never outlive the current request's deadline.

How a per-call timeout reaches the provider in DSPy 3.4.1: a keyword argument of an LM call
(``lm(messages=..., timeout=t)``) is merged over ``lm.kwargs`` (``clients/execution.py``,
``prepare``); ``timeout`` is one of the client settings (``backend_selection.CLIENT_KEYS``)
that ``select_backend`` collects from the call. On the native lm15 engine it becomes the
engine's ``RouterConfig(timeouts=timeouts_for(t))`` (read, write and pool timeouts of ``t``
seconds; connect keeps lm15's default), the engine being cached in ``lm._engine_store``
under a key that includes those timeouts; on the LiteLLM engine it is passed to
``litellm.completion(timeout=t)``.

So every call of a ``DeadlineLM`` made while a request with a deadline is current
(``requests.current_request()``) gets ``timeout=call_timeout(remaining)``:

* the remaining time, at least ``TIMEOUT_FLOOR_S``, rounded *up* to a geometric grid (eight
  steps per doubling, so at most ~9 % more than the remaining time): the call times out just
  after the deadline, never before it (the worker answers ``DeadlineExceeded`` at the
  deadline; a timeout that fired first would answer an ``LmError`` early), and the number of
  distinct timeouts, hence of cached lm15 engines per LM, stays small (about 8 per doubling
  of the deadline actually used);
* a smaller ``timeout`` configured on the LM itself wins;
* DSPy's own retries are off for that call (``num_retries`` reads 0): a retry sleeps 1 s or
  more and reuses the same timeout, so it could only end after the deadline;
* a call is not made at all once the request was abandoned or its deadline has passed.

Without a current deadline the LM behaves exactly like ``dspy.LM``.
"""

from __future__ import annotations

import math
from typing import Any

import dspy

from .requests import current_request

TIMEOUT_FLOOR_S = 0.1
_STEPS_PER_DOUBLING = 8


def call_timeout(remaining: float) -> float:
    """The timeout for an LM call with ``remaining`` seconds left (>= it, on a grid)."""
    seconds = max(remaining, TIMEOUT_FLOOR_S)
    step = math.ceil(_STEPS_PER_DOUBLING * math.log2(seconds / TIMEOUT_FLOOR_S) - 1e-9)
    grid = TIMEOUT_FLOOR_S * 2.0 ** (step / _STEPS_PER_DOUBLING)
    # Whole microseconds, rounded up, so equal steps are equal floats and never < seconds.
    return max(math.ceil(grid * 1e6), math.ceil(seconds * 1e6)) / 1e6


def _configured_timeout(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) and value > 0 else None


class DeadlineLM(dspy.LM):
    """``dspy.LM`` that bounds each call by the current request's remaining time."""

    def _bounded(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        slot = current_request()
        if slot is None:
            return kwargs
        slot.check()  # abandoned, or past the deadline: no (billed) call any more
        remaining = slot.remaining()
        if remaining is None:
            return kwargs
        timeout = call_timeout(remaining)
        configured = _configured_timeout(kwargs.get("timeout", self.kwargs.get("timeout")))
        if configured is not None:
            timeout = min(timeout, configured)
        return {**kwargs, "timeout": timeout}

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        return super().__call__(prompt, messages=messages, **self._bounded(kwargs))

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        return await super().acall(prompt, messages=messages, **self._bounded(kwargs))

    # DSPy reads ``lm.num_retries`` once per call (``execution.execute``): none under a
    # deadline, the configured number otherwise.
    @property
    def num_retries(self) -> int:
        slot = current_request()
        if slot is not None and slot.deadline is not None:
            return 0
        return int(self._dspex_num_retries)

    @num_retries.setter
    def num_retries(self, value: int) -> None:
        self._dspex_num_retries = value
