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


def test_count_tokens_and_stream_pieces() -> None:
    from dspex_bridge.lm import count_tokens, stream_pieces

    assert count_tokens("Hello, world! 42 times") == 6
    assert count_tokens("") == 0
    text = "[[ ## answer ## ]]\nanswer: 1a2b3c4d\n\n[[ ## completed ## ]]\n"
    pieces = stream_pieces(text)
    assert "".join(pieces) == text
    assert len(pieces) > 3
    assert stream_pieces("") == []
    assert stream_pieces("  ") == ["  "]


def test_dummy_engine_reports_usage_and_streams_in_pieces() -> None:
    from dspy.lm15 import Message, Request

    from dspex_bridge.lm import count_tokens

    engine = DummyEngine()
    system = "Your input fields are:\n1. `q` (str):\nYour output fields are:\n1. `a` (str):\n"
    request = Request(model="dummy", system=system, messages=(Message.user("[[ ## q ## ]]\nhi"),))
    response = engine.complete(request)
    text = response.message.parts[0].text
    assert response.usage.input_tokens == count_tokens(system) + count_tokens("[[ ## q ## ]]\nhi")
    assert response.usage.output_tokens == count_tokens(text)
    assert response.usage.total_tokens == response.usage.input_tokens + count_tokens(text)
    events = list(engine.stream(request))
    deltas = [e.delta.text for e in events if e.type == "delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == text
    assert events[0].type == "start"
    assert events[-1].type == "end"
    assert events[-1].usage == response.usage


REACT_SYSTEM = (
    "Your input fields are:\n1. `question` (str):\n2. `trajectory` (str):\n"
    "Your output fields are:\n1. `next_thought` (str):\n"
    "2. `next_tool_name` (Literal['lookup', 'finish']):\n3. `next_tool_args` (dict[str, Any]):\n"
    "All interactions will be structured in the following way\n\n"
    "[[ ## next_tool_name ## ]]\n{next_tool_name}        # note: the value you produce must "
    "exactly match (no extra characters) one of: lookup; finish\n\n"
    "[[ ## next_tool_args ## ]]\n{next_tool_args}        # note: the value you produce must "
    'adhere to the JSON schema: {"type": "object", "additionalProperties": true}\n\n'
    "        (1) lookup, whose description is <desc>Find it.</desc>. It takes arguments "
    "{'city': {'type': 'string'}, 'n': {'type': 'integer'}, 'hot': {'type': 'boolean'}}.\n"
    "        (2) finish, whose description is <desc>Done.</desc>. It takes arguments {}.\n"
)


def _sections(text: str) -> dict[str, str]:
    import re

    parts = re.split(r"\[\[ ## (\w+) ## \]\]\n?", text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def test_dummy_react_calls_the_first_tool_then_finishes() -> None:
    import json

    engine = DummyEngine()
    first = _sections(
        engine.answer(REACT_SYSTEM, "[[ ## question ## ]]\nq\n\n[[ ## trajectory ## ]]\n")
    )
    assert first["next_tool_name"] == "lookup"
    args = json.loads(first["next_tool_args"])
    assert set(args) == {"city", "n", "hot"}
    assert isinstance(args["city"], str)
    assert isinstance(args["n"], int)
    assert isinstance(args["hot"], bool)
    user = (
        "[[ ## question ## ]]\nq\n\n[[ ## trajectory ## ]]\n[[ ## thought_0 ## ]]\nx\n\n"
        "[[ ## observation_0 ## ]]\nsunny\n"
    )
    second = _sections(engine.answer(REACT_SYSTEM, user))
    assert second["next_tool_name"] == "finish"
    assert json.loads(second["next_tool_args"]) == {}
    assert second["next_thought"] != first["next_thought"]  # the trajectory is an input


def test_dummy_advice_names_the_modules() -> None:
    import json

    system = (
        "Your input fields are:\n1. `module_names` (list[str]):\n"
        "Your output fields are:\n1. `discussion` (str):\n2. `advice` (dict[str, str]):\n"
        "[[ ## advice ## ]]\n{advice}        # note: the value you produce must adhere to the "
        'JSON schema: {"type": "object", "additionalProperties": {"type": "string"}}\n'
    )
    text = DummyEngine().answer(system, '[[ ## module_names ## ]]\n[\n  "predict"\n]')
    advice = json.loads(_sections(text)["advice"])
    assert list(advice) == ["predict"]
    assert advice["predict"].startswith("advice for predict: ")
