"""Signature definitions: a small type language, field specs and DSPy signature building.

Type grammar (parsed by a recursive-descent parser; nothing a caller sends is evaluated)::

    type    := "str" | "int" | "float" | "bool" | "history"
             | "list" "[" type "]"
             | "dict" "[" "str" "," type "]"
             | "optional" "[" type "]"
             | "literal" "[" member ("|" member)* "]"
    member  := bare | quoted        (members are strings)
    bare    := one or more characters other than whitespace, "|", "[", "]", quotes, ","
    quoted  := "'" ... "'" | '"' ... '"'   (backslash escapes the next character)

Constructor names are case-insensitive (``List[str]`` and ``Optional[int]`` are accepted);
whitespace between tokens is ignored.

``history`` is a conversation history (``dspy.History``): only as the whole type of an input
field (not nested, not an output, at most one per signature). Its value is
``{"messages": [map, ...]}``, each map the field values of one earlier turn; an optional
history field that is absent (or null) is an empty history.
"""

from __future__ import annotations

import keyword
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from .errors import InvalidArguments, LmError, SignatureError

MAX_TYPE_LENGTH: int = 4096
MAX_TYPE_DEPTH: int = 32
MAX_FIELDS: int = 256

SCALARS: tuple[str, ...] = ("str", "int", "float", "bool")
HISTORY = "history"


@dataclass(frozen=True)
class TypeSpec:
    """A parsed field type."""

    kind: str
    item: TypeSpec | None = None
    values: tuple[str, ...] = ()

    def render(self) -> str:
        """Canonical spelling of the type."""
        if self.kind in SCALARS or self.kind == HISTORY:
            return self.kind
        if self.kind == "list":
            return f"list[{self._item().render()}]"
        if self.kind == "dict":
            return f"dict[str, {self._item().render()}]"
        if self.kind == "optional":
            return f"optional[{self._item().render()}]"
        return "literal[" + "|".join(_render_member(v) for v in self.values) + "]"

    def annotation(self) -> Any:
        """The Python annotation for the DSPy field."""
        if self.kind == "str":
            return str
        if self.kind == "int":
            return int
        if self.kind == "float":
            return float
        if self.kind == "bool":
            return bool
        if self.kind == HISTORY:
            import dspy

            return dspy.History
        if self.kind == "list":
            return list[self._item().annotation()]  # type: ignore[misc]
        if self.kind == "dict":
            return dict[str, self._item().annotation()]  # type: ignore[misc]
        if self.kind == "optional":
            return Optional[self._item().annotation()]  # noqa: UP045 - runtime construction
        return Literal[self.values]

    def allows_none(self) -> bool:
        return self.kind == "optional"

    def contains_history(self) -> bool:
        if self.kind == HISTORY:
            return True
        return self.item is not None and self.item.contains_history()

    def _item(self) -> TypeSpec:
        assert self.item is not None
        return self.item


def _render_member(value: str) -> str:
    if value and all(c not in value for c in " \t\r\n|[]'\",\\"):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _TypeParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> SignatureError:
        return SignatureError(
            f"invalid type {self.text!r}: {message} at position {self.pos}",
            {"type": self.text, "position": self.pos},
        )

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def expect(self, char: str) -> None:
        self.skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] != char:
            raise self.error(f"expected {char!r}")
        self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def name(self) -> str:
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and (
            self.text[self.pos].isalnum() or self.text[self.pos] == "_"
        ):
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a type name")
        return self.text[start : self.pos]

    def parse(self) -> TypeSpec:
        spec = self.type_(0)
        self.skip_ws()
        if self.pos != len(self.text):
            raise self.error("unexpected trailing text")
        return spec

    def type_(self, depth: int) -> TypeSpec:
        if depth > MAX_TYPE_DEPTH:
            raise self.error(f"nesting deeper than {MAX_TYPE_DEPTH}")
        word = self.name()
        name = word.lower()
        if name in SCALARS or name == HISTORY:
            if self.peek() == "[":
                raise self.error(f"{word} takes no parameters")
            return TypeSpec(name)
        if name in ("list", "optional"):
            self.expect("[")
            item = self.type_(depth + 1)
            self.expect("]")
            if name == "optional" and item.kind == "optional":
                return item
            return TypeSpec(name, item)
        if name == "dict":
            self.expect("[")
            key = self.type_(depth + 1)
            if key.kind != "str":
                raise self.error("dict keys must be str")
            self.expect(",")
            value = self.type_(depth + 1)
            self.expect("]")
            return TypeSpec("dict", value)
        if name == "literal":
            self.expect("[")
            members = [self.member()]
            while self.peek() == "|":
                self.pos += 1
                members.append(self.member())
            self.expect("]")
            if len(set(members)) != len(members):
                raise self.error("duplicate literal member")
            return TypeSpec("literal", values=tuple(members))
        raise SignatureError(
            f"invalid type {self.text!r}: unknown type name {word!r}",
            {"type": self.text, "name": word},
        )

    def member(self) -> str:
        self.skip_ws()
        if self.pos >= len(self.text):
            raise self.error("expected a literal member")
        quote = self.text[self.pos]
        if quote in "'\"":
            self.pos += 1
            out: list[str] = []
            while True:
                if self.pos >= len(self.text):
                    raise self.error("unterminated quoted literal member")
                char = self.text[self.pos]
                self.pos += 1
                if char == "\\":
                    if self.pos >= len(self.text):
                        raise self.error("dangling escape")
                    out.append(self.text[self.pos])
                    self.pos += 1
                elif char == quote:
                    return "".join(out)
                else:
                    out.append(char)
        start = self.pos
        while self.pos < len(self.text) and not (
            self.text[self.pos].isspace() or self.text[self.pos] in "|[]'\","
        ):
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a literal member")
        return self.text[start : self.pos]


