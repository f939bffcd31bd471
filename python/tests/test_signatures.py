"""Unit tests of the type language, signature validation and value checks."""

from __future__ import annotations

from typing import Literal, Optional, get_args, get_origin

import pytest

from dspex_bridge.errors import InvalidArguments, LmError, SignatureError
from dspex_bridge.signatures import (
    TypeSpec,
    build_dspy_signature,
    check_value,
    convert_output,
    parse_signature,
    parse_type,
)


@pytest.mark.parametrize(
    ("text", "annotation"),
    [
        ("str", str),
        ("int", int),
        ("float", float),
        ("bool", bool),
        ("list[str]", list[str]),
        ("list[list[int]]", list[list[int]]),
        ("dict[str, float]", dict[str, float]),
        ("dict[str,list[bool]]", dict[str, list[bool]]),
        ("optional[int]", Optional[int]),  # noqa: UP045
        ("optional[optional[int]]", Optional[int]),  # noqa: UP045
        ("list[optional[str]]", list[Optional[str]]),  # noqa: UP045
        ("  List [ Str ]  ", list[str]),
        ("Optional[Dict[str, int]]", Optional[dict[str, int]]),  # noqa: UP045
    ],
)
def test_parse_type_annotations(text: str, annotation: object) -> None:
    assert parse_type(text).annotation() == annotation


def test_literal_members() -> None:
    spec = parse_type("literal[a|b|c]")
    assert spec == TypeSpec("literal", values=("a", "b", "c"))
    assert spec.annotation() == Literal["a", "b", "c"]
    assert get_origin(spec.annotation()) is Literal
    quoted = parse_type("literal['two words' | \"x|y\" | plain-1.0 | 'it\\'s']")
    assert quoted.values == ("two words", "x|y", "plain-1.0", "it's")
    assert parse_type(quoted.render()) == quoted
    nested = parse_type("list[literal[yes|no]]")
    assert get_args(nested.annotation()) == (Literal["yes", "no"],)


@pytest.mark.parametrize(
    "text",
    [
        "str",
        "list[dict[str, optional[float]]]",
        "literal[a|b]",
        "optional[list[literal[x|'y z']]]",
    ],
)
def test_render_round_trips(text: str) -> None:
    spec = parse_type(text)
    assert parse_type(spec.render()) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "string",
        "list",
        "list[]",
        "list[str",
        "list[str]]",
        "dict[int, str]",
        "dict[str]",
        "str[int]",
        "literal[]",
        "literal[a|]",
        "literal[a|a]",
        "literal['open]",
        "tuple[int]",
        "__import__('os')",
        "int; rm -rf /",
        "list[" * 40 + "str" + "]" * 40,
        "x" * 5000,
    ],
)
def test_parse_type_rejects(text: str) -> None:
    with pytest.raises(SignatureError):
        parse_type(text)


def test_parse_type_rejects_non_string() -> None:
    with pytest.raises(SignatureError):
        parse_type(["str"])


def _sig(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "QA",
        "instructions": "Answer.",
        "inputs": [{"name": "question", "type": "str", "description": "q"}],
        "outputs": [{"name": "answer", "type": "int", "optional": False}],
    }
    base.update(overrides)
    return base


def test_parse_signature() -> None:
    spec = parse_signature(_sig())
    assert spec.name == "QA"
    assert [f.name for f in spec.inputs] == ["question"]
    assert spec.inputs[0].description == "q"
    assert spec.outputs[0].type == TypeSpec("int")
    assert parse_signature(_sig(name="", instructions=None)).name == "Program"


@pytest.mark.parametrize(
    "overrides",
    [
        {"outputs": []},
        {"outputs": None},
        {"inputs": "question"},
        {"inputs": [{"name": "class", "type": "str"}]},
        {"inputs": [{"name": "1abc", "type": "str"}]},
        {"inputs": [{"name": "a-b", "type": "str"}]},
        {"inputs": [{"name": "_private", "type": "str"}]},
        {"inputs": [{"name": "", "type": "str"}]},
        {"inputs": [{"name": "q"}]},
        {"inputs": [{"name": "q", "type": "strr"}]},
        {"inputs": [{"name": "q", "type": "str", "optional": "yes"}]},
        {"inputs": [{"name": "q", "type": "str", "surprise": 1}]},
        {"inputs": [{"name": "q", "type": "str", "description": 5}]},
        {"inputs": ["q"]},
        {"outputs": [{"name": "question", "type": "str"}]},
        {"inputs": [{"name": "a", "type": "str"}, {"name": "a", "type": "int"}]},
        {"name": "not valid"},
        {"instructions": 5},
        {"extra": True},
    ],
)
def test_parse_signature_errors(overrides: dict[str, object]) -> None:
    with pytest.raises(SignatureError):
        parse_signature(_sig(**overrides))


def test_parse_signature_not_a_map() -> None:
    with pytest.raises(SignatureError):
        parse_signature(["question -> answer"])


@pytest.mark.parametrize(
    ("type_text", "value"),
    [
        ("str", "x"),
        ("int", 3),
        ("float", 3),
        ("float", 2.5),
        ("bool", False),
        ("list[int]", [1, 2]),
        ("list[int]", []),
        ("dict[str, list[float]]", {"a": [1, 2.0]}),
        ("optional[int]", None),
        ("optional[int]", 4),
        ("literal[a|b]", "b"),
    ],
)
def test_check_value_accepts(type_text: str, value: object) -> None:
    check_value(parse_type(type_text), value, "field")


