"""The DSPy modules a program definition can name, their ``module_args``, and building them.

* ``predict`` - no ``module_args``.
* ``chain_of_thought`` (``cot``) - no ``module_args``; adds ``reasoning``.
* ``react`` - ``tools``: ``[{"name", "description", "args"}]`` (``args`` a JSON object schema:
  ``properties``, ``required``), ``max_iters`` (default 10); adds ``trajectory`` (JSON text)
  and ``reasoning``.
* ``best_of_n`` / ``refine`` - ``n`` (>= 1), ``threshold``, ``reward`` (a callback name),
  ``base`` (``predict`` | ``chain_of_thought``, default ``predict``), ``fail_count``; adds
  ``reasoning`` with a ``chain_of_thought`` base.
* ``multi_chain_comparison`` (``mcc``) - ``m`` (default 3): ``m`` chain-of-thought attempts,
  then ``dspy.MultiChainComparison(signature, M=m)``; adds ``rationale``.
* ``python`` - ``path`` (``"pkg.mod:Attr"``), ``kwargs`` (a map).
* ``program_of_thought`` (``pot``), ``code_act`` (``codeact``) - refused: they need Deno.

Module names are matched case-insensitively, without ``_`` and an optional ``dspy.``
prefix (``ChainOfThought``, ``dspy.ReAct``, ``BestOfN``). Added outputs come first in a
program's outputs and are returned as text (the ReAct trajectory as JSON text).

Host functions are reached by callbacks (``callbacks.py``): a ReAct tool calls back its own
name with the tool-call arguments (its result is the observation; an error answer becomes
ReAct's "Execution error in <tool>: ..." observation), a reward calls back ``reward`` with
``{"inputs", "outputs"}`` and must answer a number.

A ``python`` module is the user's own DSPy module class (or factory) ``Attr`` of module
``pkg.mod``, imported only from the service's project directory (``DSPEX_PROJECT_DIR``: the
top-level package must be found there, and ``Attr`` must be defined there) and constructed
once per program version with ``**kwargs``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import keyword
import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArguments, ModuleImportError, ToolError
from .logs import redact
from .plain import to_plain
from .requests import current_request
from .signatures import FieldSpec, SignatureSpec, TypeSpec, convert_output

log = logging.getLogger("dspex_bridge.modules")

PREDICT = "predict"
CHAIN_OF_THOUGHT = "chain_of_thought"
REACT = "react"
BEST_OF_N = "best_of_n"
REFINE = "refine"
MULTI_CHAIN = "multi_chain_comparison"
PYTHON = "python"
MODULES: tuple[str, ...] = (
    PREDICT,
    CHAIN_OF_THOUGHT,
    REACT,
    BEST_OF_N,
    REFINE,
    MULTI_CHAIN,
    PYTHON,
)
# Normalised name (lower case, no "_", no "dspy.") -> module.
MODULE_ALIASES: dict[str, str] = {
    "predict": PREDICT,
    "chainofthought": CHAIN_OF_THOUGHT,
    "cot": CHAIN_OF_THOUGHT,
    "react": REACT,
    "bestofn": BEST_OF_N,
    "refine": REFINE,
    "multichaincomparison": MULTI_CHAIN,
    "mcc": MULTI_CHAIN,
    "python": PYTHON,
}
# DSPy modules that run generated code in a Deno sandbox: refused.
DENO_MODULES: dict[str, str] = {
    "programofthought": "program_of_thought",
    "pot": "program_of_thought",
    "codeact": "code_act",
}

REACT_FINISH = "finish"
DEFAULT_MAX_ITERS = 10
MAX_ITERS_LIMIT = 100
MAX_TOOLS = 64
MAX_N = 32
DEFAULT_M = 3
MAX_M = 16
MAX_NAME = 128
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

REASONING = FieldSpec("reasoning", TypeSpec("str"))
TRAJECTORY = FieldSpec("trajectory", TypeSpec("str"))
RATIONALE = FieldSpec("rationale", TypeSpec("str"))


@dataclass(frozen=True)
class ToolSpec:
    """A host tool of a ReAct program."""

    name: str
    description: str
    properties: dict[str, Any]
    required: tuple[str, ...]
    additional: bool

    def check_call(self, kwargs: dict[str, Any]) -> None:
        """Refuse a tool call the schema does not allow (it becomes a ReAct observation)."""
        missing = [name for name in self.required if name not in kwargs]
        if missing:
            raise ValueError(f"tool {self.name!r}: missing required argument(s) {missing}")
        if not self.additional:
            unknown = sorted(k for k in kwargs if k not in self.properties)
            if unknown:
                raise ValueError(f"tool {self.name!r}: unknown argument(s) {unknown}")


@dataclass(frozen=True)
class ModuleSpec:
    """A validated module choice: its kind, normalised ``module_args`` and added outputs."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    tools: tuple[ToolSpec, ...] = ()
    extra_outputs: tuple[FieldSpec, ...] = ()
    # Field names the module uses itself: a signature may not declare them.
    reserved: frozenset[str] = frozenset()