def parse_type(text: Any) -> TypeSpec:
    """Parse a type string into a ``TypeSpec``; raises ``SignatureError``."""
    if not isinstance(text, str):
        raise SignatureError(
            f"a field type must be a string, got {type(text).__name__}",
            {"type": repr(text)},
        )
    if len(text) > MAX_TYPE_LENGTH:
        raise SignatureError(f"type string longer than {MAX_TYPE_LENGTH} characters")
    return _TypeParser(text).parse()


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: TypeSpec
    description: str | None = None
    optional: bool = False

    @property
    def effective_type(self) -> TypeSpec:
        """The declared type, widened to ``optional[...]`` for an optional field."""
        if self.optional and self.type.kind not in ("optional", HISTORY):
            return TypeSpec("optional", self.type)
        return self.type

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type.render()}
        if self.description is not None:
            out["description"] = self.description
        out["optional"] = self.optional
        return out


@dataclass(frozen=True)
class SignatureSpec:
    name: str
    instructions: str
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]
    extra_outputs: tuple[FieldSpec, ...] = field(default=())

    def input(self, name: str) -> FieldSpec | None:
        return next((f for f in self.inputs if f.name == name), None)

    def all_outputs(self) -> tuple[FieldSpec, ...]:
        """Outputs as the program returns them (module-added fields such as reasoning first)."""
        return self.extra_outputs + self.outputs


def check_field_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise SignatureError(f"{where}: field name must be a non-empty string", {"field": name})
    if not name.isidentifier() or not name.isascii():
        raise SignatureError(f"{where}: field name {name!r} is not an identifier", {"field": name})
    if keyword.iskeyword(name):
        raise SignatureError(f"{where}: field name {name!r} is a Python keyword", {"field": name})
    if name.startswith("_"):
        raise SignatureError(
            f"{where}: field name {name!r} must not start with an underscore", {"field": name}
        )
    return name


def _parse_field(raw: Any, where: str) -> FieldSpec:
    if not isinstance(raw, dict):
        raise SignatureError(f"{where}: a field must be a map, got {type(raw).__name__}")
    unknown = set(raw) - {"name", "type", "description", "desc", "optional"}
    if unknown:
        raise SignatureError(
            f"{where}: unknown field keys {sorted(map(str, unknown))}", {"keys": sorted(unknown)}
        )
    name = check_field_name(raw.get("name"), where)
    if "type" not in raw:
        raise SignatureError(f"{where}: field {name!r} has no type", {"field": name})
    try:
        type_spec = parse_type(raw["type"])
    except SignatureError as exc:
        raise SignatureError(
            f"{where}: field {name!r}: {exc.message}", {"field": name, **(exc.details or {})}
        ) from None
    description = raw.get("description", raw.get("desc"))
    if description is not None and not isinstance(description, str):
        raise SignatureError(f"{where}: description of {name!r} must be a string", {"field": name})
    optional = raw.get("optional", False)
    if optional is None:
        optional = False
    if not isinstance(optional, bool):
        raise SignatureError(f"{where}: optional of {name!r} must be a bool", {"field": name})
    return FieldSpec(name, type_spec, description, optional)


