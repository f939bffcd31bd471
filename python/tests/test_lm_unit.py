"""Unit tests of LM configuration and the offline dummy LM running under real DSPy."""

from __future__ import annotations

from typing import Any

import pytest

from dspex_bridge.errors import InvalidArguments
from dspex_bridge.lm import DummyEngine, LmCache, build_lm, parse_lm_config
from dspex_bridge.signatures import build_dspy_signature, parse_signature

TYPED = {
    "name": "Typed",
    "instructions": "Produce typed values.",
    "inputs": [{"name": "question", "type": "str"}, {"name": "k", "type": "int"}],
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


def _run(module: str, inputs: dict[str, Any], **config: Any) -> Any:
    import dspy

    lm = build_lm(parse_lm_config({"model": "dummy", **config})).lm
    signature = build_dspy_signature(parse_signature(TYPED))
    program = dspy.ChainOfThought(signature) if module == "cot" else dspy.Predict(signature)
    with dspy.context(lm=lm):
        return program(**inputs)


def _check_types(prediction: Any) -> None:
    assert isinstance(prediction.answer, str)
    assert prediction.answer.startswith("answer: ")
    assert isinstance(prediction.count, int)
    assert not isinstance(prediction.count, bool)
    assert isinstance(prediction.score, float)
    assert isinstance(prediction.flag, bool)
    assert isinstance(prediction.tags, list)
    assert all(isinstance(t, str) for t in prediction.tags)
    assert isinstance(prediction.table, dict)
    assert all(
        isinstance(v, list) and all(isinstance(i, int) for i in v)
        for v in prediction.table.values()
    )
    assert prediction.label in ("red", "green", "blue")
    assert isinstance(prediction.maybe, int)


@pytest.mark.parametrize("module", ["predict", "cot"])
def test_dummy_typed_outputs_and_determinism(module: str) -> None:
    first = _run(module, {"question": "why?", "k": 3})
    second = _run(module, {"question": "why?", "k": 3})
    other = _run(module, {"question": "why not?", "k": 3})
    _check_types(first)
    assert first.toDict() == second.toDict()
    assert first.answer != other.answer
    if module == "cot":
        assert first.reasoning.startswith("reasoning: ")
        assert "question, k" in first.reasoning
    else:
        assert "reasoning" not in first.toDict()


def test_dummy_hash_covers_every_input() -> None:
    a = _run("predict", {"question": "q", "k": 1})
    b = _run("predict", {"question": "q", "k": 2})
    assert a.answer != b.answer


def test_dummy_seed_changes_answers() -> None:
    a = _run("predict", {"question": "q", "k": 1})
    b = _run("predict", {"question": "q", "k": 1}, seed="other")
    assert a.answer != b.answer


def test_dummy_under_json_adapter() -> None:
    import dspy

    lm = build_lm(parse_lm_config({"model": "dummy"})).lm
    signature = build_dspy_signature(parse_signature(TYPED))
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        prediction = dspy.Predict(signature)(question="why?", k=3)
    _check_types(prediction)
    chat = _run("predict", {"question": "why?", "k": 3})
    assert prediction.toDict() == chat.toDict()


def test_dummy_fail_fields_break_parsing() -> None:
    from dspy.utils.exceptions import AdapterParseError

    with pytest.raises(AdapterParseError):
        _run("predict", {"question": "q", "k": 1}, fail_fields=["count"])


def test_dummy_engine_answer_format() -> None:
    engine = DummyEngine()
    system = (
        "Your input fields are:\n1. `q` (str):\nYour output fields are:\n1. `a` (str): \n"
        "2. `n` (int): \nAll interactions will be structured in the following way\n\n"
        "[[ ## q ## ]]\n{q}\n\n[[ ## a ## ]]\n{a}\n\n[[ ## n ## ]]\n"
        "{n}        # note: the value you produce must be a single int value\n"
    )
    text = engine.answer(system, "[[ ## q ## ]]\nhello\n\nRespond with ...")
    assert text == engine.answer(system, "[[ ## q ## ]]\nhello\n\nRespond with ...")
    lines = text.split("\n")
    assert lines[0] == "[[ ## a ## ]]"
    assert lines[1].startswith("a: ")
    assert len(lines[1]) == len("a: ") + 8
    assert lines[3] == "[[ ## n ## ]]"
    assert lines[4].isdigit()
    assert text.endswith("[[ ## completed ## ]]")


def test_dummy_latency_is_simulated() -> None:
    import time

    started = time.monotonic()
    _run("predict", {"question": "q", "k": 1}, latency_ms=120)
    assert time.monotonic() - started >= 0.12


def test_lm_config_validation() -> None:
    config = parse_lm_config(
        {"model": "openai/gpt-4o-mini", "api_key": "sk-test", "temperature": 0.3, "max_tokens": 64}
    )
    assert config.options == {"api_key": "sk-test", "temperature": 0.3, "max_tokens": 64}
    handle = build_lm(config)
    assert handle.lm.model == "openai/gpt-4o-mini"
    assert handle.lm.kwargs["temperature"] == 0.3
    passthrough = parse_lm_config({"model": "openai/x", "top_p": 0.5})
    assert passthrough.options == {"top_p": 0.5}


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"model": ""},
        {"model": 5},
        {"model": "openai/x", "temperature": "hot"},
        {"model": "openai/x", "temperature": -1},
        {"model": "openai/x", "temperature": True},
        {"model": "openai/x", "max_tokens": 0},
        {"model": "openai/x", "max_tokens": 1.5},
        {"model": "openai/x", "api_key": 123},
        {"model": "openai/x", "latency_ms": 5},
        {"model": "dummy", "latency_ms": -5},
        {"model": "dummy", "fail_fields": "answer"},
        {"model": "openai/x", "cache": "yes"},
        {"model": "openai/x", "model_type": "vision"},
        {"model": "openai/x", "weird": object()},
        ["dummy"],
    ],
)
def test_lm_config_rejects(raw: Any) -> None:
    with pytest.raises(InvalidArguments):
        parse_lm_config(raw)


def test_dspy_refusals_become_invalid_arguments() -> None:
    with pytest.raises(InvalidArguments, match="provider prefix"):
        build_lm(parse_lm_config({"model": "openai/"}))


def test_lm_cache_reuses_handles() -> None:
    cache = LmCache(size=2)
    a = cache.get(parse_lm_config({"model": "dummy"}))
    assert cache.get(parse_lm_config({"model": "dummy"})) is a
    cache.get(parse_lm_config({"model": "dummy", "seed": 1}))
    cache.get(parse_lm_config({"model": "dummy", "seed": 2}))
    assert cache.get(parse_lm_config({"model": "dummy"})) is not a