# --- validation ------------------------------------------------------------------------------


def _bad(message: str, **details: Any) -> InvalidArguments:
    return InvalidArguments(message, {"field": "module_args", **details})


def normalise_module(module: Any) -> str:
    """The module kind a definition's ``module`` names; ``InvalidArguments`` otherwise."""
    if not isinstance(module, str) or not module:
        raise InvalidArguments("'module' must be a string", {"field": "module"})
    key = module.lower().removeprefix("dspy.").replace("_", "")
    kind = MODULE_ALIASES.get(key)
    if kind is not None:
        return kind
    deno = DENO_MODULES.get(key)
    if deno is not None:
        raise InvalidArguments(
            f"module {module!r} ({deno}) needs Deno, which is not available on this host",
            {"field": "module", "module": module, "reason": "needs_deno"},
        )
    raise InvalidArguments(
        f"unknown module {module!r}",
        {"field": "module", "module": module, "available": list(MODULES)},
    )


def _int_arg(args: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int:
    value = args.get(key, default)
    if value is None:
        raise _bad(f"module_args.{key} is required (an integer)", key=key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _bad(f"module_args.{key} must be an integer in [{lo}, {hi}]", key=key)
    return value


def _no_unknown(args: dict[str, Any], known: set[str], kind: str) -> None:
    unknown = sorted(str(k) for k in args if k not in known)
    if unknown:
        raise _bad(
            f"module {kind} takes no module_args {unknown}"
            if not known
            else f"unknown module_args {unknown} for module {kind} (known: {sorted(known)})",
            unknown=unknown,
        )


def _tool_spec(raw: Any, index: int, seen: set[str]) -> ToolSpec:
    where = f"module_args.tools[{index}]"
    if not isinstance(raw, dict):
        raise _bad(f"{where} must be a map", index=index)
    name = raw.get("name")
    label = name if isinstance(name, str) else f"#{index}"

    def bad(message: str) -> InvalidArguments:
        return _bad(f"{where} (tool {label!r}): {message}", index=index, tool=label)

    unknown = sorted(str(k) for k in raw if k not in ("name", "description", "args"))
    if unknown:
        raise bad(f"unknown keys {unknown}")
    if (
        not isinstance(name, str)
        or not name.isidentifier()
        or not name.isascii()
        or keyword.iskeyword(name)
        or len(name) > MAX_NAME
    ):
        raise bad("the name must be an identifier")
    if name == REACT_FINISH:
        raise bad(f"{REACT_FINISH!r} is ReAct's own tool")
    if name in seen:
        raise bad("duplicate tool name")
    seen.add(name)
    description = raw.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise bad("the description must be a string")
    schema = raw.get("args", {"type": "object", "properties": {}})
    if not isinstance(schema, dict):
        raise bad("args must be a JSON object schema (a map)")
    if schema.get("type", "object") != "object":
        raise bad('args must be an object schema ("type": "object")')
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or not all(
        isinstance(k, str) and k and isinstance(v, dict) for k, v in properties.items()
    ):
        raise bad("args.properties must map argument names to JSON schemas")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise bad("args.required must be a list of argument names")
    missing = sorted(r for r in required if r not in properties)
    if missing:
        raise bad(f"args.required names unknown arguments {missing}")
    additional = schema.get("additionalProperties", True)
    return ToolSpec(
        name=name,
        description=description,
        properties=to_plain(properties),
        required=tuple(required),
        additional=additional is not False,
    )


def _reward_args(args: dict[str, Any], kind: str) -> dict[str, Any]:
    _no_unknown(args, {"n", "threshold", "reward", "base", "fail_count"}, kind)
    n = _int_arg(args, "n", None, 1, MAX_N)
    threshold = args.get("threshold")
    if (
        not isinstance(threshold, (int, float))
        or isinstance(threshold, bool)
        or not math.isfinite(threshold)
    ):
        raise _bad("module_args.threshold is required (a finite number)", key="threshold")
    reward = args.get("reward")
    if not isinstance(reward, str) or not reward or len(reward) > MAX_NAME:
        raise _bad("module_args.reward must name the host's reward callback", key="reward")
    base = args.get("base", PREDICT)
    base_kind = MODULE_ALIASES.get(str(base).lower().replace("_", "")) if base else None
    if base_kind not in (PREDICT, CHAIN_OF_THOUGHT):
        raise _bad("module_args.base must be predict or chain_of_thought", key="base")
    out: dict[str, Any] = {
        "n": n,
        "threshold": float(threshold),
        "reward": reward,
        "base": base_kind,
    }
    if args.get("fail_count") is not None:
        out["fail_count"] = _int_arg(args, "fail_count", None, 1, MAX_N)
    return out


def _no_project_dir() -> InvalidArguments:
    return InvalidArguments(
        "python modules are disabled: the worker has no project directory "
        "(set DSPEX_PROJECT_DIR to an absolute path)",
        {"field": "module", "module": PYTHON, "reason": "no_project_dir"},
    )


def _python_args(args: dict[str, Any], project_dir: str | None) -> dict[str, Any]:
    _no_unknown(args, {"path", "kwargs"}, PYTHON)
    if project_dir is None:
        raise _no_project_dir()
    path = args.get("path")
    if not isinstance(path, str) or path.count(":") != 1:
        raise _bad('module_args.path must be "package.module:Attribute"', key="path")
    module_name, attr = path.split(":")
    if not _DOTTED.match(module_name) or not attr.isidentifier() or attr.startswith("_"):
        raise _bad('module_args.path must be "package.module:Attribute"', key="path", path=path)
    kwargs = args.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise _bad("module_args.kwargs must be a map", key="kwargs")
    return {"path": path, "kwargs": kwargs}


def parse_module(
    kind: str, module_args: dict[str, Any], project_dir: str | None = None
) -> ModuleSpec:
    """Validate ``module_args`` for module ``kind`` (from ``normalise_module``)."""
    if kind in (PREDICT, CHAIN_OF_THOUGHT):
        _no_unknown(module_args, set(), kind)
        if kind == PREDICT:
            return ModuleSpec(kind)
        return ModuleSpec(kind, extra_outputs=(REASONING,), reserved=frozenset({"reasoning"}))
    if kind == REACT:
        _no_unknown(module_args, {"tools", "max_iters"}, kind)
        raw_tools = module_args.get("tools")
        if not isinstance(raw_tools, list):
            raise _bad("module_args.tools must be a list of tool specs", key="tools")
        if len(raw_tools) > MAX_TOOLS:
            raise _bad(f"more than {MAX_TOOLS} tools", key="tools")
        seen: set[str] = set()
        tools = tuple(_tool_spec(t, i, seen) for i, t in enumerate(raw_tools))
        max_iters = _int_arg(module_args, "max_iters", DEFAULT_MAX_ITERS, 1, MAX_ITERS_LIMIT)
        return ModuleSpec(
            kind,
            {"max_iters": max_iters},
            tools,
            (TRAJECTORY, REASONING),
            frozenset(
                {
                    "trajectory",
                    "reasoning",
                    "next_thought",
                    "next_tool_name",
                    "next_tool_args",
                    "max_iters",  # ReAct.forward takes it out of the inputs
                }
            ),
        )
    if kind in (BEST_OF_N, REFINE):
        args = _reward_args(module_args, kind)
        extra = (REASONING,) if args["base"] == CHAIN_OF_THOUGHT else ()
        reserved = {"reasoning"} if extra else set()
        if kind == REFINE:
            reserved.add("hint_")
        return ModuleSpec(kind, args, extra_outputs=extra, reserved=frozenset(reserved))
    if kind == MULTI_CHAIN:
        _no_unknown(module_args, {"m"}, kind)
        m = _int_arg(module_args, "m", DEFAULT_M, 1, MAX_M)
        reserved = {"rationale", "reasoning", "completions"}
        reserved.update(f"reasoning_attempt_{i + 1}" for i in range(m))
        return ModuleSpec(kind, {"m": m}, extra_outputs=(RATIONALE,), reserved=frozenset(reserved))
    if kind == PYTHON:
        return ModuleSpec(kind, _python_args(module_args, project_dir))
    raise InvalidArguments(
        f"unknown module {kind!r}", {"field": "module", "available": list(MODULES)}
    )


# --- building ----------------------------------------------------------------------------------


def _current_slot(what: str) -> Any:
    slot = current_request()
    if slot is None:
        raise RuntimeError(f"{what} can only run inside a request")
    return slot


def _host_tool(tool: ToolSpec) -> Any:
    """A ``dspy.Tool`` whose function calls the tool back on the host."""
    import dspy

    def call_host(**kwargs: Any) -> Any:
        tool.check_call(kwargs)
        return _current_slot(f"tool {tool.name!r}").callback(tool.name, kwargs)

    call_host.__name__ = tool.name
    call_host.__qualname__ = tool.name
    return dspy.Tool(call_host, name=tool.name, desc=tool.description, args=dict(tool.properties))


class HostReward:
    """The reward function of a BestOfN / Refine program: a callback to the host.

    Called as ``reward(inputs, prediction)``; sends ``{"inputs", "outputs"}`` (the declared
    output fields, converted to their types) and returns the host's number. Anything else
    raises (``ToolError``), which BestOfN and Refine count as a failed attempt. The last
    failure is kept for the request (``last_error``).
    """

    def __init__(self, name: str, outputs: tuple[FieldSpec, ...]) -> None:
        self.name = name
        self.outputs = outputs
        self.last_error: BaseException | None = None

    def __call__(self, inputs: dict[str, Any], prediction: Any) -> float:
        try:
            values = {
                f.name: convert_output(f.effective_type, prediction[f.name], f.name)
                for f in self.outputs
            }
            slot = _current_slot(f"reward {self.name!r}")
            result = slot.callback(
                self.name, {"inputs": to_plain(inputs), "outputs": to_plain(values)}
            )
            ok = isinstance(result, (int, float)) and not isinstance(result, bool)
            if not ok or not math.isfinite(result):
                raise ToolError(
                    f"reward {self.name!r} answered {type(result).__name__}, not a number",
                    {"tool": self.name, "reason": "not_a_number"},
                )
            return float(result)
        except BaseException as exc:
            self.last_error = exc
            raise


@functools.cache
def _multi_chain_class() -> type:
    import dspy

    class MultiChain(dspy.Module):  # type: ignore[misc]
        """``m`` chain-of-thought attempts, then ``dspy.MultiChainComparison`` over them.

        Each attempt uses a copy of the current LM with its own ``rollout_id`` (and
        temperature 1.0, as BestOfN does), so a real LM's cache does not answer all ``m``
        attempts with the first.
        """

        def __init__(self, signature: Any, m: int) -> None:
            super().__init__()
            self.m = m
            self.attempt = dspy.ChainOfThought(signature)
            self.compare = dspy.MultiChainComparison(signature, M=m)

        def forward(self, **kwargs: Any) -> Any:
            lm = self.attempt.get_lm() or dspy.settings.lm
            completions = []
            for i in range(self.m):
                scope = (
                    dspy.context(lm=lm.copy(rollout_id=i, temperature=1.0))
                    if lm is not None
                    else nullcontext()
                )
                with scope:
                    completions.append(self.attempt(**kwargs))
            return self.compare(completions=completions, **kwargs)

    return MultiChain


def _error_text(exc: BaseException) -> str:
    return redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def _inside(path: str, root: str) -> bool:
    real = os.path.realpath(path)
    try:
        return os.path.commonpath([real, root]) == root
    except ValueError:
        return False


def import_python_module(path: str, kwargs: dict[str, Any], project_dir: str) -> Any:
    """Import ``pkg.mod:Attr`` from ``project_dir`` and construct it with ``**kwargs``."""
    module_name, attr = path.split(":")
    top = module_name.split(".")[0]

    def failed(stage: str, message: str, exc: BaseException | None = None, **extra: Any) -> Any:
        return ModuleImportError(
            message,
            {"path": path, "stage": stage, **extra},
            traceback=_error_text(exc) if exc is not None else None,
        )

    try:
        spec = importlib.util.find_spec(top)
    except (Exception, SystemExit) as exc:  # a broken package __init__ on the way
        raise failed("import", f"cannot import {module_name!r}: {exc}", exc) from exc
    if spec is None:
        raise failed("import", f"no module {top!r} in the project directory", reason="not_found")
    locations = list(spec.submodule_search_locations or []) or [spec.origin]
    if not locations or not all(
        isinstance(loc, str) and _inside(loc, project_dir) for loc in locations
    ):
        raise failed(
            "import",
            f"module {top!r} is not inside the project directory {project_dir}",
            reason="outside_project_dir",
            origin=spec.origin,
        )
    try:
        module = importlib.import_module(module_name)
        target: Any = getattr(module, attr)
    except (Exception, SystemExit) as exc:  # SyntaxError and friends included
        raise failed("import", f"cannot import {path!r}: {type(exc).__name__}: {exc}", exc) from exc
    if not callable(target):
        raise failed("import", f"{path!r} is not a class or a factory")
    # What is called must be defined in the project too (not, say, a stdlib function the
    # user's module happens to import).
    defined_in = getattr(sys.modules.get(getattr(target, "__module__", "") or ""), "__file__", None)
    if not isinstance(defined_in, str) or not _inside(defined_in, project_dir):
        raise failed(
            "import",
            f"{path!r} is not defined inside the project directory {project_dir}",
            reason="outside_project_dir",
            origin=defined_in,
        )
    try:
        instance = target(**kwargs)
    except (Exception, SystemExit) as exc:
        raise failed(
            "construct", f"constructing {path!r} failed: {type(exc).__name__}: {exc}", exc
        ) from exc
    if not callable(instance):
        raise failed("construct", f"{path!r} built a {type(instance).__name__}, not a module")
    log.info("imported python module %s (%s)", path, type(instance).__name__)
    return instance


def _set_demos(predictor: Any, demos: list[dict[str, Any]], spec: SignatureSpec) -> None:
    import dspy

    input_names = [f.name for f in spec.inputs]
    predictor.demos = [
        dspy.Example(**demo).with_inputs(*[n for n in input_names if n in demo]) for demo in demos
    ]


class ProgramModule:
    """The DSPy module of one program version, built once and shared by its requests."""

    def __init__(
        self,
        mspec: ModuleSpec,
        spec: SignatureSpec,
        signature: Any,
        demos: list[dict[str, Any]],
        project_dir: str | None = None,
    ) -> None:
        import dspy

        self.mspec = mspec
        self.kind = mspec.kind
        self.spec = spec
        kind = mspec.kind
        # The predictor that produces the program's final outputs (streamed fields).
        self.final: Any = None
        if kind == PREDICT:
            self.module = dspy.Predict(signature)
            self.final = demo_target = self.module
        elif kind == CHAIN_OF_THOUGHT:
            self.module = dspy.ChainOfThought(signature)
            self.final = demo_target = self.module.predict
        elif kind == REACT:
            tools = [_host_tool(t) for t in mspec.tools]
            self.module = dspy.ReAct(signature, tools=tools, max_iters=mspec.args["max_iters"])
            self.final = demo_target = self.module.extract.predict
        elif kind in (BEST_OF_N, REFINE):
            if mspec.args["base"] == CHAIN_OF_THOUGHT:
                self.module = dspy.ChainOfThought(signature)
                demo_target = self.module.predict
            else:
                self.module = dspy.Predict(signature)
                demo_target = self.module
            # Each attempt runs on a copy of this module: nothing to listen to for streaming.
        elif kind == MULTI_CHAIN:
            self.module = _multi_chain_class()(signature, mspec.args["m"])
            demo_target = self.module.attempt.predict
            self.final = self.module.compare.predict
        elif kind == PYTHON:
            if demos:
                raise InvalidArguments(
                    "demos are not supported for python modules (set them in your module)",
                    {"field": "demos", "module": PYTHON},
                )
            if project_dir is None:
                raise _no_project_dir()
            self.module = import_python_module(
                mspec.args["path"], mspec.args["kwargs"], project_dir
            )
            demo_target = None
        else:  # pragma: no cover - parse_module refuses it first
            raise InvalidArguments(f"unknown module {kind!r}", {"field": "module"})
        if demos and demo_target is not None:
            _set_demos(demo_target, demos, spec)

    @property
    def path(self) -> str | None:
        return self.mspec.args.get("path") if self.kind == PYTHON else None

    def runner(self) -> tuple[Callable[..., Any], HostReward | None]:
        """What one request calls (with the DSPy inputs as keywords), and its reward hook.

        BestOfN and Refine count failed attempts on the instance, so each request gets its
        own wrapper around the shared base module.
        """
        import dspy

        if self.kind not in (BEST_OF_N, REFINE):
            return self.module, None
        args = self.mspec.args
        reward = HostReward(args["reward"], self.spec.outputs)
        wrapper_class = dspy.BestOfN if self.kind == BEST_OF_N else dspy.Refine
        wrapper = wrapper_class(
            module=self.module,
            N=args["n"],
            reward_fn=reward,
            threshold=args["threshold"],
            fail_count=args.get("fail_count"),
        )
        if self.kind == REFINE:
            # What Refine's feedback step is shown as "the code of the reward function".
            wrapper.reward_fn_code = (
                f"# The reward is computed by the host function {args['reward']!r}: it gets the\n"
                "# program's inputs and outputs and returns a number; the threshold is "
                f"{args['threshold']!r}.\n"
            )
        return wrapper, reward

    def stream_targets(self, names: list[str]) -> dict[str, Any]:
        """Output field -> the predictor to listen to when streaming it (when one is known)."""
        if self.kind in (BEST_OF_N, REFINE):
            return {}
        if self.final is not None:
            fields = self.final.signature.output_fields
            return {name: self.final for name in names if name in fields}
        named = getattr(self.module, "named_predictors", None)
        if not callable(named):
            return {}
        owners: dict[str, list[Any]] = {}
        try:
            for _, predictor in named():
                for name in predictor.signature.output_fields:
                    owners.setdefault(name, []).append(predictor)
        except Exception:  # a user module we cannot inspect: no streaming
            log.debug("cannot list the predictors of %s", self.path, exc_info=True)
            return {}
        return {name: owners[name][0] for name in names if len(owners.get(name, ())) == 1}