def parse_signature(raw: Any) -> SignatureSpec:
    """Validate a signature definition map; raises ``SignatureError``."""
    if not isinstance(raw, dict):
        raise SignatureError(f"signature must be a map, got {type(raw).__name__}")
    unknown = set(raw) - {"name", "instructions", "inputs", "outputs"}
    if unknown:
        raise SignatureError(
            f"unknown signature keys {sorted(map(str, unknown))}", {"keys": sorted(unknown)}
        )
    name = raw.get("name") or "Program"
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise SignatureError(f"signature name {name!r} is not an identifier", {"name": name})
    instructions = raw.get("instructions") or ""
    if not isinstance(instructions, str):
        raise SignatureError("instructions must be a string")
    inputs_raw = raw.get("inputs", [])
    outputs_raw = raw.get("outputs")
    if not isinstance(inputs_raw, list):
        raise SignatureError("inputs must be a list of fields")
    if not isinstance(outputs_raw, list):
        raise SignatureError("outputs must be a list of fields")
    if not outputs_raw:
        raise SignatureError("a signature needs at least one output field")
    if len(inputs_raw) + len(outputs_raw) > MAX_FIELDS:
        raise SignatureError(f"more than {MAX_FIELDS} fields")
    inputs = tuple(_parse_field(f, f"inputs[{i}]") for i, f in enumerate(inputs_raw))
    outputs = tuple(_parse_field(f, f"outputs[{i}]") for i, f in enumerate(outputs_raw))
    seen: set[str] = set()
    for spec in inputs + outputs:
        if spec.name in seen:
            raise SignatureError(f"duplicate field name {spec.name!r}", {"field": spec.name})
        seen.add(spec.name)
    _check_history_fields(inputs, outputs)
    return SignatureSpec(name, instructions, inputs, outputs)


def _check_history_fields(inputs: tuple[FieldSpec, ...], outputs: tuple[FieldSpec, ...]) -> None:
    for f in outputs:
        if f.type.contains_history():
            raise SignatureError(
                f"output {f.name!r}: history is an input type only", {"field": f.name}
            )
    histories = []
    for f in inputs:
        if f.type.kind == HISTORY:
            histories.append(f.name)
        elif f.type.contains_history():
            raise SignatureError(
                f"input {f.name!r}: history is only allowed as the whole type of a field",
                {"field": f.name, "type": f.type.render()},
            )
    if len(histories) > 1:
        raise SignatureError(
            f"at most one history field per signature, got {histories}",
            {"field": histories[1], "fields": histories},
        )


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def check_value(spec: TypeSpec, value: Any, path: str) -> None:
    """Raise ``InvalidArguments`` naming ``path`` if ``value`` does not have type ``spec``."""
    problem = _mismatch(spec, value, path)
    if problem is not None:
        where, expected, got = problem
        field_name = path.split("[", 1)[0].split(".", 1)[0]
        raise InvalidArguments(
            f"input {where!r}: expected {expected}, got {got}",
            {"field": field_name, "path": where, "expected": expected, "got": got},
        )


