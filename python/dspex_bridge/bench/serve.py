"""B8's anchor: DSPy's own deployment recipe (FastAPI + ``dspy.asyncify`` + uvicorn).

As in DSPy's deployment tutorial: the LM is configured globally, the program is wrapped
with ``dspy.asyncify`` (a thread per call, at most ``async_max_workers`` at once) and served
by uvicorn in one process. Here the LM is the worker's dummy LM with simulated latency, and
the endpoint returns just the answer. fastapi and uvicorn come from serve-requirements.txt.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType
from typing import Any

from pydantic import BaseModel

from .common import emit, log
from .dspy_cost import dummy_lm


class Question(BaseModel):
    question: str


class Answer(BaseModel):
    answer: str


def build_app(latency_ms: float, async_max_workers: int) -> Any:
    import dspy
    from fastapi import FastAPI

    dspy.configure(lm=dummy_lm(latency_ms), async_max_workers=async_max_workers)
    program = dspy.asyncify(dspy.Predict("question -> answer"))
    app = FastAPI(title="DSPy recipe (dspex bench anchor)")

    @app.post("/predict")
    async def predict(body: Question) -> Answer:
        result = await program(question=body.question)
        return Answer(answer=result.answer)

    return app


async def _serve(app: Any, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task  # start-up failed: raise its error
            raise SystemExit("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    emit({"listening": bound})
    log(f"serving POST /predict on 127.0.0.1:{bound} until SIGTERM")
    await task


def _exit_0(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run(port: int, latency_ms: float, async_max_workers: int) -> None:
    app = build_app(latency_ms, async_max_workers)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler it found:
    # this one, so the process ends with status 0.
    signal.signal(signal.SIGTERM, _exit_0)
    asyncio.run(_serve(app, port))
