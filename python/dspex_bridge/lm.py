"""LM configuration and the offline ``dummy`` LM.

``configure_lm`` accepts ``{"model", "api_key"?, "api_base"?, "temperature"?, "max_tokens"?,
...}``. Any litellm model string is turned into a ``dspy.LM`` (constructed, never called
here). The model ``"dummy"`` (or ``"dummy/<name>"``) builds ``dspy.LM("dummy",
engine=DummyEngine(...))`` on DSPy 3.4's canonical engine interface: an object with
``complete(Request) -> Response``. It reads the request the real adapter rendered and answers
in that adapter's format, deterministically from the signature and the input values:

* output field names come from the system message's "Your output fields are:" list and
  their types from the adapter's per-field notes ("must be a single int value", "must be True
  or False", "must exactly match ... one of: a; b", "must adhere to the JSON schema: {...}");
  a field without a note is text;
* ``h`` = sha256 of the input-field sections of the last user message (plus the optional
  ``seed``); the short hash is ``h[:8]``;
* text → ``"<field>: <short hash>"`` (``reasoning`` gets a sentence mentioning the inputs),
  int → ``n % 1000``, float → ``(n % 10000) / 10000`` (in [0, 1), so probabilities
  and confidence scores fit), bool → ``n`` odd, literal/enum → member ``n % len``,
  arrays → two items, maps → keys ``k0``/``k1`` (or the declared properties),
  ``anyOf`` with null → the non-null branch; ``n`` is derived from ``h`` and the value's path;
* ``latency_ms`` sleeps before answering (simulated latency); under a request with a
  deadline the sleep ends at the deadline, or when the request is abandoned (answered by
  its deadline or cancelled), and the engine raises instead of answering: that result would
  be discarded anyway, and the thread is free again at once;
* both DSPy adapters are understood: ChatAdapter (``[[ ## field ## ]]`` sections) and
  JSONAdapter (a JSON object, also used when a ``response_format`` is requested);
* ``fail_fields`` (test aid) makes the named output fields unusable so the adapter fails;
* ``follow_examples: true`` (in the spirit of ``dspy.utils.dummies.DummyLM(follow_examples=
  True)``): when the prompt carries a demo (a user / assistant message pair the adapter
  rendered before the request, a few-shot example or a history turn) whose input fields equal
  the request's, the output fields that demo supplies are answered with its values (the last
  such demo wins; fields it leaves "Not supplied" are answered as usual). Without a matching
  demo the answer is as without the option. This lets a test show that an optimizer that adds
  the right demos raises a score.

Same inputs give the same outputs; nothing leaves the process.

Any other model is built as ``deadline_lm.DeadlineLM`` (a ``dspy.LM``) that gives each LM
call of a request with a deadline the remaining time as its ``timeout``.

Every string option of a configuration is registered with ``logs.register_secrets`` before
anything else happens to it, so no log line ever carries an API key.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArguments
from .logs import redact, register_secrets
from .requests import cooperative_sleep, current_request

log = logging.getLogger("dspex_bridge.lm")

DUMMY_MODEL = "dummy"
LM_CACHE_SIZE = 16
NAMED_LM_LIMIT = 64
MAX_LM_ID = 128
# Top-level LM config keys whose string values are not secrets (every other string is).
_NOT_SECRET = frozenset({"model", "model_type", "engine", "seed", "fail_fields", "follow_examples"})
_MAX_SECRET_DEPTH = 32

_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_LISTED_FIELD = re.compile(r"^\d+\. `(\w+)`", re.MULTILINE)
_NOTE = re.compile(r"^\{(\w+)\}\s+# note: the value you produce (.*)$", re.MULTILINE)
_JSON_MARKER = "Outputs will be a JSON object"
UNPARSEABLE = "<<unparseable>>"
_REMINDER = "\n\nRespond with "

_STRING_KEYS = ("api_key", "api_base", "base_url", "api_version")
_KNOWN_KEYS = frozenset(
    {
        "model",
        "temperature",
        "max_tokens",
        "latency_ms",
        "seed",
        "fail_fields",
        "follow_examples",
        "cache",
        "num_retries",
        "model_type",
        "timeout",
        *_STRING_KEYS,
    }
)


def is_dummy(model: str) -> bool:
    return model == DUMMY_MODEL or model.startswith(DUMMY_MODEL + "/")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


@dataclass(frozen=True)
class LmConfig:
    """A validated LM configuration."""

    model: str
    options: dict[str, Any]
    latency_ms: float = 0.0
    seed: str = ""
    fail_fields: tuple[str, ...] = ()
    follow_examples: bool = False

    @property
    def dummy(self) -> bool:
        return is_dummy(self.model)

    def key(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "options": self.options,
                "latency_ms": self.latency_ms,
                "seed": self.seed,
                "fail_fields": self.fail_fields,
                "follow_examples": self.follow_examples,
            },
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )


def _strings(value: Any, out: list[str], depth: int = 0) -> None:
    if depth > _MAX_SECRET_DEPTH:
        return
    if isinstance(value, str):
        out.append(value)
        # "Bearer <token>": the token alone is a secret too.
        out.extend(part for part in value.split() if part != value and len(part) >= 8)
    elif isinstance(value, dict):
        for item in value.values():
            _strings(item, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _strings(item, out, depth + 1)


def config_secrets(raw: Any) -> list[str]:
    """The string values of an LM config that must never be logged (all but the model's)."""
    found: list[str] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key not in _NOT_SECRET:
                _strings(value, found)
    return found


def register_config_secrets(raw: Any) -> None:
    register_secrets(config_secrets(raw))


def parse_lm_config(raw: Any) -> LmConfig:
    """Validate a ``configure_lm`` argument map; raises ``InvalidArguments``.

    Its secrets are registered for redaction first, valid or not.
    """
    register_config_secrets(raw)
    if not isinstance(raw, dict):
        raise InvalidArguments(f"LM config must be a map, got {type(raw).__name__}")
    model = raw.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidArguments("LM config needs a non-empty string 'model'", {"field": "model"})
    options: dict[str, Any] = {}
    for key in _STRING_KEYS:
        value = raw.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise InvalidArguments(f"LM config {key!r} must be a string", {"field": key})
            options[key] = value
    temperature = raw.get("temperature")
    if temperature is not None:
        if not _number(temperature) or temperature < 0:
            raise InvalidArguments(
                "LM config 'temperature' must be a non-negative number", {"field": "temperature"}
            )
        options["temperature"] = float(temperature)
    max_tokens = raw.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
            raise InvalidArguments(
                "LM config 'max_tokens' must be a positive integer", {"field": "max_tokens"}
            )
        options["max_tokens"] = max_tokens
    cache = raw.get("cache")
    if cache is not None:
        if not isinstance(cache, bool):
            raise InvalidArguments("LM config 'cache' must be a bool", {"field": "cache"})
        options["cache"] = cache
    num_retries = raw.get("num_retries")
    if num_retries is not None:
        if not isinstance(num_retries, int) or isinstance(num_retries, bool) or num_retries < 0:
            raise InvalidArguments(
                "LM config 'num_retries' must be a non-negative integer", {"field": "num_retries"}
            )
        options["num_retries"] = num_retries
    model_type = raw.get("model_type")
    if model_type is not None:
        if model_type not in ("chat", "text", "responses"):
            raise InvalidArguments(
                "LM config 'model_type' must be chat, text or responses", {"field": "model_type"}
            )
        options["model_type"] = model_type
    timeout = raw.get("timeout")
    if timeout is not None:
        if not _number(timeout) or timeout <= 0:
            raise InvalidArguments(
                "LM config 'timeout' must be a positive number", {"field": "timeout"}
            )
        options["timeout"] = timeout
    latency = raw.get("latency_ms", 0)
    if latency is None:
        latency = 0
    if not _number(latency) or latency < 0 or latency > 3_600_000:
        raise InvalidArguments(
            "LM config 'latency_ms' must be a number of milliseconds >= 0", {"field": "latency_ms"}
        )
    seed = raw.get("seed", "")
    if seed is None:
        seed = ""
    if not isinstance(seed, (str, int)) or isinstance(seed, bool):
        raise InvalidArguments("LM config 'seed' must be a string or integer", {"field": "seed"})
    dummy = is_dummy(model)
    if not dummy and latency:
        raise InvalidArguments(
            "'latency_ms' only applies to the dummy model", {"field": "latency_ms"}
        )
    fail_fields = raw.get("fail_fields") or []
    if not isinstance(fail_fields, list) or not all(
        isinstance(f, str) and f.isidentifier() for f in fail_fields
    ):
        raise InvalidArguments(
            "'fail_fields' must be a list of field names", {"field": "fail_fields"}
        )
    if fail_fields and not dummy:
        raise InvalidArguments(
            "'fail_fields' only applies to the dummy model", {"field": "fail_fields"}
        )
    follow_examples = raw.get("follow_examples")
    if follow_examples is None:
        follow_examples = False
    if not isinstance(follow_examples, bool):
        raise InvalidArguments("'follow_examples' must be a bool", {"field": "follow_examples"})
    if follow_examples and not dummy:
        raise InvalidArguments(
            "'follow_examples' only applies to the dummy model", {"field": "follow_examples"}
        )
    for key, value in raw.items():
        if key in _KNOWN_KEYS:
            continue
        if not isinstance(key, str) or not key.isidentifier():
            raise InvalidArguments(f"LM config key {key!r} is not an identifier", {"field": key})
        if not _plain(value):
            raise InvalidArguments(f"LM config {key!r} has an unsupported value", {"field": key})
        if not dummy:
            options[key] = value
    return LmConfig(
        model=model,
        options=options,
        latency_ms=float(latency),
        seed=str(seed),
        fail_fields=tuple(fail_fields),
        follow_examples=follow_examples,
    )


@dataclass
class LmHandle:
    """A constructed ``dspy.LM`` and the configuration it came from."""

    config: LmConfig
    lm: Any

    @property
    def model(self) -> str:
        return self.config.model


def build_lm(config: LmConfig) -> LmHandle:
    """Construct the ``dspy.LM`` for ``config`` (never calls it).

    A real model is a ``DeadlineLM``: each of its calls made for a request with a deadline
    gets the remaining time as its ``timeout``.
    """
    import dspy

    try:
        if config.dummy:
            options = {
                k: v for k, v in config.options.items() if k in ("temperature", "max_tokens")
            }
            lm = dspy.LM(
                DUMMY_MODEL,
                engine=DummyEngine(
                    config.latency_ms,
                    config.seed,
                    config.fail_fields,
                    follow_examples=config.follow_examples,
                ),
                cache=False,
                num_retries=0,
                **options,
            )
        else:
            from .deadline_lm import DeadlineLM

            lm = DeadlineLM(config.model, **config.options)
    except (ValueError, TypeError) as exc:
        raise InvalidArguments(
            redact(f"invalid LM config for {config.model!r}: {exc}"),
            {"model": config.model, "exception": type(exc).__name__},
        ) from exc
    return LmHandle(config=config, lm=lm)


def warm_up() -> None:
    """Build (and drop) a dummy LM once, so a zygote's workers inherit what the first build
    sets up (``dspy.LM`` compiles a regex on its first construction): their first
    ``configure_lm`` does less. Nothing is called, nothing is registered; a failure is
    ignored (the worker's own ``configure_lm`` reports it).
    """
    try:
        build_lm(LmConfig(model=DUMMY_MODEL, options={}))
    except Exception:  # an optional warm-up
        log.debug("dummy LM warm-up failed", exc_info=True)


class LmCache:
    """A small LRU of per-request override LMs, keyed by their configuration."""

    def __init__(self, size: int = LM_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[str, LmHandle] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, config: LmConfig) -> LmHandle:
        key = config.key()
        with self._lock:
            handle = self._items.get(key)
            if handle is not None:
                self._items.move_to_end(key)
                return handle
        handle = build_lm(config)
        with self._lock:
            self._items[key] = handle
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return handle

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def check_lm_id(value: Any) -> str:
    """A valid ``lm_id``: a non-empty string of at most ``MAX_LM_ID`` characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_LM_ID:
        raise InvalidArguments(
            f"'lm_id' must be a non-empty string of at most {MAX_LM_ID} characters",
            {"field": "lm_id"},
        )
    return value


class NamedLms:
    """LMs the host configured once under an ``lm_id`` (``configure_lm``); an LRU.

    The host sends an LM's API key once (``configure_lm`` with ``lm_id``) and then only the
    id with each ``execute_program``. When more than ``size`` ids are registered the least
    recently used one is evicted (and logged); the host learns it from ``LmNotConfigured``
    (``details.reason == "unknown_lm_id"``) and configures it again.
    """

    def __init__(self, size: int = NAMED_LM_LIMIT) -> None:
        self._size = size
        self._items: OrderedDict[str, LmHandle] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, lm_id: str, handle: LmHandle) -> None:
        with self._lock:
            self._items[lm_id] = handle
            self._items.move_to_end(lm_id)
            evicted: list[tuple[str, str]] = []
            while len(self._items) > self._size:
                old_id, old = self._items.popitem(last=False)
                evicted.append((old_id, old.model))
        for old_id, model in evicted:
            log.info(
                "named LM registry full (%d): evicted lm_id %r (%s)", self._size, old_id, model
            )

    def get(self, lm_id: str) -> LmHandle | None:
        with self._lock:
            handle = self._items.get(lm_id)
            if handle is not None:
                self._items.move_to_end(lm_id)
            return handle

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def clear(self) -> int:
        with self._lock:
            count = len(self._items)
            self._items.clear()
            return count

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# --- the dummy engine -------------------------------------------------------------------


def _section(text: str, start: str, end: str) -> str:
    i = text.find(start)
    if i < 0:
        return ""
    i += len(start)
    j = text.find(end, i)
    return text[i:] if j < 0 else text[i:j]


@dataclass(frozen=True)
class _OutputField:
    name: str
    note: str


def _json_structure_notes(system: str) -> dict[str, str]:
    """Type notes from JSONAdapter's structure block (a JSON object of note strings)."""
    start = system.find(_JSON_MARKER)
    brace = system.find("{", start) if start >= 0 else -1
    if brace < 0:
        return {}
    try:
        block, _ = json.JSONDecoder().raw_decode(system, brace)
    except ValueError:
        return {}
    notes: dict[str, str] = {}
    if isinstance(block, dict):
        for value in block.values():
            if isinstance(value, str):
                for name, note in _NOTE.findall(value):
                    notes[name] = note.strip()
    return notes


def _parse_prompt(system: str) -> tuple[list[str], list[_OutputField]]:
    """(input names, output fields with their type notes) from an adapter's system message."""
    inputs = _LISTED_FIELD.findall(_section(system, "Your input fields are:", "Your output fields"))
    outputs = _LISTED_FIELD.findall(
        _section(system, "Your output fields are:", "All interactions will be structured")
    )
    notes = {name: note.strip() for name, note in _NOTE.findall(system)}
    notes.update(_json_structure_notes(system))
    return inputs, [_OutputField(name, notes.get(name, "")) for name in outputs]


def _sections(user_text: str, input_names: list[str]) -> dict[str, str]:
    """The input-field sections of the last user message, by field name.

    Only headers of the prompt's input fields open a section; any other ``[[ ## x ## ]]``
    line (ReAct's trajectory renders its steps that way) is part of the section it is in.
    The adapters append their output reminder ("Respond with ...") as a last paragraph; it
    describes the outputs, not the inputs, so it is left out.
    """
    user_text = _strip_reminder(user_text)
    known = set(input_names)
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in user_text.splitlines():
        match = _HEADER.fullmatch(line.strip())
        if match and (not known or match.group(1) in known):
            current = match.group(1)
            sections.setdefault(current, [])
        elif current is not None:
            sections[current].append(line)
    return {k: "\n".join(v).strip() for k, v in sections.items()}


def _strip_reminder(user_text: str) -> str:
    cut = user_text.rfind(_REMINDER)
    return user_text[:cut] if cut >= 0 else user_text


def _input_digest(user_text: str, input_names: list[str], seed: str) -> str:
    return _digest_of(_sections(user_text, input_names), user_text, seed)


def _digest_of(sections: dict[str, str], user_text: str, seed: str) -> str:
    canonical: dict[str, str] = dict(sections) or {"": _strip_reminder(user_text)}
    payload = json.dumps(canonical, sort_keys=True, ensure_ascii=False) + "\x00" + seed
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class _Generator:
    """Deterministic values for one request."""

    def __init__(self, digest: str, input_names: list[str]) -> None:
        self.digest = digest
        self.short = digest[:8]
        self.input_names = input_names

    def number(self, path: str) -> int:
        return int(hashlib.sha256(f"{self.digest}:{path}".encode()).hexdigest()[:12], 16)

    def text(self, path: str) -> str:
        if path in ("reasoning", "rationale"):
            names = ", ".join(self.input_names) or "the request"
            return (
                f"{path}: {self.short}. Considered {names}; the dummy LM derives every "
                "output deterministically from a hash of the inputs."
            )
        return f"{path}: {self.short}"

    def field_value(self, out: _OutputField) -> tuple[Any, bool]:
        """(value, is_text) for an output field described by its adapter note."""
        note = out.note
        n = self.number(out.name)
        if not note:
            return self.text(out.name), True
        if note.startswith("must be True or False"):
            return n % 2 == 1, False
        match = re.match(r"must be a single (int|float) value", note)
        if match:
            return (n % 1000, False) if match.group(1) == "int" else ((n % 10000) / 10000, False)
        for prefix in ("must exactly match (no extra characters) one of: ", "must be one of: "):
            if note.startswith(prefix):
                members = note[len(prefix) :].split("; ")
                return members[n % len(members)], True
        prefix = "must adhere to the JSON schema: "
        if note.startswith(prefix):
            try:
                schema = json.loads(note[len(prefix) :])
            except ValueError:
                return self.text(out.name), True
            return self.from_schema(schema, out.name, schema.get("$defs", {}), 0), False
        return self.text(out.name), True

    def from_schema(self, schema: Any, path: str, defs: dict[str, Any], depth: int) -> Any:
        if depth > 16 or not isinstance(schema, dict):
            return None
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return self.from_schema(defs.get(ref[len("#/$defs/") :], {}), path, defs, depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][self.number(path) % len(schema["enum"])]
        for key in ("anyOf", "oneOf", "allOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                chosen = next(
                    (b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")),
                    branches[0],
                )
                return self.from_schema(chosen, path, defs, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        n = self.number(path)
        if kind == "string":
            return self.text(path)
        if kind == "integer":
            return n % 1000
        if kind == "number":
            return (n % 10000) / 10000
        if kind == "boolean":
            return n % 2 == 1
        if kind == "null":
            return None
        if kind == "array":
            prefix = schema.get("prefixItems")
            if isinstance(prefix, list):
                return [
                    self.from_schema(s, f"{path}[{i}]", defs, depth + 1)
                    for i, s in enumerate(prefix)
                ]
            items = schema.get("items", {"type": "string"})
            return [self.from_schema(items, f"{path}[{i}]", defs, depth + 1) for i in range(2)]
        if kind == "object" or "properties" in schema:
            props = schema.get("properties")
            if isinstance(props, dict) and props:
                return {
                    k: self.from_schema(s, f"{path}.{k}", defs, depth + 1) for k, s in props.items()
                }
            extra = schema.get("additionalProperties", {"type": "string"})
            if not isinstance(extra, dict):
                extra = {"type": "string"}
            return {
                f"k{i}": self.from_schema(extra, f"{path}.k{i}", defs, depth + 1) for i in range(2)
            }
        return self.text(path)


def _render(value: Any, is_text: bool) -> str:
    if is_text and isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _message_text(message: Any) -> str:
    text = getattr(message, "text", None)
    if isinstance(text, str):
        return text
    parts = getattr(message, "parts", ()) or ()
    return "".join(getattr(p, "text", "") or "" for p in parts)


# --- what the dummy engine understands beyond plain signatures -------------------------

# ReAct (dspy.ReAct): the step signature's outputs, and the tool list in its instructions:
# "(1) lookup, whose description is <desc>...</desc>. It takes arguments {...}." (the
# arguments are the repr of the tool's ``args``, a map of argument name -> JSON schema).
_REACT_OUTPUTS = ("next_thought", "next_tool_name", "next_tool_args")
_REACT_FINISH = "finish"
_REACT_TOOL = re.compile(
    r"^\s*\((\d+)\) ([^\s,]+?)(?:, whose description is <desc>.*</desc>)?\. "
    r"It takes arguments (\{.*\})\.\s*$",
    re.MULTILINE,
)
_REACT_OBSERVATION = re.compile(r"\[\[ ## observation_\d+ ## \]\]")
_LITERAL_PREFIXES = ("must exactly match (no extra characters) one of: ", "must be one of: ")
_MAX_TOOL_ARGS_TEXT = 256 * 1024
# The tokenizer behind the dummy engine's usage counts: words and single punctuation marks.
_TOKEN = re.compile(r"\w+|[^\w\s]")
# Streamed answers come in pieces of this many whitespace-separated words.
STREAM_WORDS = 2
_STREAM_WORD = re.compile(r"\s*\S+")


def count_tokens(text: str) -> int:
    """The dummy engine's token count of ``text``: ``len(re.findall(r"\\w+|[^\\w\\s]", text))``."""
    return len(_TOKEN.findall(text))


def stream_pieces(text: str, words: int = STREAM_WORDS) -> list[str]:
    """``text`` in pieces of ``words`` words (each with the whitespace before it); joined,
    the pieces are ``text`` again."""
    found = _STREAM_WORD.findall(text)
    pieces = ["".join(found[i : i + words]) for i in range(0, len(found), words)]
    rest = text[sum(len(p) for p in pieces) :]
    if rest:
        if pieces:
            pieces[-1] += rest
        else:
            pieces.append(rest)
    return pieces


def _literal_members(note: str) -> list[str]:
    for prefix in _LITERAL_PREFIXES:
        if note.startswith(prefix):
            return note[len(prefix) :].split("; ")
    return []


def _react_tools(system: str) -> dict[str, dict[str, Any]]:
    """ReAct's tools as listed in its instructions: name -> argument schemas."""
    tools: dict[str, dict[str, Any]] = {}
    for _, name, args_text in _REACT_TOOL.findall(system):
        args: Any = {}
        if len(args_text) <= _MAX_TOOL_ARGS_TEXT:
            try:
                # A Python literal (the repr of a map of JSON schemas): literal_eval only
                # parses literals, it never runs anything.
                args = ast.literal_eval(args_text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                args = {}
        tools.setdefault(name, args if isinstance(args, dict) else {})
    return tools


def _react_step(
    system: str, user: str, outputs: list[_OutputField], gen: _Generator
) -> dict[str, tuple[Any, bool]]:
    """ReAct's step outputs: the first tool (with schema-conforming arguments) until the
    trajectory holds an observation, then ``finish``."""
    names = {o.name: o for o in outputs}
    if not all(name in names for name in _REACT_OUTPUTS):
        return {}
    members = _literal_members(names["next_tool_name"].note)
    tools = _react_tools(system)
    candidates = [m for m in members if m != _REACT_FINISH] or [
        t for t in tools if t != _REACT_FINISH
    ]
    done = _REACT_OBSERVATION.search(user) is not None
    if done or not candidates:
        tool, args = _REACT_FINISH, {}
    else:
        tool = candidates[0]
        schema = {"type": "object", "properties": tools.get(tool, {})}
        args = gen.from_schema(schema, "next_tool_args", {}, 0)
        if not isinstance(args, dict):
            args = {}
    return {
        "next_thought": (
            f"next_thought: {gen.short}. "
            + ("I have what I need; finishing." if tool == _REACT_FINISH else f"Calling {tool}."),
            True,
        ),
        "next_tool_name": (tool, True),
        "next_tool_args": (args, False),
    }


def _advice(sections: dict[str, str], gen: _Generator) -> dict[str, str] | None:
    """Refine's feedback step (``OfferFeedback``): one piece of advice per module name."""
    raw = sections.get("module_names")
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return {name: f"advice for {name}: {gen.short}" for name in names}


# An output an incomplete demo does not supply (ChatAdapter's ``missing_field_message``).
_NOT_SUPPLIED = "Not supplied for this particular example"


def _demo_pairs(messages: Any) -> list[tuple[str, str]]:
    """The (user, assistant) message pairs of a request before its last user message."""
    items = list(messages)
    last_user = max(
        (i for i, m in enumerate(items) if getattr(m, "role", None) == "user"), default=-1
    )
    pairs: list[tuple[str, str]] = []
    for i in range(max(last_user - 1, 0)):
        first, second = items[i], items[i + 1]
        if getattr(first, "role", None) == "user" and getattr(second, "role", None) == "assistant":
            pairs.append((_message_text(first), _message_text(second)))
    return pairs


def _demo_outputs(text: str, names: list[str]) -> dict[str, tuple[Any, bool]]:
    """The output values a demo's assistant message supplies: name -> (value, is_text)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return {
                name: (parsed[name], False)
                for name in names
                if name in parsed
                and not (isinstance(parsed[name], str) and parsed[name].startswith(_NOT_SUPPLIED))
            }
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        match = _HEADER.fullmatch(line.strip())
        if match:
            current = match.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    found: dict[str, tuple[Any, bool]] = {}
    for name in names:
        if name in sections:
            value = "\n".join(sections[name]).strip()
            if not value.startswith(_NOT_SUPPLIED):
                found[name] = (value, True)
    return found


def _followed(
    demos: list[tuple[str, str]],
    input_names: list[str],
    sections: dict[str, str],
    output_names: list[str],
) -> dict[str, tuple[Any, bool]]:
    """``follow_examples``: the outputs of the last demo whose inputs equal the request's."""
    if not sections:
        return {}
    for user, assistant in reversed(demos):
        if _sections(user, input_names) == sections:
            return _demo_outputs(assistant, output_names)
    return {}


class DummyEngine:
    """A DSPy 3.4 canonical engine (``complete(Request) -> Response``) that needs no network.

    Besides plain signatures it speaks what DSPy's modules ask of an LM: ReAct's steps
    (``next_thought`` / ``next_tool_name`` / ``next_tool_args``: the first listed tool with
    arguments made from its JSON schema while the trajectory has no observation, then
    ``finish``), Refine's feedback (``advice`` keyed by the ``module_names`` it was given),
    MultiChainComparison's ``rationale``. Usage is counted honestly with ``count_tokens``
    (prompt: the system text and every message; completion: the answer), and ``stream``
    yields the answer in pieces of ``STREAM_WORDS`` words.
    """

    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = False
    supported_params: tuple[str, ...] = ()

    def __init__(
        self,
        latency_ms: float = 0.0,
        seed: str = "",
        fail_fields: tuple[str, ...] = (),
        *,
        follow_examples: bool = False,
    ) -> None:
        self.latency_ms = latency_ms
        self.seed = seed
        self.fail_fields = frozenset(fail_fields)
        self.follow_examples = follow_examples

    def answer(
        self,
        system: str,
        user: str,
        json_mode: bool = False,
        demos: list[tuple[str, str]] | None = None,
    ) -> str:
        """The completion text for a rendered prompt (also used by ``openai_stub``).

        ``demos`` are the (user, assistant) message pairs before the request, followed with
        ``follow_examples``. Fields named in ``fail_fields`` (a test aid) come out unusable: a
        text field is left out, any other gets a value no parser accepts.
        """
        input_names, outputs = _parse_prompt(system)
        sections = _sections(user, input_names)
        digest = _digest_of(sections, user, self.seed)
        gen = _Generator(digest, input_names)
        if not outputs:
            return f"dummy: {digest[:8]}"
        json_mode = json_mode or _JSON_MARKER in system
        planned = _react_step(system, user, outputs, gen)
        if self.follow_examples and demos:
            planned = {
                **planned,
                **_followed(demos, input_names, sections, [o.name for o in outputs]),
            }
        values: list[tuple[str, Any, bool]] = []
        for out in outputs:
            if out.name in planned:
                value, is_text = planned[out.name]
            else:
                advice = _advice(sections, gen) if out.name == "advice" else None
                value, is_text = (advice, False) if advice is not None else gen.field_value(out)
            if out.name in self.fail_fields:
                if is_text:
                    continue
                value, is_text = UNPARSEABLE, True
            values.append((out.name, value, is_text))
        if json_mode:
            return json.dumps({name: value for name, value, _ in values}, ensure_ascii=False)
        parts = [
            f"[[ ## {name} ## ]]\n{_render(value, is_text)}" for name, value, is_text in values
        ]
        parts.append("[[ ## completed ## ]]")
        return "\n\n".join(parts)

    def _respond(self, request: Any) -> tuple[str, int, int]:
        """(answer text, prompt tokens, completion tokens) for an lm15 request."""
        slot = current_request()
        if self.latency_ms > 0:
            # Ends early (and raises) at the current request's deadline or abandonment.
            cooperative_sleep(self.latency_ms / 1000.0)
        elif slot is not None:
            slot.check()  # abandoned work makes no more calls
        system = request.system
        if system is None:
            system_text = ""
        elif isinstance(system, str):
            system_text = system
        else:
            system_text = "".join(getattr(p, "text", "") or "" for p in system)
        texts = [_message_text(m) for m in request.messages]
        users = [m for m in request.messages if getattr(m, "role", None) == "user"]
        user_text = _message_text(users[-1]) if users else ""
        json_mode = getattr(request.config, "response_format", None) is not None
        demos = _demo_pairs(request.messages) if self.follow_examples else None
        text = self.answer(system_text, user_text, json_mode, demos)
        prompt_tokens = count_tokens(system_text) + sum(count_tokens(t) for t in texts)
        return text, prompt_tokens, count_tokens(text)

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart, Usage

        text, prompt_tokens, completion_tokens = self._respond(request)
        return Response(
            id=None,
            model=DUMMY_MODEL,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(
                input_tokens=prompt_tokens,
                output_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    def stream(self, request: Any) -> Iterator[Any]:
        """The answer as lm15 stream events: start, one text delta per piece, end (with usage).

        Between pieces the current request is checked: abandoned (cancelled, past its
        deadline) streaming work stops there.
        """
        from dspy.lm15 import StreamDeltaEvent, StreamEndEvent, StreamStartEvent, TextDelta, Usage

        text, prompt_tokens, completion_tokens = self._respond(request)
        slot = current_request()
        yield StreamStartEvent(id=None, model=DUMMY_MODEL)
        for piece in stream_pieces(text):
            if slot is not None:
                slot.check()
            yield StreamDeltaEvent(delta=TextDelta(text=piece, part_index=0))
        yield StreamEndEvent(
            finish_reason="stop",
            usage=Usage(
                input_tokens=prompt_tokens,
                output_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    def close(self) -> None:
        return None
