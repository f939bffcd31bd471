"""Program state: ``create_program`` with ``state`` (DSPy's ``load_state``), the program hash
with a state, ``get_program_state``, bad states, and files written by plain DSPy's ``save``."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dspex_bridge.lm import build_lm, parse_lm_config
from dspex_bridge.programs import canonical_json, definition_hash, program_hash
from dspex_bridge.signatures import build_dspy_signature, parse_signature

from .conftest import Worker, qa_signature

DEMOS = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "What is the capital of Japan?", "answer": "Tokyo"},
]


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    worker = Worker({"DSPEX_TEST_FAULTS": "1"}, ["--worker-id", "state"], lazy=False)
    try:
        worker.ready = worker.handshake(60.0)
        worker.call("configure_lm", {"model": "dummy", "follow_examples": True})
        yield worker
    finally:
        worker.kill()


@pytest.fixture(scope="module")
def lm() -> Any:
    return build_lm(parse_lm_config({"model": "dummy", "follow_examples": True})).lm


def _program(module: str = "predict") -> Any:
    import dspy

    signature = build_dspy_signature(parse_signature(qa_signature()))
    return dspy.Predict(signature) if module == "predict" else dspy.ChainOfThought(signature)


def _state_of(module: str, demos: list[dict[str, Any]] = DEMOS) -> dict[str, Any]:
    """DSPy's own dump_state of the program with ``demos`` on its predictor."""
    import dspy

    program = _program(module)
    predictor = program if module == "predict" else program.predict
    predictor.demos = [dspy.Example(**d).with_inputs("question") for d in demos]
    return json.loads(json.dumps(program.dump_state()))


def test_hash_rule_includes_state_only_when_present() -> None:
    signature = qa_signature()
    state = {"traces": [], "train": [], "demos": [], "lm": None, "x": 0.5}
    plain = program_hash(signature, "predict", [])
    assert program_hash(signature, "predict", [], None, None) == plain
    with_state = program_hash(signature, "predict", [], {}, state)
    expected = hashlib.sha256(
        canonical_json(
            {"signature": signature, "module": "predict", "demos": [], "state": state}
        ).encode()
    ).hexdigest()
    assert with_state == expected != plain
    assert definition_hash({"signature": signature, "state": None}) == plain
    assert definition_hash({"signature": signature, "state": state}) == with_state


@pytest.mark.parametrize("module", ["predict", "chain_of_thought"])
def test_create_with_state_round_trips(worker: Worker, module: str) -> None:
    state = _state_of(module)
    definition = {"program_id": f"st-{module}", "signature": qa_signature(), "module": module}
    plain = worker.call("create_program", definition)
    loaded = worker.call("create_program", {**definition, "state": state})
    assert loaded["hash"] != plain["hash"]
    assert loaded["hash"] == definition_hash({**definition, "state": state})
    info = worker.call("get_program_info", {"program_id": definition["program_id"]})
    assert info["definition"]["state"] == state
    assert info["state"] is True
    got = worker.call("get_program_state", {"program_id": definition["program_id"]})
    assert got["program_id"] == definition["program_id"]
    assert got["state"] == state
    assert set(got["dependency_versions"]) == {"python", "dspy", "cloudpickle"}
    # The demos from the state are used: the follow_examples LM answers from them.
    out = worker.call(
        "execute_program",
        {"program_id": definition["program_id"], "inputs": {"question": DEMOS[1]["question"]}},
    )
    assert out["outputs"]["answer"] == "Tokyo"


def test_state_wins_over_demos(worker: Worker) -> None:
    state = _state_of("predict", DEMOS[1:])
    definition = {
        "program_id": "st-both",
        "signature": qa_signature(),
        "demos": [DEMOS[0]],
        "state": state,
    }
    worker.call("create_program", definition)
    got = worker.call("get_program_state", {"program_id": "st-both"})
    assert got["state"]["demos"] == DEMOS[1:]
    out = worker.call(
        "execute_program", {"program_id": "st-both", "inputs": {"question": DEMOS[0]["question"]}}
    )
    assert out["outputs"]["answer"] != "Paris"


