"""``"logs": true``: a request's own Python log records as ``log`` events, before its reply.

One DSPy worker with the fault commands and a project directory holding a ``python`` module
that logs what its question asks for.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Worker, qa_signature

SECRET = "sk-dspex-log-secret-4242"

CHATTY = """
    import logging
    import threading

    import dspy

    log = logging.getLogger("logpkg.chatty")
    TOGETHER = threading.Barrier(4, timeout=10)


    class Chatty(dspy.Module):
        \"\"\"Logs what its question ("kind:arg") asks for, and answers the kind (no LM).\"\"\"

        def forward(self, question):
            kind, _, arg = question.partition(":")
            if kind == "levels":
                log.debug("debug %s", arg)
                log.info("info %s", arg)
                log.warning("warning %s", arg)
                log.error("error %s", arg)
            elif kind == "exception":
                try:
                    raise ValueError("bad " + arg)
                except ValueError:
                    log.exception("caught %s", arg)
            elif kind == "many":
                for i in range(int(arg)):
                    log.warning("record %d", i)
            elif kind == "together":
                # Four requests at once: each logs, waits for the others, logs again.
                log.warning("%s before", arg)
                TOGETHER.wait()
                log.warning("%s after", arg)
            elif kind == "parallel":
                def one(i):
                    log.warning("parallel %s %d", arg, i)
                    return i

                parallel = dspy.Parallel(num_threads=3, disable_progress_bar=True)
                parallel([(one, {"i": i}) for i in range(3)])
            elif kind == "thread":
                thread = threading.Thread(target=lambda: log.warning("plain thread %s", arg))
                thread.start()
                thread.join()
            return {"answer": kind}


    class Streamed(dspy.Module):
        \"\"\"Logs, then asks the LM (its answer can be streamed).\"\"\"

        def __init__(self):
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        def forward(self, question):
            log.warning("streaming %s", question)
            return self.predict(question=question)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logs-project")
    (root / "logpkg").mkdir()
    (root / "logpkg" / "__init__.py").write_text("")
    (root / "logpkg" / "chatty.py").write_text(textwrap.dedent(CHATTY))
    return root


@pytest.fixture(scope="module")
def worker(project: Path) -> Iterator[Worker]:
    env = {"DSPEX_TEST_FAULTS": "1", "DSPEX_PROJECT_DIR": str(project)}
    worker = Worker(env, ["--worker-id", "logs"], lazy=False)
    try:
        worker.ready = worker.handshake(60.0)
        # Registers the key as a secret (every string option of an LM configuration is).
        worker.call("configure_lm", {"model": "dummy", "api_key": SECRET})
        for program_id, path in (("chatty", "Chatty"), ("streamed", "Streamed")):
            worker.call(
                "create_program",
                {
                    "program_id": program_id,
                    "signature": qa_signature(),
                    "module": "python",
                    "module_args": {"path": f"logpkg.chatty:{path}"},
                },
            )
        yield worker
    finally:
        worker.kill()


def _logs(worker: Worker, request_id: int) -> list[dict[str, Any]]:
    """The ``data`` of every ``log`` event of a request; checks they all precede its reply."""
    frames = worker.frames_of(request_id)
    assert frames, request_id
    assert "ok" in frames[-1], frames[-1]  # the reply comes last
    assert all("ok" not in f for f in frames[:-1])
    events = [f for f in frames if f.get("event") == "log"]
    for event in events:
        assert set(event) == {"id", "event", "data"}, event
        assert set(event["data"]) == {"level", "logger", "message"}, event
    return [e["data"] for e in events]


def _of(data: list[dict[str, Any]], logger: str) -> list[tuple[str, str]]:
    return [(d["level"], d["message"]) for d in data if d["logger"] == logger]


