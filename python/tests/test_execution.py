"""Usage, LM history, conversation history, execute_batch, streaming and concurrency."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from dspex_bridge.lm import count_tokens

from .conftest import Worker, qa_signature

HISTORY_SIGNATURE = qa_signature(
    inputs=[
        {"name": "question", "type": "str"},
        {"name": "chat", "type": "history", "optional": True},
    ]
)


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    worker = Worker({"DSPEX_TEST_FAULTS": "1"}, ["--worker-id", "execution"], lazy=False)
    try:
        worker.ready = worker.handshake(60.0)
        worker.call("configure_lm", {"model": "dummy"})
        for program_id, module in (("qa", "predict"), ("cot", "chain_of_thought")):
            worker.call(
                "create_program",
                {"program_id": program_id, "signature": qa_signature(), "module": module},
            )
        worker.call("create_program", {"program_id": "chat", "signature": HISTORY_SIGNATURE})
        yield worker
    finally:
        worker.kill()


def _execute(worker: Worker, program_id: str, question: str = "q", **extra: Any) -> dict[str, Any]:
    return worker.call(
        "execute_program", {"program_id": program_id, "inputs": {"question": question}, **extra}
    )


def _message_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(count_tokens(m["content"]) for m in messages)


# --- usage and LM history -----------------------------------------------------------------------


@pytest.mark.parametrize("program_id", ["qa", "cot"])
def test_usage_counts_the_prompt_and_the_answer(worker: Worker, program_id: str) -> None:
    result = _execute(worker, program_id, lm_history=True)
    (entry,) = result["lm_history"]
    assert set(entry) == {"model", "messages", "outputs"}
    assert entry["model"] == "dummy"
    assert [m["role"] for m in entry["messages"]] == ["system", "user"]
    (completion,) = entry["outputs"]
    prompt = _message_tokens(entry["messages"])
    answer = count_tokens(completion)
    assert result["usage"] == {
        "dummy": {
            "prompt_tokens": prompt,
            "completion_tokens": answer,
            "total_tokens": prompt + answer,
        }
    }
    assert answer > 0
    assert completion.startswith("[[ ## ")


def test_lm_history_is_off_by_default_and_per_request(worker: Worker) -> None:
    plain = _execute(worker, "qa", "first")
    assert "lm_history" not in plain
    assert set(plain) == {"program_id", "outputs", "usage", "duration_ms", "model"}
    second = _execute(worker, "qa", "second", lm_history=True)
    (entry,) = second["lm_history"]  # only this request's call
    assert "second" in entry["messages"][-1]["content"]
    bad = worker.error("execute_program", {"program_id": "qa", "inputs": {}, "lm_history": "yes"})
    assert bad["kind"] == "InvalidArguments"
    assert bad["details"] == {"field": "lm_history"}


def test_usage_sums_several_lm_calls(worker: Worker) -> None:
    worker.call(
        "create_program",
        {
            "program_id": "mcc-usage",
            "signature": qa_signature(),
            "module": "multi_chain_comparison",
            "module_args": {"m": 2},
        },
    )
    result = _execute(worker, "mcc-usage", lm_history=True)
    history = result["lm_history"]
    assert len(history) == 3
    prompt = sum(_message_tokens(e["messages"]) for e in history)
    answer = sum(count_tokens(e["outputs"][0]) for e in history)
    assert result["usage"]["dummy"] == {
        "prompt_tokens": prompt,
        "completion_tokens": answer,
        "total_tokens": prompt + answer,
    }


# --- conversation history -----------------------------------------------------------------------


def test_history_turns_reach_the_lm(worker: Worker) -> None:
    chat = {"messages": [{"question": "capital of France?", "answer": "Paris"}]}
    result = worker.call(
        "execute_program",
        {
            "program_id": "chat",
            "inputs": {"question": "and of Italy?", "chat": chat},
            "lm_history": True,
        },
    )
    assert result["outputs"]["answer"].startswith("answer: ")
    (entry,) = result["lm_history"]
    roles = [m["role"] for m in entry["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert "capital of France?" in entry["messages"][1]["content"]
    assert "Paris" in entry["messages"][2]["content"]
    assert "and of Italy?" in entry["messages"][3]["content"]
    # an optional history may be left out (or null): no earlier turns
    for inputs in ({"question": "q"}, {"question": "q", "chat": None}):
        empty = worker.call(
            "execute_program", {"program_id": "chat", "inputs": inputs, "lm_history": True}
        )
        assert [m["role"] for m in empty["lm_history"][0]["messages"]] == ["system", "user"]


@pytest.mark.parametrize(
    "chat",
    [
        [{"question": "a"}],
        {"messages": "a"},
        {"messages": [1]},
        {"messages": [], "extra": 1},
        {},
    ],
)
def test_bad_history_values_name_the_field(worker: Worker, chat: Any) -> None:
    error = worker.error(
        "execute_program", {"program_id": "chat", "inputs": {"question": "q", "chat": chat}}
    )
    assert error["kind"] == "InvalidArguments"
    assert error["details"]["field"] == "chat"


@pytest.mark.parametrize(
    "signature",
    [
        qa_signature(outputs=[{"name": "answer", "type": "history"}]),
        qa_signature(inputs=[{"name": "turns", "type": "list[history]"}]),
        qa_signature(inputs=[{"name": "a", "type": "history"}, {"name": "b", "type": "history"}]),
    ],
)
def test_history_type_placement(worker: Worker, signature: Any) -> None:
    error = worker.error("create_program", {"program_id": "bad-chat", "signature": signature})
    assert error["kind"] == "SignatureError"


# --- execute_batch -----------------------------------------------------------------------------


def test_batch_results_in_order_with_error_entries(worker: Worker) -> None:
    items: list[Any] = [
        {"question": "one"},
        {"question": 2},
        {"question": "three"},
        "not a map",
        {"question": "five", "extra": 1},
        {"question": "six"},
    ]
    request_id = worker.submit(
        "execute_batch", {"program_id": "cot", "inputs": items, "num_threads": 3}, events=True
    )
    reply = worker.reply(request_id)
    assert reply["ok"] is True, reply
    result = reply["result"]
    assert set(result) == {"program_id", "results", "usage", "duration_ms", "model"}
    assert result["model"] == "dummy"
    results = result["results"]
    assert len(results) == len(items)
    for index in (1, 3, 4):
        error = results[index]["error"]
        assert set(error) == {"kind", "message", "details"}
        assert error["kind"] == "InvalidArguments"
    for index, question in ((0, "one"), (2, "three"), (5, "six")):
        single = _execute(worker, "cot", question)
        assert results[index] == {"outputs": single["outputs"], "usage": single["usage"]}
        assert single["usage"]["dummy"]["total_tokens"] > 0
    # usage is the sum of the three runs
    each = _execute(worker, "cot", "one")["usage"]["dummy"]
    assert result["usage"]["dummy"]["completion_tokens"] == 3 * each["completion_tokens"]
    # one progress event per item, all before the reply
    frames = worker.frames_of(request_id)
    assert frames[-1]["ok"] is True
    events = frames[:-1]
    assert [e["event"] for e in events] == ["progress"] * len(items)
    assert [e["data"] for e in events] == [
        {"done": i + 1, "total": len(items)} for i in range(len(items))
    ]


def test_batch_without_events_sends_none(worker: Worker) -> None:
    request_id = worker.submit(
        "execute_batch", {"program_id": "qa", "inputs": [{"question": "a"}, {"question": "b"}]}
    )
    reply = worker.reply(request_id)
    assert [sorted(r) for r in reply["result"]["results"]] == [["outputs", "usage"]] * 2
    assert worker.frames_of(request_id) == [reply]


def test_batch_runs_items_in_parallel(worker: Worker) -> None:
    lm = {"model": "dummy", "latency_ms": 300}
    items = [{"question": f"q{i}"} for i in range(6)]
    started = time.monotonic()
    result = worker.call(
        "execute_batch", {"program_id": "qa", "inputs": items, "lm": lm, "num_threads": 6}
    )
    assert time.monotonic() - started < 1.2  # 6 x 300 ms overlapped
    answers = [r["outputs"]["answer"] for r in result["results"]]
    assert len(set(answers)) == 6


def test_batch_deadline_covers_the_whole_batch(worker: Worker) -> None:
    lm = {"model": "dummy", "latency_ms": 400}
    items = [{"question": f"q{i}"} for i in range(4)]
    request_id = worker.submit(
        "execute_batch",
        {"program_id": "qa", "inputs": items, "lm": lm, "num_threads": 1},
        deadline_ms=600,
    )
    reply = worker.reply(request_id, timeout=5.0)
    assert reply["error"]["kind"] == "DeadlineExceeded"
    worker.wait_stats(lambda r: r["in_flight"] == 1, 3.0)


@pytest.mark.parametrize(
    "args",
    [
        {"program_id": "qa", "inputs": {"question": "a"}},
        {"program_id": "qa", "inputs": [], "num_threads": 0},
        {"program_id": "qa", "inputs": [], "num_threads": True},
        {"program_id": "qa"},
    ],
)
def test_batch_bad_arguments(worker: Worker, args: dict[str, Any]) -> None:
    assert worker.error("execute_batch", args)["kind"] == "InvalidArguments"


def test_batch_with_lm_id_and_carried_definition(worker: Worker) -> None:
    worker.call("configure_lm", {"model": "dummy", "seed": "batch", "lm_id": "batch-lm"})
    definition = {"program_id": "carried-batch", "signature": qa_signature(), "module": "predict"}
    result = worker.call(
        "execute_batch",
        {
            "program_id": "carried-batch",
            "program": definition,
            "inputs": [{"question": "x"}],
            "lm_id": "batch-lm",
        },
    )
    seeded = _execute(worker, "carried-batch", "x", lm_id="batch-lm")
    assert result["results"] == [{"outputs": seeded["outputs"], "usage": seeded["usage"]}]
    assert result["results"][0]["outputs"] != _execute(worker, "carried-batch", "x")["outputs"]
    assert worker.call("execute_batch", {"program_id": "qa", "inputs": []})["results"] == []


# --- streaming ----------------------------------------------------------------------------------


def _chunks(worker: Worker, request_id: int) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for event in worker.events.get(request_id, []):
        assert event["event"] == "chunk"
        assert set(event["data"]) == {"field", "text"}
        fields.setdefault(event["data"]["field"], []).append(event["data"]["text"])
    return fields


@pytest.mark.parametrize("program_id", ["qa", "cot"])
def test_stream_sends_chunks_then_the_reply(worker: Worker, program_id: str) -> None:
    args = {"program_id": program_id, "inputs": {"question": "stream"}, "stream": True}
    request_id = worker.submit("execute_program", args, events=True)
    reply = worker.reply(request_id)
    assert reply["ok"] is True, reply
    outputs = reply["result"]["outputs"]
    chunks = _chunks(worker, request_id)
    assert list(chunks) == list(outputs)  # every str output, in order
    for name, pieces in chunks.items():
        assert len(pieces) > 1, (name, pieces)
        assert "".join(pieces).strip() == outputs[name]
    assert worker.frames_of(request_id)[-1] == reply
    # the same as without streaming
    assert _execute(worker, program_id, "stream")["outputs"] == outputs
    assert reply["result"]["usage"] == _execute(worker, program_id, "stream")["usage"]


def test_stream_needs_events(worker: Worker) -> None:
    args = {"program_id": "cot", "inputs": {"question": "quiet"}, "stream": True}
    request_id = worker.submit("execute_program", args)
    reply = worker.reply(request_id)
    assert reply["ok"] is True
    assert worker.frames_of(request_id) == [reply]


def test_stream_streams_str_fields_only(worker: Worker) -> None:
    signature = qa_signature(
        outputs=[{"name": "answer", "type": "str"}, {"name": "count", "type": "int"}]
    )
    worker.call("create_program", {"program_id": "typed-stream", "signature": signature})
    args = {"program_id": "typed-stream", "inputs": {"question": "q"}, "stream": True}
    request_id = worker.submit("execute_program", args, events=True)
    reply = worker.reply(request_id)
    assert isinstance(reply["result"]["outputs"]["count"], int)
    assert list(_chunks(worker, request_id)) == ["answer"]


def test_stream_of_a_best_of_n_program_has_no_chunks(worker: Worker) -> None:
    worker.call(
        "create_program",
        {
            "program_id": "bon-stream",
            "signature": qa_signature(),
            "module": "best_of_n",
            "module_args": {"n": 1, "threshold": 0.0, "reward": "r"},
        },
    )
    worker.call_handler = lambda f: {"ok": True, "result": 1.0}
    try:
        args = {"program_id": "bon-stream", "inputs": {"question": "q"}, "stream": True}
        request_id = worker.submit("execute_program", args, events=True)
        reply = worker.reply(request_id)
    finally:
        worker.call_handler = None
    assert reply["ok"] is True, reply
    assert worker.events.get(request_id) is None


def test_cancel_ends_a_stream(worker: Worker) -> None:
    lm = {"model": "dummy", "latency_ms": 5000}
    args = {"program_id": "cot", "inputs": {"question": "slow"}, "stream": True, "lm": lm}
    # ``in_flight`` counts a request from its dispatch, so a cancel can land while it is still
    # queued for its request thread: then it is answered without running (no late result),
    # and the attempt is repeated until the cancel catches the handler running.
    for _ in range(20):
        before = worker.call("get_stats")["requests"]
        request_id = worker.submit("execute_program", args, events=True)
        worker.wait_stats(lambda r: r["in_flight"] == 2)  # dispatched (this get_stats is the other)
        cancel = worker.submit("cancel", {"request_id": request_id})
        reply = worker.reply(request_id)
        assert reply["error"]["kind"] == "Cancelled"
        assert worker.reply(cancel)["result"] == {"cancelled": True}
        # the handler (if it started, the streaming work) ended long before the 5 s latency
        stats = worker.wait_stats(lambda r: r["in_flight"] == 1, 2.0)
        assert worker.frames_of(request_id) == [reply]
        if stats["late_results"] == before["late_results"] + 1:
            return  # it ran, and its abandoned result was discarded
        assert stats["late_results"] == before["late_results"]  # cancelled before it started
    raise AssertionError("every cancel landed before the handler started")


# --- concurrency: two LMs on one worker ----------------------------------------------------------


def test_sixteen_concurrent_requests_each_on_its_own_lm(worker: Worker) -> None:
    default = {"model": "dummy", "latency_ms": 150, "seed": "default-lm"}
    other = {"model": "dummy", "latency_ms": 150, "seed": "other-lm"}
    worker.call("configure_lm", default)
    worker.call("configure_lm", {**other, "lm_id": "other"})
    try:
        plan = []
        for i in range(16):
            extra: dict[str, Any] = {}
            if i % 4 == 1:
                extra = {"lm_id": "other"}
            elif i % 4 == 3:
                extra = {"lm": other}
            plan.append((f"q{i // 2}", extra))
        started = time.monotonic()
        ids = [
            worker.submit(
                "execute_program", {"program_id": "cot", "inputs": {"question": q}, **extra}
            )
            for q, extra in plan
        ]
        replies = [worker.reply(request_id) for request_id in ids]
        assert time.monotonic() - started < 1.5  # they overlapped (16 x 150 ms = 2.4 s)
        expected: dict[tuple[str, bool], dict[str, Any]] = {}
        for (question, extra), reply in zip(plan, replies, strict=True):
            assert reply["ok"] is True, reply
            key = (question, bool(extra))
            if key not in expected:
                # the same LM without the latency, one request at a time
                seed = other["seed"] if extra else default["seed"]
                args = {"program_id": "cot", "inputs": {"question": question}}
                lm = {"model": "dummy", "seed": seed}
                expected[key] = worker.call("execute_program", {**args, "lm": lm})["outputs"]
            assert reply["result"]["outputs"] == expected[key], (question, extra)
        for question in {q for q, _ in plan}:
            assert expected[(question, False)] != expected[(question, True)]
    finally:
        worker.call("configure_lm", {"model": "dummy"})