def _mismatch(spec: TypeSpec, value: Any, path: str) -> tuple[str, str, str] | None:
    kind = spec.kind
    if kind == "optional":
        return None if value is None else _mismatch(spec._item(), value, path)
    bad = (path, spec.render(), _type_name(value))
    if kind == "str":
        return None if isinstance(value, str) else bad
    if kind == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else bad
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else bad
    if kind == "bool":
        return None if isinstance(value, bool) else bad
    if kind == "list":
        if not isinstance(value, list):
            return bad
        for i, item in enumerate(value):
            found = _mismatch(spec._item(), item, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if kind == "dict":
        if not isinstance(value, dict):
            return bad
        for key, item in value.items():
            if not isinstance(key, str):
                return (path, spec.render(), f"map with a {_type_name(key)} key")
            found = _mismatch(spec._item(), item, f"{path}.{key}")
            if found is not None:
                return found
        return None
    if kind == "literal":
        if isinstance(value, str) and value in spec.values:
            return None
        return (path, spec.render(), repr(value) if isinstance(value, str) else _type_name(value))
    if kind == HISTORY:
        return _history_mismatch(value, path)
    return bad


_HISTORY_SHAPE = 'history ({"messages": [map, ...]})'


def _history_mismatch(value: Any, path: str) -> tuple[str, str, str] | None:
    if not isinstance(value, dict):
        return (path, _HISTORY_SHAPE, _type_name(value))
    extra = sorted(str(k) for k in value if k != "messages")
    if extra:
        return (path, _HISTORY_SHAPE, f"map with keys {extra}")
    messages = value.get("messages")
    if not isinstance(messages, list):
        return (f"{path}.messages", "list of maps", _type_name(messages))
    for i, message in enumerate(messages):
        where = f"{path}.messages[{i}]"
        if not isinstance(message, dict):
            return (where, "map", _type_name(message))
        for key in message:
            if not isinstance(key, str):
                return (where, "map with string keys", f"map with a {_type_name(key)} key")
    return None


def to_dspy_inputs(spec: SignatureSpec, checked: dict[str, Any]) -> dict[str, Any]:
    """Checked input values as DSPy takes them (a ``history`` value becomes ``dspy.History``)."""
    histories = [f.name for f in spec.inputs if f.type.kind == HISTORY]
    if not histories:
        return checked
    import dspy

    out = dict(checked)
    for name in histories:
        value = out.get(name)
        messages = value.get("messages", []) if isinstance(value, dict) else []
        out[name] = dspy.History(messages=list(messages))
    return out


class _Unconvertible(Exception):
    pass


def convert_output(spec: TypeSpec, value: Any, path: str) -> Any:
    """Convert an LM-produced value to the declared type; ``LmError`` naming the field."""
    try:
        return _convert(spec, value)
    except _Unconvertible as exc:
        field_name = path.split("[", 1)[0]
        raise LmError(
            f"output {path!r}: cannot convert {_short(value)} to {spec.render()}: {exc}",
            {"field": field_name, "expected": spec.render(), "got": _type_name(value)},
        ) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _convert(spec: TypeSpec, value: Any) -> Any:
    kind = spec.kind
    if kind == "optional":
        return None if value is None else _convert(spec._item(), value)
    if value is None:
        raise _Unconvertible("missing value")
    if kind == "str":
        if isinstance(value, str):
            return value
        if hasattr(value, "content") and isinstance(value.content, str):  # dspy.Reasoning
            return value.content
        if isinstance(value, (int, float, bool)):
            return str(value)
        raise _Unconvertible(f"{_type_name(value)} is not text")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _Unconvertible("not a boolean")
    if kind == "int":
        if isinstance(value, bool):
            raise _Unconvertible("a boolean is not an int")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _Unconvertible("not an integer") from None
        raise _Unconvertible("not an integer")
    if kind == "float":
        if isinstance(value, bool):
            raise _Unconvertible("a boolean is not a float")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _Unconvertible("not a number") from None
        raise _Unconvertible("not a number")
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            raise _Unconvertible("not a list")
        return [_convert(spec._item(), item) for item in value]
    if kind == "dict":
        if not isinstance(value, dict):
            raise _Unconvertible("not a map")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unconvertible("a key is not a string")
            out[key] = _convert(spec._item(), item)
        return out
    if kind == "literal":
        text = getattr(value, "value", value)
        if isinstance(text, str) and text in spec.values:
            return text
        raise _Unconvertible(f"not one of {list(spec.values)}")
    raise _Unconvertible(f"unsupported type {kind}")


def build_dspy_signature(spec: SignatureSpec) -> Any:
    """A ``dspy.Signature`` class for ``spec`` (imports DSPy)."""
    import dspy

    fields: dict[str, tuple[Any, Any]] = {}
    for kind, specs in (("input", spec.inputs), ("output", spec.outputs)):
        for f in specs:
            if hasattr(dspy.Signature, f.name):
                raise SignatureError(
                    f"field name {f.name!r} is reserved by DSPy signatures", {"field": f.name}
                )
            kwargs: dict[str, Any] = {}
            if f.description is not None:
                kwargs["desc"] = f.description
            if f.optional:
                kwargs["default"] = None
            factory = dspy.InputField if kind == "input" else dspy.OutputField
            fields[f.name] = (f.effective_type.annotation(), factory(**kwargs))
    try:
        return dspy.make_signature(fields, spec.instructions or None, signature_name=spec.name)
    except Exception as exc:
        raise SignatureError(
            f"DSPy rejected the signature: {exc}", {"exception": type(exc).__name__}
        ) from exc