@pytest.mark.parametrize(
    ("type_text", "value", "path"),
    [
        ("str", 1, "f"),
        ("int", True, "f"),
        ("int", 1.5, "f"),
        ("float", False, "f"),
        ("float", "1.0", "f"),
        ("bool", 1, "f"),
        ("list[int]", (1,), "f"),
        ("list[int]", [1, "2"], "f[1]"),
        ("dict[str, int]", {"a": "x"}, "f.a"),
        ("dict[str, int]", [], "f"),
        ("literal[a|b]", "c", "f"),
        ("str", None, "f"),
    ],
)
def test_check_value_rejects_naming_the_field(type_text: str, value: object, path: str) -> None:
    with pytest.raises(InvalidArguments) as info:
        check_value(parse_type(type_text), value, "f")
    assert info.value.details is not None
    assert info.value.details["field"] == "f"
    assert info.value.details["path"] == path
    assert "'f" in info.value.message


@pytest.mark.parametrize(
    ("type_text", "value", "expected"),
    [
        ("str", "x", "x"),
        ("int", 3.0, 3),
        ("int", " 7 ", 7),
        ("float", 2, 2.0),
        ("float", "2.5", 2.5),
        ("bool", "True", True),
        ("list[int]", (1, 2.0), [1, 2]),
        ("dict[str, optional[int]]", {"a": None}, {"a": None}),
        ("literal[a|b]", "a", "a"),
    ],
)
def test_convert_output(type_text: str, value: object, expected: object) -> None:
    assert convert_output(parse_type(type_text), value, "out") == expected


@pytest.mark.parametrize(
    ("type_text", "value"),
    [
        ("int", "seven"),
        ("int", 2.5),
        ("int", True),
        ("float", "x"),
        ("bool", "maybe"),
        ("list[int]", "[1]"),
        ("literal[a|b]", "c"),
        ("str", None),
        ("dict[str, int]", {"a": "b"}),
    ],
)
def test_convert_output_failure_is_lm_error(type_text: str, value: object) -> None:
    with pytest.raises(LmError) as info:
        convert_output(parse_type(type_text), value, "out")
    assert info.value.details is not None
    assert info.value.details["field"] == "out"
    assert "'out'" in info.value.message


def test_build_dspy_signature() -> None:
    spec = parse_signature(
        {
            "name": "Typed",
            "instructions": "Do it.",
            "inputs": [
                {"name": "q", "type": "str", "description": "the q"},
                {"name": "hint", "type": "str", "optional": True},
            ],
            "outputs": [
                {"name": "n", "type": "int"},
                {"name": "tags", "type": "list[literal[x|y]]"},
                {"name": "maybe", "type": "optional[float]"},
            ],
        }
    )
    sig = build_dspy_signature(spec)
    assert sig.__name__ == "Typed"
    assert sig.instructions == "Do it."
    assert list(sig.input_fields) == ["q", "hint"]
    assert list(sig.output_fields) == ["n", "tags", "maybe"]
    assert sig.output_fields["n"].annotation is int
    assert sig.output_fields["tags"].annotation == list[Literal["x", "y"]]
    assert sig.input_fields["hint"].annotation == Optional[str]  # noqa: UP045
    assert sig.input_fields["q"].json_schema_extra["desc"] == "the q"


@pytest.mark.parametrize("name", ["instructions", "signature", "json", "model_fields", "copy"])
def test_build_rejects_names_reserved_by_dspy(name: str) -> None:
    spec = parse_signature(_sig(outputs=[{"name": name, "type": "str"}]))
    with pytest.raises(SignatureError, match="reserved"):
        build_dspy_signature(spec)


def test_history_type() -> None:
    import dspy

    spec = parse_type("history")
    assert spec == TypeSpec("history")
    assert spec.render() == "history"
    assert spec.annotation() is dspy.History
    assert parse_type("History") == spec
    with pytest.raises(SignatureError):
        parse_type("history[str]")


@pytest.mark.parametrize(
    "value",
    [{"messages": []}, {"messages": [{"question": "q", "answer": "a"}, {"question": "r"}]}],
)
def test_history_values_accepted(value: object) -> None:
    check_value(parse_type("history"), value, "chat")


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (None, "chat"),
        ([{"question": "q"}], "chat"),
        ({"messages": "q"}, "chat.messages"),
        ({"messages": [["q"]]}, "chat.messages[0]"),
        ({"messages": [], "turns": []}, "chat"),
    ],
)
def test_history_values_rejected(value: object, path: str) -> None:
    with pytest.raises(InvalidArguments) as info:
        check_value(parse_type("history"), value, "chat")
    assert info.value.details is not None
    assert info.value.details["field"] == "chat"
    assert info.value.details["path"] == path


def test_history_signature_and_dspy_inputs() -> None:
    import dspy

    from dspex_bridge.signatures import to_dspy_inputs

    spec = parse_signature(
        {
            "inputs": [{"name": "q", "type": "str"}, {"name": "chat", "type": "history"}],
            "outputs": [{"name": "a", "type": "str"}],
        }
    )
    signature = build_dspy_signature(spec)
    assert signature.input_fields["chat"].annotation is dspy.History
    inputs = to_dspy_inputs(spec, {"q": "x", "chat": {"messages": [{"q": "p", "a": "b"}]}})
    assert inputs["q"] == "x"
    assert isinstance(inputs["chat"], dspy.History)
    assert inputs["chat"].messages == [{"q": "p", "a": "b"}]
    assert to_dspy_inputs(spec, {"q": "x", "chat": None})["chat"].messages == []
