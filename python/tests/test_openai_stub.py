"""The OpenAI-compatible stub server, alone and as the LM of a worker (the real HTTP path)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from dspex_bridge.lm import DummyEngine, count_tokens

from .conftest import PYTHON_DIR, Worker, qa_signature

TOOL = {
    "name": "lookup",
    "description": "Look up the weather of a city.",
    "args": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
SYSTEM = (
    "Your input fields are:\n1. `question` (str):\nYour output fields are:\n1. `answer` (str):\n"
    "All interactions will be structured in the following way\n\n[[ ## question ## ]]\n"
    "{question}\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]\n"
)
USER = "[[ ## question ## ]]\nhello\n\nRespond with the fields."


@pytest.fixture(scope="module")
def stub() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dspex_bridge.openai_stub", "--port", "0"],
        stdout=subprocess.PIPE,
        cwd=str(PYTHON_DIR),
        env={"PYTHONPATH": str(PYTHON_DIR), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = json.loads(line)["port"]
        assert isinstance(port, int)
        assert port > 0
        yield port
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    env = {"DSPEX_TEST_FAULTS": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    worker = Worker(env, ["--worker-id", "stub"], lazy=False)
    try:
        worker.ready = worker.handshake(60.0)
        worker.call("configure_lm", {"model": "dummy"})
        yield worker
    finally:
        worker.kill()


def _post(port: int, body: dict[str, Any], path: str = "/v1/chat/completions") -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer x"},
    )
    return urllib.request.urlopen(request, timeout=10)


def _messages() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": [{"type": "text", "text": USER}]},
    ]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
def test_completion_is_the_dummy_answer_with_usage(stub: int, path: str) -> None:
    with _post(stub, {"model": "anything", "messages": _messages()}, path) as response:
        data = json.loads(response.read())
    answer = DummyEngine().answer(SYSTEM, USER)
    assert data["object"] == "chat.completion"
    assert data["model"] == "anything"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": answer}
    assert data["choices"][0]["finish_reason"] == "stop"
    prompt = count_tokens(SYSTEM) + count_tokens(USER)
    assert data["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": count_tokens(answer),
        "total_tokens": prompt + count_tokens(answer),
    }


def test_streaming_is_server_sent_events(stub: int) -> None:
    body = {
        "model": "m",
        "messages": _messages(),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with _post(stub, body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = [line.decode() for line in response.read().splitlines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    texts = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len([t for t in texts if t]) > 2
    assert "".join(texts) == DummyEngine().answer(SYSTEM, USER)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_unknown_route_is_404(stub: int) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        _post(stub, {}, "/v1/embeddings")
    assert info.value.code == 404


def _lm(port: int) -> dict[str, Any]:
    # No DSPy cache: it persists on disk across runs, and a cache hit has no usage or stream.
    return {
        "model": "openai/stub-model",
        "api_base": f"http://127.0.0.1:{port}/v1",
        "api_key": "x",
        "cache": False,
    }


@pytest.mark.parametrize("module", ["predict", "chain_of_thought"])
def test_real_lm_through_the_worker_matches_the_dummy(
    worker: Worker, stub: int, module: str
) -> None:
    worker.call(
        "create_program",
        {"program_id": f"stub-{module}", "signature": qa_signature(), "module": module},
    )
    args = {"program_id": f"stub-{module}", "inputs": {"question": "over HTTP?"}}
    real = worker.call("execute_program", {**args, "lm": _lm(stub)})
    offline = worker.call("execute_program", args)
    assert real["model"] == "openai/stub-model"
    assert real["outputs"] == offline["outputs"]
    assert real["usage"] == {"openai/stub-model": offline["usage"]["dummy"]}


def test_real_lm_react_with_a_host_tool(worker: Worker, stub: int) -> None:
    worker.call(
        "create_program",
        {
            "program_id": "stub-react",
            "signature": qa_signature(),
            "module": "react",
            "module_args": {"tools": [TOOL]},
        },
    )
    worker.call_handler = lambda f: {"ok": True, "result": f"sunny in {f['args']['city']}"}
    try:
        args = {"program_id": "stub-react", "inputs": {"question": "weather?"}}
        request_id = worker.submit("execute_program", {**args, "lm": _lm(stub)})
        real = worker.reply(request_id)
        offline = worker.call("execute_program", args)
    finally:
        worker.call_handler = None
    assert real["ok"] is True, real
    assert [c["name"] for c in worker.calls[request_id]] == ["lookup"]
    trajectory = json.loads(real["result"]["outputs"]["trajectory"])
    assert trajectory["observation_0"].startswith("sunny in ")
    assert real["result"]["outputs"] == offline["outputs"]


def test_real_lm_streaming_through_the_worker(worker: Worker, stub: int) -> None:
    worker.call(
        "create_program",
        {"program_id": "stub-stream", "signature": qa_signature(), "module": "chain_of_thought"},
    )
    args = {"program_id": "stub-stream", "inputs": {"question": "stream it"}, "stream": True}
    request_id = worker.submit("execute_program", {**args, "lm": _lm(stub)}, events=True)
    reply = worker.reply(request_id)
    assert reply["ok"] is True, reply
    chunks = [e["data"] for e in worker.events[request_id]]
    reasoning = [c["text"] for c in chunks if c["field"] == "reasoning"]
    assert len(reasoning) > 1
    assert "".join(reasoning).strip() == reply["result"]["outputs"]["reasoning"]


def test_evaluate_and_optimize_over_http(worker: Worker, stub: int) -> None:
    """A real ``dspy.LM`` (the worker's DeadlineLM) under evaluate and optimize: the job's
    copy of the LM counts its calls and honours the budget."""
    worker.call("create_program", {"program_id": "stub-opt", "signature": qa_signature()})
    trainset = [
        {"inputs": {"question": f"question {i}"}, "labels": {"answer": f"answer {i}"}}
        for i in range(4)
    ]
    lm = _lm(stub)
    metric = {"builtin": "answer_exact_match"}
    scored = worker.call(
        "evaluate",
        {"program_id": "stub-opt", "devset": trainset, "metric": metric, "lm": lm},
    )
    assert scored["score"] == 0.0
    assert scored["usage"]["openai/stub-model"]["total_tokens"] > 0
    request = {
        "program_id": "stub-opt",
        "optimizer": "bootstrap_few_shot",
        "trainset": trainset,
        "metric": metric,
        "lm": lm,
    }
    result = worker.call("optimize", request)
    assert result["lm_calls"] == result["metric_calls"] == len(trainset)
    assert result["usage"]["openai/stub-model"]["total_tokens"] > 0
    assert len(result["state"]["demos"]) == len(trainset)
    error = worker.error("optimize", {**request, "budget": {"max_lm_calls": 2}})
    assert error["kind"] == "BudgetExceeded"
