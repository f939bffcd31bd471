"""Differential tests: the same program run directly in DSPy (in the test process) and
through the worker, on the same dummy LM, must give the same outputs field by field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from dspex_bridge.lm import build_lm, parse_lm_config
from dspex_bridge.signatures import build_dspy_signature, parse_signature

from .conftest import Worker, qa_signature
from .test_commands import TYPED_INPUTS, TYPED_SIGNATURE

TOOL = {
    "name": "lookup",
    "description": "Look up the weather of a city.",
    "args": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    worker = Worker({"DSPEX_TEST_FAULTS": "1"}, ["--worker-id", "differential"], lazy=False)
    try:
        worker.ready = worker.handshake(60.0)
        worker.call("configure_lm", {"model": "dummy"})
        yield worker
    finally:
        worker.kill()


@pytest.fixture(scope="module")
def lm() -> Any:
    return build_lm(parse_lm_config({"model": "dummy"})).lm


def _signature(definition: dict[str, Any]) -> Any:
    return build_dspy_signature(parse_signature(definition))


def _through_worker(
    worker: Worker,
    program_id: str,
    signature: dict[str, Any],
    module: str,
    inputs: Any,
    **extra: Any,
) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "program_id": program_id,
        "signature": signature,
        "module": module,
    }
    definition.update(extra)
    worker.call("create_program", definition)
    return worker.call("execute_program", {"program_id": program_id, "inputs": inputs})["outputs"]


def _same(direct: Any, outputs: dict[str, Any]) -> None:
    for name, value in outputs.items():
        assert direct[name] == value, name
    assert set(direct.keys()) >= set(outputs)


@pytest.mark.parametrize("module", ["predict", "chain_of_thought"])
def test_predict_and_chain_of_thought(worker: Worker, lm: Any, module: str) -> None:
    import dspy

    signature = _signature(TYPED_SIGNATURE)
    program = dspy.Predict(signature) if module == "predict" else dspy.ChainOfThought(signature)
    with dspy.context(lm=lm):
        direct = program(**TYPED_INPUTS)
    outputs = _through_worker(worker, f"diff-{module}", TYPED_SIGNATURE, module, TYPED_INPUTS)
    assert next(iter(outputs)) == ("reasoning" if module == "chain_of_thought" else "answer")
    _same(direct, outputs)


def _weather(**kwargs: Any) -> dict[str, Any]:
    return {"temp": 21, "city": kwargs["city"], "days": kwargs.get("days")}


def test_react_python_tool_vs_host_callback(worker: Worker, lm: Any) -> None:
    import dspy

    tool = dspy.Tool(
        _weather, name=TOOL["name"], desc=TOOL["description"], args=TOOL["args"]["properties"]
    )
    react = dspy.ReAct(_signature(qa_signature()), tools=[tool], max_iters=5)
    inputs = {"question": "weather in Lyon?"}
    with dspy.context(lm=lm):
        direct = react(**inputs)
    worker.call_handler = lambda f: {"ok": True, "result": _weather(**f["args"])}
    try:
        outputs = _through_worker(
            worker,
            "diff-react",
            qa_signature(),
            "react",
            inputs,
            module_args={"tools": [TOOL], "max_iters": 5},
        )
    finally:
        worker.call_handler = None
    assert json.loads(outputs.pop("trajectory")) == direct.trajectory
    assert direct.trajectory["tool_name_0"] == "lookup"
    _same(direct, outputs)


def test_best_of_n_python_reward_vs_host_callback(worker: Worker, lm: Any) -> None:
    import dspy

    def score(answer: str) -> float:
        return (sum(map(ord, answer)) % 10) / 10

    signature = _signature(TYPED_SIGNATURE)
    best = dspy.BestOfN(
        dspy.ChainOfThought(signature),
        N=3,
        reward_fn=lambda args, pred: score(pred.answer),
        threshold=0.95,
    )
    with dspy.context(lm=lm):
        direct = best(**TYPED_INPUTS)
    worker.call_handler = lambda f: {"ok": True, "result": score(f["args"]["outputs"]["answer"])}
    try:
        outputs = _through_worker(
            worker,
            "diff-bon",
            TYPED_SIGNATURE,
            "best_of_n",
            TYPED_INPUTS,
            module_args={"n": 3, "threshold": 0.95, "reward": "score", "base": "chain_of_thought"},
        )
    finally:
        worker.call_handler = None
    _same(direct, outputs)
