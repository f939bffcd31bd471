"""``evaluate``: examples, builtin and host metrics (batched), DSPy's percentage, errors,
progress events, and the differential test against plain ``dspy.Evaluate``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dspex_bridge.lm import build_lm, parse_lm_config
from dspex_bridge.signatures import build_dspy_signature, parse_signature

from .conftest import CAPITALS_SIGNATURE, Worker, capitals, qa_signature

SIGNATURE = CAPITALS_SIGNATURE
DEVSET: list[dict[str, Any]] = capitals("dev")
TRAINSET: list[dict[str, Any]] = capitals("train")
# Half the train examples as demos: the follow_examples LM answers half the dev set right.
DEMOS = [{**ex["inputs"], **ex["labels"]} for ex in TRAINSET[:10]]
FOLLOW = {"model": "dummy", "follow_examples": True}


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    worker = Worker({"DSPEX_TEST_FAULTS": "1"}, ["--worker-id", "evaluate"], lazy=False)
    try:
        worker.ready = worker.handshake(60.0)
        worker.call("configure_lm", FOLLOW)
        worker.call("create_program", {"program_id": "cap", "signature": SIGNATURE, "demos": DEMOS})
        yield worker
    finally:
        worker.call_handler = None
        worker.kill()


@pytest.fixture(autouse=True)
def _no_handler(worker: Worker) -> Iterator[None]:
    yield
    worker.call_handler = None


def _evaluate(worker: Worker, metric: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return worker.call(
        "evaluate", {"program_id": "cap", "devset": DEVSET, "metric": metric, **extra}
    )


def _expected_right() -> list[bool]:
    demo_questions = {d["question"] for d in DEMOS}
    return [ex["inputs"]["question"] in demo_questions for ex in DEVSET]


@pytest.mark.parametrize(
    "metric",
    [
        {"builtin": "answer_exact_match"},
        {"builtin": "exact_match", "field": "answer"},
        {"builtin": "f1", "field": "answer"},
    ],
)
def test_builtin_metrics(worker: Worker, metric: dict[str, Any]) -> None:
    result = _evaluate(worker, metric)
    right = _expected_right()
    assert result["score"] == round(100 * sum(right) / len(right), 2) == 50.0
    assert result["program_id"] == "cap"
    assert result["model"] == "dummy"
    assert result["usage"]["dummy"]["total_tokens"] > 0
    assert result["duration_ms"] >= 0
    assert result["metric_calls"] == len(DEVSET)
    assert len(result["results"]) == len(DEVSET)
    for ex, entry, ok in zip(DEVSET, result["results"], right, strict=True):
        assert set(entry) == {"outputs", "score"}
        assert entry["score"] == (1.0 if ok else 0.0)
        if ok:
            assert entry["outputs"]["answer"] == ex["labels"]["answer"]


def _dspy_program(lm: Any) -> Any:
    import dspy

    program = dspy.Predict(build_dspy_signature(parse_signature(SIGNATURE)))
    program.demos = [dspy.Example(**d).with_inputs("question") for d in DEMOS]
    return program


def _dspy_devset() -> list[Any]:
    import dspy

    return [
        dspy.Example(**ex["inputs"], **ex["labels"]).with_inputs(*ex["inputs"]) for ex in DEVSET
    ]


@pytest.mark.parametrize("builtin", ["answer_exact_match", "f1"])
def test_score_equals_plain_dspy_evaluate(worker: Worker, builtin: str) -> None:
    """The differential test: the worker's score is ``dspy.Evaluate``'s on the same program."""
    import dspy
    from dspy.evaluate.metrics import F1

    lm = build_lm(parse_lm_config(FOLLOW)).lm

    def f1(example: Any, prediction: Any, trace: Any = None) -> float:
        return F1(prediction.answer, [example.answer])

    metric_fn = dspy.evaluate.answer_exact_match if builtin == "answer_exact_match" else f1
    with dspy.context(lm=lm):
        direct = dspy.Evaluate(devset=_dspy_devset(), metric=metric_fn, num_threads=4)(
            _dspy_program(lm)
        )
    metric = {"builtin": builtin} if builtin != "f1" else {"builtin": "f1", "field": "answer"}
    result = _evaluate(worker, metric, num_threads=4)
    assert result["score"] == direct.score
    assert [e["score"] for e in result["results"]] == [float(s) for *_, s in direct.results]
    for entry, (_, prediction, _) in zip(result["results"], direct.results, strict=True):
        assert entry["outputs"]["answer"] == prediction.answer


def test_f1_gives_partial_credit(worker: Worker) -> None:
    devset = [{"inputs": {"question": "What is the capital of France?"}, "labels": {"answer": "x"}}]
    worker.call(
        "create_program",
        {
            "program_id": "cap-f1",
            "signature": SIGNATURE,
            "demos": [{"question": "What is the capital of France?", "answer": "Paris France"}],
        },
    )
    devset[0]["labels"]["answer"] = "Paris"
    result = worker.call(
        "evaluate",
        {"program_id": "cap-f1", "devset": devset, "metric": {"builtin": "f1", "field": "answer"}},
    )
    assert result["results"][0]["score"] == pytest.approx(2 / 3)
    assert result["score"] == round(100 * 2 / 3, 2)


def _host(scores: Any) -> Any:
    """A call handler answering the metric with ``scores(items)`` (recording the calls)."""
    calls: list[list[dict[str, Any]]] = []

    def handler(frame: dict[str, Any]) -> dict[str, Any]:
        items = frame["args"]["items"]
        calls.append(items)
        return {"ok": True, "result": {"scores": scores(items)}}

    handler.calls = calls  # type: ignore[attr-defined]
    return handler


def _exact(items: list[dict[str, Any]]) -> list[float]:
    return [float(i["prediction"]["answer"] == i["example"]["labels"]["answer"]) for i in items]


def test_host_metric_is_batched_after_predicting(worker: Worker) -> None:
    handler = _host(_exact)
    worker.call_handler = handler
    result = _evaluate(worker, {"callback": "exact", "batch": 4})
    assert [len(c) for c in handler.calls] == [4, 4, 2]
    first = handler.calls[0][0]
    assert first["example"] == DEVSET[0]
    assert set(first["prediction"]) == {"answer"}
    assert result["score"] == 50.0
    assert result["metric_calls"] == len(DEVSET)
    assert [e["score"] for e in result["results"]] == [float(r) for r in _expected_right()]


def test_host_metric_default_batch_is_one_callback(worker: Worker) -> None:
    handler = _host(_exact)
    worker.call_handler = handler
    _evaluate(worker, {"callback": "exact"})
    assert [len(c) for c in handler.calls] == [len(DEVSET)]


def test_host_metric_feedback_errors_and_malformed_entries(worker: Worker) -> None:
    entries: list[Any] = [
        1,
        {"score": 0.5, "feedback": "half right"},
        {"error": "judge unavailable"},
        "nope",
        True,
        float("nan"),
        {"score": 1, "feedback": 3},
        {"score": 1, "extra": 1},
        0.25,
        {"score": 0.75},
    ]
    worker.call_handler = _host(lambda items: entries[: len(items)])
    result = _evaluate(worker, {"callback": "judge", "feedback": True})
    got = result["results"]
    assert got[0]["score"] == 1.0
    assert "error" not in got[0]
    assert got[1]["score"] == 0.5
    assert got[1]["feedback"] == "half right"
    assert got[2]["score"] == 0.0
    assert got[2]["error"] == {"kind": "MetricError", "message": "judge unavailable"}
    for entry in got[3:8]:
        assert entry["score"] == 0.0
        assert entry["error"]["kind"] == "MetricError"
        assert "malformed score" in entry["error"]["message"]
        assert "outputs" in entry
    assert got[8]["score"] == 0.25
    assert got[9]["score"] == 0.75
    assert result["score"] == round(100 * (1 + 0.5 + 0.25 + 0.75) / 10, 2)


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        ({"ok": True, "result": {"scores": [1]}}, "answered 1 scores for 10 items"),
        ({"ok": True, "result": [1] * 10}, "no 'scores' list"),
        ({"ok": False, "error": {"kind": "ToolError", "message": "boom"}}, "ToolError: boom"),
    ],
)
def test_host_metric_failures_fail_the_batch(
    worker: Worker, answer: dict[str, Any], needle: str
) -> None:
    worker.call_handler = lambda frame: answer
    result = _evaluate(worker, {"callback": "judge"})
    assert result["score"] == 0.0
    for entry in result["results"]:
        assert entry["score"] == 0.0
        assert entry["error"]["kind"] == "MetricError"
        assert needle in entry["error"]["message"]


def test_failed_predictions_score_zero_and_are_not_sent_to_the_metric(worker: Worker) -> None:
    handler = _host(lambda items: [1.0] * len(items))
    worker.call_handler = handler
    broken = {"model": "dummy", "fail_fields": ["answer"]}
    result = _evaluate(worker, {"callback": "judge"}, lm=broken)
    assert handler.calls == []
    assert result["score"] == 0.0
    assert result["metric_calls"] == 0
    for entry in result["results"]:
        assert set(entry) == {"score", "error"}
        assert entry["error"]["kind"] == "LmError"


def test_progress_events(worker: Worker) -> None:
    request_id = worker.submit(
        "evaluate",
        {"program_id": "cap", "devset": DEVSET, "metric": {"builtin": "answer_exact_match"}},
        events=True,
    )
    reply = worker.reply(request_id)
    assert reply["ok"] is True
    events = [f["data"] for f in worker.frames_of(request_id) if f.get("event") == "progress"]
    assert [e["done"] for e in events] == list(range(1, len(DEVSET) + 1))
    assert all(e["total"] == len(DEVSET) for e in events)
    assert events[-1]["score"] == reply["result"]["score"]
    assert all(0 <= e["score"] <= 100 for e in events)


def test_stats_count_evaluations(worker: Worker) -> None:
    before = worker.call("get_stats")["evaluations"]
    _evaluate(worker, {"builtin": "answer_exact_match"})
    assert worker.call("get_stats")["evaluations"] == before + 1


def _bad_devsets() -> list[tuple[Any, dict[str, Any]]]:
    good = DEVSET[0]
    return [
        (None, {"field": "devset"}),
        ([], {"field": "devset"}),
        ({"inputs": {}}, {"field": "devset"}),
        ([good, "x"], {"field": "devset", "index": 1}),
        ([good, {**good, "extra": 1}], {"field": "devset", "index": 1, "unknown": ["extra"]}),
        ([{"labels": {"answer": "a"}}], {"field": "devset", "index": 0, "key": "inputs"}),
        ([{"inputs": {"question": 3}}], {"field": "devset", "index": 0, "input": "question"}),
        ([{"inputs": {"q": "x"}}], {"field": "devset", "index": 0, "input": "q"}),
        ([{"inputs": {}}], {"field": "devset", "index": 0, "input": "question"}),
        (
            [good, {"inputs": good["inputs"], "labels": {"reasoning": "r"}}],
            {"field": "devset", "index": 1, "label": "reasoning"},
        ),
        (
            [{"inputs": good["inputs"], "labels": {"answer": ["not", "text"]}}],
            {"field": "devset", "index": 0, "label": "answer"},
        ),
        (
            [good, {"inputs": good["inputs"]}],
            {"field": "devset", "index": 1, "reason": "missing_label"},
        ),
    ]


@pytest.mark.parametrize(("devset", "details"), _bad_devsets())
def test_bad_examples(worker: Worker, devset: Any, details: dict[str, Any]) -> None:
    error = worker.error(
        "evaluate",
        {"program_id": "cap", "devset": devset, "metric": {"builtin": "answer_exact_match"}},
    )
    assert error["kind"] == "InvalidArguments", error
    for key, value in details.items():
        assert error["details"][key] == value, error


def test_labels_are_converted_like_outputs(worker: Worker) -> None:
    signature = qa_signature(
        outputs=[{"name": "answer", "type": "str"}, {"name": "n", "type": "int"}]
    )
    worker.call("create_program", {"program_id": "typed", "signature": signature})
    handler = _host(lambda items: [1.0] * len(items))
    worker.call_handler = handler
    devset = [{"inputs": {"question": "q"}, "labels": {"n": "42", "answer": "a"}}]
    worker.call("evaluate", {"program_id": "typed", "devset": devset, "metric": {"callback": "m"}})
    assert handler.calls[0][0]["example"]["labels"] == {"n": 42, "answer": "a"}


@pytest.mark.parametrize(
    ("metric", "key"),
    [
        (None, None),
        ("exact_match", None),
        ({}, None),
        ({"builtin": "answer_exact_match", "callback": "m"}, None),
        ({"builtin": "bleu"}, None),
        ({"builtin": "exact_match"}, "field"),
        ({"builtin": "exact_match", "field": "question"}, "field"),
        ({"builtin": "f1", "field": "nope"}, "field"),
        ({"builtin": "answer_exact_match", "field": "answer"}, None),
        ({"builtin": "answer_passage_match"}, None),
        ({"callback": ""}, "callback"),
        ({"callback": "m", "batch": 0}, "batch"),
        ({"callback": "m", "batch": 1025}, "batch"),
        ({"callback": "m", "batch": True}, "batch"),
        ({"callback": "m", "feedback": "yes"}, "feedback"),
        ({"callback": "m", "other": 1}, None),
    ],
)
def test_bad_metrics(worker: Worker, metric: Any, key: str | None) -> None:
    error = worker.error("evaluate", {"program_id": "cap", "devset": DEVSET, "metric": metric})
    assert error["kind"] == "InvalidArguments", error
    assert error["details"]["field"] == "metric"
    if key is not None:
        assert error["details"]["key"] == key


def test_exact_match_needs_a_text_field(worker: Worker) -> None:
    signature = qa_signature(outputs=[{"name": "n", "type": "int"}])
    worker.call("create_program", {"program_id": "numeric", "signature": signature})
    devset = [{"inputs": {"question": "q"}, "labels": {"n": 1}}]
    error = worker.error(
        "evaluate",
        {
            "program_id": "numeric",
            "devset": devset,
            "metric": {"builtin": "exact_match", "field": "n"},
        },
    )
    assert error["details"]["reason"] == "not_text"


def test_answer_passage_match(worker: Worker) -> None:
    signature = qa_signature(outputs=[{"name": "context", "type": "list[str]"}])
    worker.call("create_program", {"program_id": "passages", "signature": signature})
    devset = [{"inputs": {"question": "q"}, "labels": {}}]
    error = worker.error(
        "evaluate",
        {"program_id": "passages", "devset": devset, "metric": {"builtin": "answer_passage_match"}},
    )
    assert error["details"]["reason"] == "missing_label"
    signature = qa_signature(
        outputs=[{"name": "context", "type": "list[str]"}, {"name": "answer", "type": "str"}]
    )
    worker.call("create_program", {"program_id": "passages2", "signature": signature})
    worker.call_handler = _host(lambda items: [1.0] * len(items))
    devset = [{"inputs": {"question": "q"}, "labels": {"answer": "unseen"}}]
    args = {"program_id": "passages2", "devset": devset}
    first = worker.call("evaluate", {**args, "metric": {"callback": "m"}})["results"][0]
    # The dummy LM's passages are "context[i]: <hash>": the hash is in every passage.
    word = first["outputs"]["context"][0].split()[-1]
    metric = {"builtin": "answer_passage_match"}
    assert worker.call("evaluate", {**args, "metric": metric})["score"] == 0.0
    devset[0]["labels"]["answer"] = word
    assert worker.call("evaluate", {**args, "metric": metric})["score"] == 100.0


def test_other_argument_errors(worker: Worker) -> None:
    metric = {"builtin": "answer_exact_match"}
    assert worker.error("evaluate", {"devset": DEVSET, "metric": metric})["details"] == {
        "field": "program_id"
    }
    error = worker.error("evaluate", {"program_id": "none", "devset": DEVSET, "metric": metric})
    assert error["kind"] == "ProgramNotFound"
    for threads in (0, 65, "2"):
        error = worker.error(
            "evaluate",
            {"program_id": "cap", "devset": DEVSET, "metric": metric, "num_threads": threads},
        )
        assert error["details"]["field"] == "num_threads"
    error = worker.error(
        "evaluate", {"program_id": "cap", "devset": DEVSET, "metric": metric, "lm_id": "unknown"}
    )
    assert error["kind"] == "LmNotConfigured"


def test_evaluate_a_carried_program_with_a_named_lm(worker: Worker) -> None:
    worker.call("configure_lm", {"model": "dummy", "lm_id": "plain-dummy"})
    program = {"program_id": "carried", "signature": SIGNATURE, "demos": DEMOS}
    result = worker.call(
        "evaluate",
        {
            "program_id": "carried",
            "program": program,
            "devset": DEVSET,
            "metric": {"builtin": "answer_exact_match"},
            "lm_id": "plain-dummy",
        },
    )
    assert result["score"] == 0.0  # without follow_examples the demos do not help


def test_the_shipped_dataset() -> None:
    assert (len(TRAINSET), len(DEVSET)) == (20, 10)
    train = {ex["inputs"]["question"] for ex in TRAINSET}
    assert all(ex["inputs"]["question"] in train for ex in DEVSET)