def test_get_program_state_with_carried_program_and_unknown(worker: Worker) -> None:
    state = _state_of("predict")
    definition = {"program_id": "st-carried", "signature": qa_signature(), "state": state}
    got = worker.call("get_program_state", {"program_id": "st-carried", "program": definition})
    assert got["state"] == state
    error = worker.error("get_program_state", {"program_id": "st-nowhere"})
    assert error["kind"] == "ProgramNotFound"


def _bad_states() -> list[tuple[str, str, Any]]:
    predict = _state_of("predict")
    cot = _state_of("chain_of_thought")
    fewer_fields = copy.deepcopy(predict)
    fewer_fields["signature"]["fields"] = fewer_fields["signature"]["fields"][:1]
    with_lm = copy.deepcopy(predict)
    with_lm["lm"] = {"model": "openai/gpt-4o-mini"}
    bad_demo = copy.deepcopy(predict)
    bad_demo["demos"] = ["not a map"]
    no_signature = {k: v for k, v in predict.items() if k != "signature"}
    return [
        ("predict", "malformed", ["not", "a", "map"]),
        ("predict", "metadata", {**predict, "metadata": {"dependency_versions": {}}}),
        ("predict", "signature_mismatch", fewer_fields),
        ("predict", "lm_in_state", with_lm),
        ("predict", "malformed", bad_demo),
        ("predict", "malformed", no_signature),
        ("chain_of_thought", "predictors", {"self": predict}),
        ("chain_of_thought", "predictors", {**cot, "extra.predict": cot["predict"]}),
        ("chain_of_thought", "malformed", {"predict": "nope"}),
    ]


@pytest.mark.parametrize(("module", "reason", "state"), _bad_states())
def test_bad_state_is_refused_and_changes_nothing(
    worker: Worker, module: str, reason: str, state: Any
) -> None:
    program_id = f"st-bad-{module}"
    definition = {"program_id": program_id, "signature": qa_signature(), "module": module}
    before = worker.call("create_program", definition)["hash"]
    error = worker.error("create_program", {**definition, "state": state})
    assert error["kind"] == "InvalidArguments", error
    assert error["details"]["field"] == "state"
    assert error["details"]["reason"] == reason, error
    assert error["message"].startswith("state")
    info = worker.call("get_program_info", {"program_id": program_id})
    assert info["hash"] == before
    # The same bad state carried by execute_program is refused too.
    error = worker.error(
        "execute_program",
        {
            "program_id": program_id,
            "program": {**definition, "state": state},
            "inputs": {"question": "q"},
        },
    )
    assert error["details"]["field"] == "state"


def test_predictor_names_are_reported(worker: Worker) -> None:
    definition = {"program_id": "st-names", "signature": qa_signature(), "module": "cot"}
    error = worker.error("create_program", {**definition, "state": {"self": {}}})
    assert error["details"]["expected"] == ["predict"]
    assert error["details"]["unknown"] == ["self"]
    assert error["details"]["missing"] == ["predict"]


@pytest.mark.parametrize("module", ["predict", "chain_of_thought"])
def test_a_file_saved_by_plain_dspy_loads_and_predicts_the_same(
    worker: Worker, lm: Any, module: str, tmp_path: Path
) -> None:
    import dspy

    program = _program(module)
    predictor = program if module == "predict" else program.predict
    predictor.demos = [dspy.Example(**d).with_inputs("question") for d in DEMOS]
    path = tmp_path / "program.json"
    program.save(str(path))
    saved = json.loads(path.read_text())
    assert "metadata" in saved
    state = {k: v for k, v in saved.items() if k != "metadata"}
    program_id = f"st-file-{module}"
    worker.call(
        "create_program",
        {"program_id": program_id, "signature": qa_signature(), "module": module, "state": state},
    )
    for demo in [*DEMOS, {"question": "What is the capital of Peru?"}]:
        with dspy.context(lm=lm):
            direct = program(question=demo["question"])
        outputs = worker.call(
            "execute_program", {"program_id": program_id, "inputs": {"question": demo["question"]}}
        )["outputs"]
        for name, value in outputs.items():
            assert direct[name] == value, name