def _execute(
    worker: Worker,
    question: str,
    program_id: str = "chatty",
    args: dict[str, Any] | None = None,
    **envelope: Any,
) -> int:
    request_id = worker.submit(
        "execute_program",
        {"program_id": program_id, "inputs": {"question": question}, **(args or {})},
        **envelope,
    )
    reply = worker.reply(request_id)
    assert reply["ok"] is True, reply
    return request_id


def test_handshake_lists_the_logs_feature(worker: Worker) -> None:
    assert "logs" in worker.ready["features"]


def test_log_events_precede_the_reply(worker: Worker) -> None:
    request_id = worker.submit(
        "log_line", {"text": "disk nearly full", "level": "WARNING", "logger": "x.y"}, logs=True
    )
    assert worker.reply(request_id)["result"] == {"logged": True}
    data = _logs(worker, request_id)
    assert data[0] == {"level": "WARNING", "logger": "x.y", "message": "disk nearly full"}
    # log_line also print()s the text: stdout is logged line by line, in the same context
    assert data[1:] == [
        {"level": "INFO", "logger": "dspex_bridge.stdout", "message": "disk nearly full"}
    ]
    worker.wait_stderr("x.y: disk nearly full")  # still on stderr too


def test_no_log_events_without_the_key(worker: Worker) -> None:
    for extra in ({}, {"logs": False}, {"logs": None}, {"events": True}):
        request_id = worker.submit("log_line", {"text": "not for the host"}, **extra)
        assert worker.reply(request_id)["ok"] is True
        assert worker.events.get(request_id) is None, extra
    request_id = _execute(worker, "levels:quiet")
    assert worker.events.get(request_id) is None


def test_logs_flag_must_be_a_bool(worker: Worker) -> None:
    error = worker.error("ping", logs="yes")
    assert error["kind"] == "InvalidArguments"
    assert error["details"] == {"field": "logs"}


def test_only_records_at_the_worker_level_are_sent(worker: Worker) -> None:
    request_id = _execute(worker, "levels:lv", logs=True)
    assert _of(_logs(worker, request_id), "logpkg.chatty") == [
        ("INFO", "info lv"),
        ("WARNING", "warning lv"),
        ("ERROR", "error lv"),
    ]  # the worker logs at INFO: no DEBUG record (none on stderr either)
    assert "debug lv" not in worker.stderr_text()


def test_an_exception_traceback_is_appended(worker: Worker) -> None:
    request_id = _execute(worker, "exception:tb", logs=True)
    ((level, message),) = _of(_logs(worker, request_id), "logpkg.chatty")
    assert level == "ERROR"
    assert message.startswith("caught tb\nTraceback (most recent call last):\n")
    assert 'raise ValueError("bad " + arg)' in message
    assert message.endswith("ValueError: bad tb")


def test_a_python_exception_reply_is_preceded_by_its_error_record(worker: Worker) -> None:
    request_id = worker.submit("raise", {"exception": "KeyError", "message": "gone"}, logs=True)
    assert worker.reply(request_id)["error"]["kind"] == "PythonException"
    ((level, message),) = _of(_logs(worker, request_id), "dspex_bridge.server")
    assert level == "ERROR"
    assert message == f"request {request_id} (raise) raised KeyError: 'gone'"


def test_secrets_are_redacted(worker: Worker) -> None:
    request_id = worker.submit(
        "log_line", {"text": f"Authorization: Bearer {SECRET}", "level": "ERROR"}, logs=True
    )
    worker.reply(request_id)
    data = _logs(worker, request_id)
    assert data[0]["message"] == "Authorization: Bearer [REDACTED]"
    assert all(SECRET not in d["message"] for d in data)
    worker.wait_stderr("Authorization: Bearer [REDACTED]")
    assert SECRET not in worker.stderr_text()


def test_a_long_message_is_cut_to_2_kib(worker: Worker) -> None:
    text = "é" * 3000  # 6000 bytes of UTF-8
    request_id = worker.submit("log_line", {"text": text, "logger": "long"}, logs=True)
    worker.reply(request_id)
    ((_, message),) = _of(_logs(worker, request_id), "long")
    assert message == "é" * 1024
    assert len(message.encode()) == 2048


