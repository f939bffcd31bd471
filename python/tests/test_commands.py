"""The DSPy-backed commands, against one real worker per module (DSPy imported at start)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest

from .conftest import SpawnFn, Worker, qa_signature

TYPED_SIGNATURE: dict[str, Any] = {
    "name": "Typed",
    "instructions": "Produce typed values.",
    "inputs": [
        {"name": "question", "type": "str"},
        {"name": "k", "type": "int"},
        {"name": "weight", "type": "float"},
        {"name": "hint", "type": "optional[str]", "optional": True},
    ],
    "outputs": [
        {"name": "answer", "type": "str"},
        {"name": "count", "type": "int"},
        {"name": "score", "type": "float"},
        {"name": "flag", "type": "bool"},
        {"name": "tags", "type": "list[str]"},
        {"name": "table", "type": "dict[str, list[int]]"},
        {"name": "label", "type": "literal[red|green|blue]"},
        {"name": "maybe", "type": "optional[int]"},
    ],
}
TYPED_INPUTS = {"question": "why?", "k": 3, "weight": 0.5}


def expected_hash(signature: Any, module: Any, demos: Any) -> str:
    text = json.dumps(
        {"signature": signature, "module": module, "demos": demos},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def worker(dspy_worker: Worker) -> Worker:
    assert dspy_worker.call("configure_lm", {"model": "dummy"}) == {
        "status": "configured",
        "model": "dummy",
    }
    return dspy_worker


def create(worker: Worker, program_id: str, **definition: Any) -> dict[str, Any]:
    definition.setdefault("signature", qa_signature())
    definition.setdefault("module", "predict")
    return worker.call("create_program", {"program_id": program_id, **definition})


def test_ready_reports_dspy(worker: Worker) -> None:
    assert worker.ready["dspy"] == "3.4.1"
    assert worker.call("get_stats")["dspy_loaded"] is True


def test_configure_lm_real_model_is_constructed_not_called(worker: Worker) -> None:
    result = worker.call(
        "configure_lm",
        {"model": "openai/gpt-4o-mini", "api_key": "sk-test", "temperature": 0.2, "max_tokens": 50},
    )
    assert result == {"status": "configured", "model": "openai/gpt-4o-mini"}
    assert worker.call("get_stats")["lm"] == "openai/gpt-4o-mini"
    worker.call("configure_lm", {"model": "dummy"})


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"model": ""},
        {"model": "openai/"},
        {"model": "openai/x", "temperature": "warm"},
        {"model": "openai/x", "max_tokens": -1},
        {"model": "openai/x", "api_base": 7},
    ],
)
def test_configure_lm_bad_config_is_an_error(worker: Worker, args: dict[str, Any]) -> None:
    error = worker.error("configure_lm", args)
    assert error["kind"] == "InvalidArguments"
    assert worker.call("get_stats")["lm"] == "dummy"  # the previous LM is kept


def test_create_program_result_and_hash(worker: Worker) -> None:
    signature = qa_signature()
    demos = [{"question": "2+2?", "answer": "4"}]
    result = create(worker, "hash-1", signature=signature, module="predict", demos=demos)
    assert result["program_id"] == "hash-1"
    assert result["inputs"] == ["question"]
    assert result["outputs"] == ["answer"]
    assert result["hash"] == expected_hash(signature, "predict", demos)
    again = create(worker, "hash-1", signature=signature, module="predict", demos=demos)
    assert again["hash"] == result["hash"]
    assert again["replaced"] is True
    no_demos = create(worker, "hash-2", signature=signature)
    assert no_demos["hash"] == expected_hash(signature, "predict", [])


def test_create_program_chain_of_thought_adds_reasoning(worker: Worker) -> None:
    result = create(worker, "cot-1", module="chain_of_thought")
    assert result["outputs"] == ["reasoning", "answer"]
    assert result["module"] == "chain_of_thought"
    assert create(worker, "cot-2", module="ChainOfThought")["module"] == "chain_of_thought"


@pytest.mark.parametrize(
    "signature",
    [
        qa_signature(outputs=[]),
        qa_signature(inputs=[{"name": "def", "type": "str"}]),
        qa_signature(inputs=[{"name": "question", "type": "list[str"}]),
        qa_signature(outputs=[{"name": "question", "type": "str"}]),
        qa_signature(outputs=[{"name": "answer", "type": "set[str]"}]),
        qa_signature(outputs=[{"name": "instructions", "type": "str"}]),
        qa_signature(inputs=[{"name": "x y", "type": "str"}]),
        "question -> answer",
    ],
)
def test_create_program_signature_errors(worker: Worker, signature: Any) -> None:
    error = worker.error("create_program", {"program_id": "bad", "signature": signature})
    assert error["kind"] == "SignatureError"
    assert worker.error("get_program_info", {"program_id": "bad"})["kind"] == "ProgramNotFound"


def test_chain_of_thought_reserves_reasoning(worker: Worker) -> None:
    signature = qa_signature(outputs=[{"name": "reasoning", "type": "str"}])
    error = worker.error(
        "create_program",
        {"program_id": "bad", "signature": signature, "module": "chain_of_thought"},
    )
    assert error["kind"] == "SignatureError"


@pytest.mark.parametrize(
    "args",
    [
        {"signature": qa_signature()},
        {"program_id": 5, "signature": qa_signature()},
        {"program_id": "x"},
        {"program_id": "x", "signature": qa_signature(), "module": "react_agent"},
        {"program_id": "x", "signature": qa_signature(), "demos": {"q": 1}},
        {"program_id": "x", "signature": qa_signature(), "demos": ["q"]},
        {"program_id": "x", "signature": qa_signature(), "demos": [{"nope": 1}]},
    ],
)
def test_create_program_invalid_arguments(worker: Worker, args: dict[str, Any]) -> None:
    assert worker.error("create_program", args)["kind"] == "InvalidArguments"


def test_list_info_delete(worker: Worker) -> None:
    create(worker, "life-1", demos=[{"question": "a", "answer": "b"}])
    listed = worker.call("list_programs")
    ids = [p["program_id"] for p in listed["programs"]]
    assert "life-1" in ids
    assert ids == sorted(ids)
    assert listed["count"] == len(ids)
    info = worker.call("get_program_info", {"program_id": "life-1"})
    assert info["module"] == "predict"
    assert info["demos"] == 1
    assert info["inputs"] == ["question"]
    assert info["fields"]["inputs"][0] == {
        "name": "question",
        "type": "str",
        "description": "a question",
        "optional": False,
    }
    assert info["definition"]["signature"] == qa_signature()
    assert worker.call("delete_program", {"program_id": "life-1"}) == {
        "program_id": "life-1",
        "deleted": True,
    }
    assert worker.call("delete_program", {"program_id": "life-1"})["deleted"] is False
    assert worker.error("get_program_info", {"program_id": "life-1"})["kind"] == "ProgramNotFound"
    assert worker.error("delete_program", {})["kind"] == "InvalidArguments"


@pytest.mark.parametrize("module", ["predict", "chain_of_thought"])
def test_execute_typed_outputs_deterministic(worker: Worker, module: str) -> None:
    program_id = f"typed-{module}"
    create(worker, program_id, signature=TYPED_SIGNATURE, module=module)
    args = {"program_id": program_id, "inputs": TYPED_INPUTS}
    first = worker.call("execute_program", args)
    second = worker.call("execute_program", args)
    assert first["program_id"] == program_id
    assert first["duration_ms"] >= 0
    assert first["model"] == "dummy"
    outputs = first["outputs"]
    assert outputs == second["outputs"]
    expected_keys = ["answer", "count", "score", "flag", "tags", "table", "label", "maybe"]
    if module == "chain_of_thought":
        expected_keys.insert(0, "reasoning")
        assert outputs["reasoning"].startswith("reasoning: ")
    assert list(outputs) == expected_keys
    short = outputs["answer"].removeprefix("answer: ")
    assert len(short) == 8
    assert int(short, 16) >= 0
    assert isinstance(outputs["count"], int)
    assert not isinstance(outputs["count"], bool)
    assert isinstance(outputs["score"], float)
    assert isinstance(outputs["flag"], bool)
    assert all(isinstance(t, str) for t in outputs["tags"])
    assert all(all(isinstance(i, int) for i in v) for v in outputs["table"].values())
    assert outputs["label"] in ("red", "green", "blue")
    assert isinstance(outputs["maybe"], int)
    other = worker.call(
        "execute_program", {"program_id": program_id, "inputs": {**TYPED_INPUTS, "k": 4}}
    )
    assert other["outputs"]["answer"] != outputs["answer"]


def test_execute_accepts_int_for_float_and_optional_inputs(worker: Worker) -> None:
    create(worker, "inputs-ok", signature=TYPED_SIGNATURE)
    result = worker.call(
        "execute_program",
        {"program_id": "inputs-ok", "inputs": {"question": "q", "k": 1, "weight": 2}},
    )
    assert set(result["outputs"]) >= {"answer", "count"}
    with_hint = worker.call(
        "execute_program",
        {"program_id": "inputs-ok", "inputs": {"question": "q", "k": 1, "weight": 2, "hint": None}},
    )
    assert with_hint["outputs"]["answer"].startswith("answer: ")


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"k": 1, "weight": 1.0}, "question"),
        ({**TYPED_INPUTS, "extra": 1}, "extra"),
        ({**TYPED_INPUTS, "k": True}, "k"),
        ({**TYPED_INPUTS, "k": "3"}, "k"),
        ({**TYPED_INPUTS, "k": 2.5}, "k"),
        ({**TYPED_INPUTS, "weight": "heavy"}, "weight"),
        ({**TYPED_INPUTS, "question": None}, "question"),
        ({**TYPED_INPUTS, "hint": 5}, "hint"),
    ],
)
def test_execute_input_errors_name_the_field(
    worker: Worker, inputs: dict[str, Any], field: str
) -> None:
    create(worker, "inputs-bad", signature=TYPED_SIGNATURE)
    error = worker.error("execute_program", {"program_id": "inputs-bad", "inputs": inputs})
    assert error["kind"] == "InvalidArguments"
    assert error["details"]["field"] == field
    assert field in error["message"]


def test_execute_inputs_must_be_a_map(worker: Worker) -> None:
    create(worker, "inputs-map")
    error = worker.error("execute_program", {"program_id": "inputs-map", "inputs": ["q"]})
    assert error["kind"] == "InvalidArguments"


def test_execute_unknown_program(worker: Worker) -> None:
    error = worker.error("execute_program", {"program_id": "ghost", "inputs": {}})
    assert error["kind"] == "ProgramNotFound"
    assert error["details"] == {"program_id": "ghost"}


def test_execute_with_definition_creates_and_replaces(worker: Worker) -> None:
    definition = {"program_id": "carried", "signature": qa_signature(), "module": "predict"}
    args = {"program_id": "carried", "inputs": {"question": "hi"}, "program": definition}
    first = worker.call("execute_program", args)
    assert list(first["outputs"]) == ["answer"]
    info = worker.call("get_program_info", {"program_id": "carried"})
    assert info["hash"] == expected_hash(qa_signature(), "predict", [])
    created_at = info["created_at"]
    worker.call("execute_program", args)  # same hash: kept as is
    assert worker.call("get_program_info", {"program_id": "carried"})["created_at"] == created_at
    changed = {**definition, "module": "chain_of_thought"}
    result = worker.call("execute_program", {**args, "program": changed})
    assert list(result["outputs"]) == ["reasoning", "answer"]
    info = worker.call("get_program_info", {"program_id": "carried"})
    assert info["hash"] == expected_hash(qa_signature(), "chain_of_thought", [])
    mismatch = {**args, "program": {**definition, "program_id": "other"}}
    assert worker.error("execute_program", mismatch)["kind"] == "InvalidArguments"
    broken = {**args, "program": {**definition, "signature": qa_signature(outputs=[])}}
    assert worker.error("execute_program", broken)["kind"] == "SignatureError"


def test_execute_per_request_lm_override(worker: Worker) -> None:
    create(worker, "override")
    base = worker.call("execute_program", {"program_id": "override", "inputs": {"question": "x"}})
    seeded = worker.call(
        "execute_program",
        {
            "program_id": "override",
            "inputs": {"question": "x"},
            "lm": {"model": "dummy", "seed": 7},
        },
    )
    assert seeded["outputs"]["answer"] != base["outputs"]["answer"]
    bad = worker.error(
        "execute_program",
        {"program_id": "override", "inputs": {"question": "x"}, "lm": {"model": 3}},
    )
    assert bad["kind"] == "InvalidArguments"


@pytest.mark.parametrize("field", ["count", "answer"])
def test_unusable_lm_output_is_lm_error_naming_the_field(worker: Worker, field: str) -> None:
    create(worker, "lm-error", signature=TYPED_SIGNATURE)
    error = worker.error(
        "execute_program",
        {
            "program_id": "lm-error",
            "inputs": TYPED_INPUTS,
            "lm": {"model": "dummy", "fail_fields": [field]},
        },
    )
    assert error["kind"] == "LmError"
    assert error["details"]["field"] == field
    assert repr(field) in error["message"]


def test_execute_with_demos(worker: Worker) -> None:
    demos = [
        {"question": "2+2?", "answer": "4"},
        {"question": "capital of France?", "answer": "Paris"},
    ]
    create(worker, "demos", demos=demos, module="chain_of_thought")
    result = worker.call("execute_program", {"program_id": "demos", "inputs": {"question": "1+1?"}})
    assert result["outputs"]["answer"].startswith("answer: ")


def test_concurrent_executions_answered_by_id(worker: Worker) -> None:
    create(worker, "slow")
    lm = {"model": "dummy", "latency_ms": 400}
    started = time.monotonic()
    ids = {
        worker.submit(
            "execute_program", {"program_id": "slow", "inputs": {"question": f"q{i}"}, "lm": lm}
        ): i
        for i in range(6)
    }
    answers = {}
    for request_id, i in ids.items():
        reply = worker.reply(request_id)
        assert reply["ok"] is True, reply
        answers[i] = reply["result"]["outputs"]["answer"]
    assert time.monotonic() - started < 2.0  # six 400 ms calls overlapped (2.4 s in sequence)
    assert len(set(answers.values())) == 6
    for i, answer in answers.items():
        single = worker.call(
            "execute_program", {"program_id": "slow", "inputs": {"question": f"q{i}"}}
        )
        assert single["outputs"]["answer"] == answer


def test_stats_count_executions(worker: Worker) -> None:
    create(worker, "counted")
    before = worker.call("get_stats")
    worker.call("execute_program", {"program_id": "counted", "inputs": {"question": "x"}})
    after = worker.call("get_stats")
    assert after["executions"] == before["executions"] + 1
    assert after["programs"] >= 1
    info = worker.call("get_program_info", {"program_id": "counted"})
    assert info["executions"] == 1


def test_lm_not_configured_and_reset(spawn: SpawnFn) -> None:
    fresh = spawn()
    create(fresh, "p")
    error = fresh.error("execute_program", {"program_id": "p", "inputs": {"question": "q"}})
    assert error["kind"] == "LmNotConfigured"
    result = fresh.call(
        "execute_program",
        {"program_id": "p", "inputs": {"question": "q"}, "lm": {"model": "dummy"}},
    )
    assert result["outputs"]["answer"].startswith("answer: ")
    assert fresh.call("reset_state") == {"status": "reset", "programs_cleared": 1}
    assert fresh.call("list_programs") == {"programs": [], "count": 0}
    assert fresh.call("get_stats")["requests"]["total"] == 2  # list_programs, get_stats


def test_python_modules_need_a_project_dir(worker: Worker) -> None:
    error = worker.error(
        "create_program",
        {
            "program_id": "py",
            "signature": qa_signature(),
            "module": "python",
            "module_args": {"path": "userpkg.good:Echo"},
        },
    )
    assert error["kind"] == "InvalidArguments"
    assert error["details"] == {"field": "module", "module": "python", "reason": "no_project_dir"}
    result = worker.call("execute_program", {"program_id": "hash-1", "inputs": {"question": "q"}})
    assert result["outputs"]["answer"].startswith("answer: ")
