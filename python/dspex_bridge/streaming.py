"""Streaming a program's output fields as ``chunk`` events (``execute_program {"stream"}``).

Built on ``dspy.streamify`` with one ``dspy.streaming.StreamListener`` per streamable
output field, bound to the predictor that produces the program's final outputs
(``ProgramModule.stream_targets``). How it runs in DSPy 3.4.1:

* with a send stream in its settings, ``Predict`` asks the LM for a stream: the engine's
  ``stream(request)`` (the dummy engine yields its answer a few words at a time; a real LM
  streams from the provider) and each chunk is sent, from the thread running the program,
  into an anyio memory stream (``anyio.from_thread.run``), where the listeners cut the
  text of their field out of the adapter's format and yield ``StreamResponse`` chunks; the
  final ``Prediction`` comes last;
* ``streamify`` is an async generator. The request thread runs it in its own event loop
  (``asyncio.run``) and sends each chunk as an event; the program itself runs in an anyio
  worker thread of that loop (contextvars are copied, so the current request, DSPy's
  settings and the usage tracker reach it). The program is handed to ``streamify`` as an
  async program (``is_async_program=True``) rather than let ``streamify`` wrap it with
  ``asyncify``, whose capacity limiter is one process-wide object shared by every event
  loop (and caps streaming requests at ``async_max_workers``);
* when the request is abandoned (cancel, deadline) the loop's task is cancelled: the
  program's thread is left to finish on its own but stops at its next chunk (the memory
  stream is closed) or, with the dummy engine, at once (it checks the request between
  pieces).

Only ``str`` fields are streamed, and only fields of a predictor that is known and unique
(BestOfN and Refine run a fresh copy of their module for each attempt, so nothing of theirs
can be listened to: those programs answer without chunks).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from .errors import LmError
from .modules import ProgramModule
from .requests import ReplySlot


class _ThreadedProgram:
    """What ``streamify`` runs: the sync ``runner`` in a worker thread of the current loop."""

    def __init__(self, runner: Callable[..., Any]) -> None:
        self.runner = runner

    def named_predictors(self) -> list[tuple[str, Any]]:
        # Every listener names its predictor, so streamify needs no lookup.
        return []

    async def acall(self, **kwargs: Any) -> Any:
        import anyio.to_thread
        from dspy.dsp.utils.settings import thread_local_overrides

        parent = thread_local_overrides.get().copy()
        runner = self.runner

        def call() -> Any:
            token = thread_local_overrides.set({**thread_local_overrides.get(), **parent})
            try:
                return runner(**kwargs)
            finally:
                thread_local_overrides.reset(token)

        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)


def stream_fields(built: ProgramModule) -> list[str]:
    """The output fields of a program that are streamed (its ``str`` outputs)."""
    return [f.name for f in built.spec.all_outputs() if f.type.kind == "str"]


def run_streaming(
    slot: ReplySlot, built: ProgramModule, runner: Callable[..., Any], inputs: dict[str, Any]
) -> Any:
    """Run ``runner(**inputs)`` streaming its outputs as ``chunk`` events; the prediction.

    Must be called inside the request's ``dspy.context`` (``streamify`` takes the current
    callbacks, e.g. the LM history recorder, from there).
    """
    import dspy
    from dspy.streaming import StreamListener

    targets = built.stream_targets(stream_fields(built))
    if not targets:
        return runner(**inputs)
    listeners = [
        StreamListener(signature_field_name=name, predict=predictor)
        for name, predictor in targets.items()
    ]
    stream = dspy.streamify(
        _ThreadedProgram(runner),
        stream_listeners=listeners,
        is_async_program=True,
    )
    prediction = asyncio.run(_consume(slot, stream, inputs))
    if prediction is None:
        raise LmError("the streamed program produced no prediction", {"stream": True})
    return prediction


async def _consume(slot: ReplySlot, stream: Callable[..., Any], inputs: dict[str, Any]) -> Any:
    from dspy.streaming import StatusMessage, StreamResponse

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def cancel() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone already
            loop.call_soon_threadsafe(task.cancel)

    remove = slot.on_abandon(cancel)
    prediction = None
    try:
        async for value in stream(**inputs):
            if isinstance(value, StreamResponse):
                if value.chunk:
                    slot.event("chunk", {"field": value.signature_field_name, "text": value.chunk})
            elif not isinstance(value, StatusMessage):
                # The final value: a Prediction (or whatever a python module returns).
                prediction = value
    except asyncio.CancelledError:
        if slot.abandoned.is_set():
            raise slot.abandon_error() from None
        raise
    finally:
        remove()
    return prediction