def test_at_most_100_log_events_then_one_count(worker: Worker) -> None:
    request_id = _execute(worker, "many:250", logs=True)
    data = _logs(worker, request_id)
    assert len(data) == 101
    assert [d["message"] for d in data[:100]] == [f"record {i}" for i in range(100)]
    assert data[100] == {
        "level": "WARNING",
        "logger": "dspex_bridge",
        "message": "150 more log records suppressed",
    }
    assert worker.frames_of(request_id)[-2]["data"] == data[100]  # just before the reply
    worker.wait_stderr("logpkg.chatty: record 249")  # every record still on stderr


def test_concurrent_requests_get_only_their_own_records(worker: Worker) -> None:
    # Four requests at once (their modules wait for each other), one of them without logs.
    names = ["r0", "r1", "r2", "quiet"]
    ids = {
        name: worker.submit(
            "execute_program",
            {"program_id": "chatty", "inputs": {"question": f"together:{name}"}},
            **({} if name == "quiet" else {"logs": True}),
        )
        for name in names
    }
    for name, request_id in ids.items():
        assert worker.reply(request_id)["ok"] is True, name
    for name in names[:3]:
        assert _of(_logs(worker, ids[name]), "logpkg.chatty") == [
            ("WARNING", f"{name} before"),
            ("WARNING", f"{name} after"),
        ]
    assert worker.events.get(ids["quiet"]) is None
    worker.wait_stderr("logpkg.chatty: quiet after")


def test_records_of_dspy_parallel_threads_are_attributed(worker: Worker) -> None:
    request_id = _execute(worker, "parallel:p", logs=True)
    messages = sorted(m for _, m in _of(_logs(worker, request_id), "logpkg.chatty"))
    assert messages == ["parallel p 0", "parallel p 1", "parallel p 2"]


def test_records_of_a_plain_thread_are_not_attributed(worker: Worker) -> None:
    # contextvars (and DSPy's settings) do not reach a threading.Thread the module starts
    request_id = _execute(worker, "thread:t", logs=True)
    assert _of(_logs(worker, request_id), "logpkg.chatty") == []
    worker.wait_stderr("logpkg.chatty: plain thread t")


def test_batch_items_with_logs_and_events(worker: Worker) -> None:
    request_id = worker.submit(
        "execute_batch",
        {
            "program_id": "chatty",
            "inputs": [{"question": "exception:b0"}, {"question": "parallel:b1"}],
            "num_threads": 2,
        },
        logs=True,
        events=True,
    )
    assert worker.reply(request_id)["ok"] is True
    data = _logs(worker, request_id)
    messages = sorted(m.split("\n")[0] for _, m in _of(data, "logpkg.chatty"))
    assert messages == ["caught b0", "parallel b1 0", "parallel b1 1", "parallel b1 2"]
    progress = [f["data"] for f in worker.events[request_id] if f["event"] == "progress"]
    assert [p["done"] for p in progress] == [1, 2]


def test_a_streamed_run_sends_its_records_and_its_chunks(worker: Worker) -> None:
    request_id = _execute(worker, "stream me", "streamed", {"stream": True}, events=True, logs=True)
    assert _of(_logs(worker, request_id), "logpkg.chatty") == [("WARNING", "streaming stream me")]
    kinds = {f["event"] for f in worker.events[request_id]}
    assert kinds == {"log", "chunk"}


def test_events_only_still_sends_no_log_events(worker: Worker) -> None:
    request_id = worker.submit("emit_events", {"count": 2}, events=True)
    assert worker.reply(request_id)["result"] == {"sent": 2}
    assert [f["event"] for f in worker.events[request_id]] == ["progress", "progress"]
    request_id = worker.submit("emit_events", {"count": 2}, logs=True)
    assert worker.reply(request_id)["result"] == {"sent": 0}  # logs do not turn events on
