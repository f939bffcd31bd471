"""Deadlines reaching the LM, named LMs, and secrets never logged (one DEBUG worker)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import LoopbackLM, Worker, qa_signature

TOLERANCE_S = 0.15
# Known secrets: every configuration below that carries one is sent to the module's worker,
# which logs at DEBUG; none of them may ever appear on its stderr.
API_KEY = f"sk-dspex-test-{secrets.token_hex(12)}"
HEADER_TOKEN = f"tok-dspex-test-{secrets.token_hex(12)}"
INLINE_KEY = f"sk-dspex-inline-{secrets.token_hex(12)}"
SECRETS = (API_KEY, HEADER_TOKEN, INLINE_KEY)


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    """A DSPy worker at DEBUG level, offline model metadata, the dummy LM as default."""
    env = {"DSPEX_TEST_FAULTS": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    worker = Worker(env, ["--worker-id", "lm-deadlines", "--log-level", "DEBUG"], lazy=False)
    for value in SECRETS:
        worker.watch_stderr(value)
    try:
        worker.ready = worker.handshake(60.0)
        worker.call("configure_lm", {"model": "dummy"})
        yield worker
    finally:
        worker.kill()


def _create(worker: Worker, program_id: str) -> None:
    worker.call("create_program", {"program_id": program_id, "signature": qa_signature()})


def _execute(program_id: str, question: str = "q", **extra: Any) -> dict[str, Any]:
    return {"program_id": program_id, "inputs": {"question": question}, **extra}


def _no_secret_logged(worker: Worker) -> None:
    worker.sync_stderr()
    assert worker.stderr_watch == dict.fromkeys(SECRETS, 0)


def test_dummy_latency_ends_at_the_deadline(worker: Worker) -> None:
    _create(worker, "slow-dummy")
    before = worker.call("get_stats")["requests"]
    slow = {"model": "dummy", "latency_ms": 5000}
    started = time.monotonic()
    request_id = worker.submit("execute_program", _execute("slow-dummy", lm=slow), deadline_ms=300)
    reply = worker.reply(request_id, timeout=5.0)
    elapsed = time.monotonic() - started
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "DeadlineExceeded"
    assert reply["error"]["details"]["started"] is True
    assert 0.3 <= elapsed < 0.3 + TOLERANCE_S
    # served normally right after
    result = worker.call("execute_program", _execute("slow-dummy"))
    assert result["outputs"]["answer"].startswith("answer: ")
    # the engine waited on the abandoned event: its thread is free long before 5 s
    stats = worker.wait_stats(
        lambda r: r["late_results"] == before["late_results"] + 1 and r["in_flight"] == 1, 2.0
    )
    assert stats["deadline_exceeded"] == before["deadline_exceeded"] + 1
    # a deadline the dummy LM's latency fits in changes nothing
    fast = {"model": "dummy", "latency_ms": 50}
    ok = worker.call("execute_program", _execute("slow-dummy", lm=fast), deadline_ms=5000)
    assert ok["outputs"] == result["outputs"]


def test_named_lms(worker: Worker) -> None:
    _create(worker, "named")
    configured = worker.call("configure_lm", {"model": "dummy", "seed": "a", "lm_id": "lm-a"})
    assert configured == {"status": "configured", "model": "dummy", "lm_id": "lm-a"}
    stats = worker.call("get_stats")
    assert stats["lm"] == "dummy"  # the default LM is not replaced
    assert stats["named_lms"] >= 1
    via_id = worker.call("execute_program", _execute("named", lm_id="lm-a"))
    inline = worker.call("execute_program", _execute("named", lm={"model": "dummy", "seed": "a"}))
    default = worker.call("execute_program", _execute("named"))
    assert via_id["outputs"] == inline["outputs"]
    assert via_id["outputs"] != default["outputs"]
    assert via_id["model"] == "dummy"

    unknown = worker.error("execute_program", _execute("named", lm_id="lm-unknown"))
    assert unknown["kind"] == "LmNotConfigured"
    assert unknown["details"] == {
        "lm_id": "lm-unknown",
        "reason": "unknown_lm_id",
        "program_id": "named",
    }
    both = worker.error("execute_program", _execute("named", lm_id="lm-a", lm={"model": "dummy"}))
    assert (both["kind"], both["details"]) == ("InvalidArguments", {"field": "lm_id"})
    for bad in ("", 5, "x" * 129):
        error = worker.error("configure_lm", {"model": "dummy", "lm_id": bad})
        assert (error["kind"], error["details"]) == ("InvalidArguments", {"field": "lm_id"})
        error = worker.error("execute_program", _execute("named", lm_id=bad))
        assert error["kind"] == "InvalidArguments"
    long_id = "x" * 128
    assert worker.call("configure_lm", {"model": "dummy", "lm_id": long_id})["lm_id"] == long_id
    # a bad config under an id changes nothing
    bad = worker.error("configure_lm", {"model": "dummy", "latency_ms": -1, "lm_id": "lm-a"})
    assert bad["kind"] == "InvalidArguments"
    again = worker.call("execute_program", _execute("named", lm_id="lm-a"))
    assert again["outputs"] == via_id["outputs"]
    # configuring the id again replaces it
    worker.call("configure_lm", {"model": "dummy", "seed": "b", "lm_id": "lm-a"})
    replaced = worker.call("execute_program", _execute("named", lm_id="lm-a"))
    assert replaced["outputs"] != via_id["outputs"]
    # reset_state forgets the named LMs; the default LM stays
    worker.call("reset_state")
    _create(worker, "named")
    gone = worker.error("execute_program", _execute("named", lm_id="lm-a"))
    assert gone["details"]["reason"] == "unknown_lm_id"
    assert worker.call("get_stats")["named_lms"] == 0
    assert worker.call("execute_program", _execute("named"))["outputs"] == default["outputs"]


def test_real_lm_call_gets_the_remaining_time_as_its_timeout(
    worker: Worker, loopback_lm: LoopbackLM
) -> None:
    loopback_lm.delay = 10.0  # far longer than the deadline
    config = {
        "model": "openai/loopback-model",
        "api_key": API_KEY,
        "api_base": loopback_lm.url,
        "cache": False,
        "lm_id": "slow-real",
    }
    assert worker.call("configure_lm", config)["lm_id"] == "slow-real"
    _create(worker, "real")
    before = worker.call("get_stats")["requests"]
    started = time.monotonic()
    request_id = worker.submit(
        "execute_program", _execute("real", lm_id="slow-real"), deadline_ms=500
    )
    reply = worker.reply(request_id, timeout=5.0)
    elapsed = time.monotonic() - started
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "DeadlineExceeded", reply
    assert reply["error"]["details"]["started"] is True
    assert 0.5 <= elapsed < 0.5 + TOLERANCE_S
    # The handler thread ends shortly after: the provider call timed out (no retries under
    # a deadline), long before the server's 10 s.
    worker.wait_stats(
        lambda r: r["late_results"] == before["late_results"] + 1 and r["in_flight"] == 1,
        timeout=max(0.1, 1.5 - (time.monotonic() - started)),
    )
    assert len(loopback_lm.requests) == 1  # one call, not retried
    assert loopback_lm.requests[0]["path"] == "/v1/chat/completions"
    assert "lm_id" not in loopback_lm.requests[0]["body"]  # the id is not an LM option
    assert loopback_lm.auth == [f"Bearer {API_KEY}"]
    # the same LM without a deadline answers normally once the server is fast again
    loopback_lm.delay = 0.0
    result = worker.call("execute_program", _execute("real", lm_id="slow-real"))
    assert result["outputs"] == {"answer": LoopbackLM.ANSWER}
    _no_secret_logged(worker)


def test_no_secret_ever_reaches_the_log(worker: Worker, loopback_lm: LoopbackLM) -> None:
    assert worker.stderr_watch.keys() == set(SECRETS)
    real = {"model": "openai/gpt-4o-mini", "api_key": API_KEY}
    headers = {"extra_headers": {"Authorization": f"Bearer {HEADER_TOKEN}"}}
    # valid configurations: default and named
    assert worker.call("configure_lm", real)["model"] == "openai/gpt-4o-mini"
    worker.call("configure_lm", {**real, **headers, "lm_id": "with-key"})
    worker.call("configure_lm", {"model": "dummy", "api_key": API_KEY, "lm_id": "dummy-key"})
    # invalid ones, rejected by validation, by the dspy.LM constructor, or escaping it
    for bad in (
        {"model": "openai/", "api_key": API_KEY},
        {"model": "openai/x", "api_key": API_KEY, "temperature": "hot"},
        {"model": 5, "api_key": API_KEY},
        {"model": "openai/x", "api_key": API_KEY, "latency_ms": 5},
        {"model": "openai/x", "api_key": API_KEY, **headers, "weird key": 1},
        {"model": "openai/o1", "api_key": API_KEY, "temperature": 0.3, "max_tokens": 10},
        {"model": "openai/x", "api_key": API_KEY, "lm_id": ""},
        {"model": "openai/", "api_key": API_KEY, "lm_id": "broken"},
    ):
        reply = worker.request("configure_lm", bad)
        assert reply["ok"] is False, bad
        assert API_KEY not in str(reply)
    worker.call("configure_lm", {"model": "dummy"})
    # an execution carrying a key inline, against a real (loopback) HTTP provider
    _create(worker, "secret")
    inline = {
        "model": "openai/loopback-model",
        "api_key": INLINE_KEY,
        "api_base": loopback_lm.url,
        "cache": False,
    }
    result = worker.call("execute_program", _execute("secret", lm=inline))
    assert result["outputs"] == {"answer": LoopbackLM.ANSWER}
    assert loopback_lm.auth[-1] == f"Bearer {INLINE_KEY}"  # the key really was used
    error = worker.error("execute_program", _execute("secret", lm={**inline, "temperature": -1}))
    assert error["kind"] == "InvalidArguments"
    # A library logging (or printing) the request it sends, as LiteLLM does at DEBUG, and
    # an exception whose message carries a key: redacted on the way out.
    leaky = f"POST -H 'Authorization: Bearer {INLINE_KEY}' -H 'X-Token: {HEADER_TOKEN}'"
    worker.call("log_line", {"text": leaky, "level": "DEBUG", "logger": "LiteLLM"})
    worker.wait_stderr("X-Token: [REDACTED]")
    raised = worker.error("raise", {"exception": "ValueError", "message": f"bad key {API_KEY}"})
    assert raised["kind"] == "PythonException"
    assert API_KEY not in raised["message"]
    assert API_KEY not in raised["traceback"]
    worker.wait_stderr("raised ValueError: bad key [REDACTED]")
    _no_secret_logged(worker)
    assert " DEBUG " in worker.stderr_text()  # the worker really logged at DEBUG
