"""Program definitions: validation, the program hash, and the built program.

A definition is ``{"program_id", "signature", "module"?, "demos"?, "module_args"?, "state"?}``
(``create_program``'s arguments, or the ``program`` of ``execute_program`` /
``execute_batch`` / ``evaluate`` / ``optimize`` / ``get_program_state``). Its hash names one
version of it on both sides of the pipe.

``state`` is DSPy's ``module.dump_state()`` of the program's module (what ``optimize``
returns, or a file written by DSPy's ``module.save(path)`` without its ``metadata``): the
module is built as without it, then ``module.load_state(state)`` (JSON state only, never
pickle; LM state is refused). For the ``predict`` module it is the predictor's own state
(what ``dspy.Predict.dump_state`` writes); otherwise it must name exactly the module's
predictors (``module.named_parameters()``); each must fit its predictor's signature.
Anything else is ``InvalidArguments`` ``{"field": "state", "reason", ...}`` and nothing is
installed. The state carries the predictors' demos and instructions, so with both ``demos``
and ``state`` the state wins.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArguments, SignatureError
from .modules import ModuleSpec, ProgramModule, normalise_module, parse_module
from .signatures import SignatureSpec, build_dspy_signature, parse_signature


def canonical_json(obj: Any) -> str:
    """The canonical JSON text hashed for programs (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def program_hash(
    signature: Any, module: Any, demos: Any, module_args: Any = None, state: Any = None
) -> str:
    """Hash of a program definition, computable on the Rust side too.

    ``sha256(canonical_json(d))`` as lowercase hex, where ``d`` is
    ``{"signature": signature, "module": module, "demos": demos}`` plus
    ``"module_args": module_args`` only when ``module_args`` is present and not empty, and
    ``"state": state`` only when ``state`` is present and not null (so the hash of a
    definition without them is what it always was), and ``canonical_json(obj)`` is
    ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` encoded as
    UTF-8. Everything is hashed exactly as sent; an absent ``module`` counts as ``"predict"``
    and absent ``demos`` as ``[]``.
    """
    hashed: dict[str, Any] = {"signature": signature, "module": module, "demos": demos}
    if module_args:
        hashed["module_args"] = module_args
    if state is not None:
        hashed["state"] = state
    try:
        text = canonical_json(hashed)
    except (TypeError, ValueError) as exc:
        raise InvalidArguments(f"program definition is not JSON-representable: {exc}") from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def definition_hash(definition: dict[str, Any]) -> str:
    """``program_hash`` of a definition map (defaults applied)."""
    demos = definition.get("demos")
    return program_hash(
        definition.get("signature"),
        definition.get("module", "predict"),
        [] if demos is None else demos,
        definition.get("module_args"),
        definition.get("state"),
    )


@dataclass
class Program:
    program_id: str
    hash: str
    module: str
    module_name: str
    definition: dict[str, Any]
    spec: SignatureSpec
    signature: Any
    demos: list[dict[str, Any]]
    created_at: float
    mspec: ModuleSpec
    built: ProgramModule
    executions: int = 0
    has_state: bool = False

    def info(self) -> dict[str, Any]:
        return {
            "program_id": self.program_id,
            "hash": self.hash,
            "module": self.module,
            "signature_name": self.spec.name,
            "inputs": [f.name for f in self.spec.inputs],
            "outputs": [f.name for f in self.spec.all_outputs()],
            "demos": len(self.demos),
            "state": self.has_state,
            "created_at": self.created_at,
            "executions": self.executions,
        }


def _check_demos(demos: Any, spec: SignatureSpec) -> list[dict[str, Any]]:
    if not isinstance(demos, list):
        raise InvalidArguments("'demos' must be a list of maps", {"field": "demos"})
    names = {f.name for f in spec.inputs + spec.all_outputs()}
    for i, demo in enumerate(demos):
        if not isinstance(demo, dict):
            raise InvalidArguments(f"demos[{i}] must be a map", {"field": "demos", "index": i})
        unknown = sorted(str(k) for k in demo if k not in names)
        if unknown:
            raise InvalidArguments(
                f"demos[{i}] has unknown fields {unknown}",
                {"field": "demos", "index": i, "unknown": unknown},
            )
    return demos


def _bad_state(message: str, reason: str, **details: Any) -> InvalidArguments:
    return InvalidArguments(f"state: {message}", {"field": "state", "reason": reason, **details})


def _check_predictor_state(name: str, value: Any, predictor: Any) -> None:
    if not isinstance(value, dict):
        raise _bad_state(f"the state of {name!r} must be a map", "malformed", predictor=name)
    for key in ("demos", "traces", "train"):
        item = value.get(key)
        if item is not None and not isinstance(item, list):
            raise _bad_state(f"{name}.{key} must be a list", "malformed", predictor=name, key=key)
    demos = value.get("demos") or []
    for i, demo in enumerate(demos):
        if not isinstance(demo, dict):
            raise _bad_state(
                f"{name}.demos[{i}] must be a map", "malformed", predictor=name, key="demos"
            )
    if value.get("lm") is not None:
        raise _bad_state(
            f"{name} carries an LM; the worker's LMs come from configure_lm / lm_id "
            "(save the program without an LM set on its predictors)",
            "lm_in_state",
            predictor=name,
        )
    signature = value.get("signature")
    fields = signature.get("fields") if isinstance(signature, dict) else None
    if (
        not isinstance(signature, dict)
        or not isinstance(signature.get("instructions"), str)
        or not isinstance(fields, list)
    ):
        raise _bad_state(
            f'{name}.signature must be {{"instructions": str, "fields": [...]}}',
            "malformed",
            predictor=name,
            key="signature",
        )
    expected = len(getattr(getattr(predictor, "signature", None), "fields", {}) or {})
    if len(fields) != expected:
        raise _bad_state(
            f"{name}.signature has {len(fields)} fields, the program's has {expected}",
            "signature_mismatch",
            predictor=name,
            expected=expected,
            got=len(fields),
        )
    for i, item in enumerate(fields):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("prefix"), str)
            or not isinstance(item.get("description"), str)
        ):
            raise _bad_state(
                f'{name}.signature.fields[{i}] must be {{"prefix": str, "description": str}}',
                "malformed",
                predictor=name,
                key="signature",
            )


def is_single_predictor(module: Any) -> bool:
    """A bare ``dspy.Predict``: its state is the predictor's own map, not name -> state."""
    import dspy

    return isinstance(module, dspy.Predict)


def load_module_state(module: Any, state: Any) -> None:
    """``module.load_state(state)`` after checking that ``state`` fits ``module``.

    For a bare ``dspy.Predict`` (the ``predict`` module) the state is the predictor's own map
    (``traces``, ``train``, ``demos``, ``signature``, ``lm``), as ``dspy.Predict.dump_state``
    writes it; for any other module a map of predictor name (``named_parameters()``) -> such a
    map. ``InvalidArguments`` (``details.field == "state"``) when it does not fit; DSPy's
    ``load_state`` is given a copy, and a failure leaves ``module`` as it was.
    """
    if not isinstance(state, dict):
        raise _bad_state("must be a map", "malformed")
    if "metadata" in state:
        raise _bad_state(
            "carries 'metadata' (a file written by DSPy's save): send the state without it",
            "metadata",
        )
    named = getattr(module, "named_parameters", None)
    if not callable(named) or not callable(getattr(module, "load_state", None)):
        raise _bad_state("this program's module has no DSPy parameters", "not_a_dspy_module")
    if is_single_predictor(module):
        _check_predictor_state("self", state, module)
    else:
        predictors = dict(named())
        names = list(predictors)
        unknown = sorted(str(k) for k in state if k not in predictors)
        missing = [n for n in names if n not in state]
        if unknown or missing:
            raise _bad_state(
                f"names predictors {sorted(map(str, state))}, the program has {names}",
                "predictors",
                expected=names,
                unknown=unknown,
                missing=missing,
            )
        for name in names:
            _check_predictor_state(name, state[name], predictors[name])
    try:
        module.load_state(copy.deepcopy(state))
    except Exception as exc:
        raise _bad_state(
            f"DSPy could not load it: {type(exc).__name__}: {exc}",
            "load_failed",
            exception=type(exc).__name__,
        ) from exc


def build_program(
    program_id: str,
    definition: dict[str, Any],
    project_dir: str | None = None,
    existing: Program | None = None,
) -> Program:
    """Validate a program definition and build its DSPy module (imports DSPy).

    A ``python`` module is imported and constructed here, once per program version: when
    ``existing`` (the program this one replaces) has the same hash, its module is reused.
    """
    if "signature" not in definition:
        raise InvalidArguments("a program needs a 'signature'", {"field": "signature"})
    raw_signature = definition["signature"]
    raw_module = definition.get("module", "predict")
    raw_demos = definition.get("demos")
    if raw_demos is None:
        raw_demos = []
    raw_args = definition.get("module_args")
    if raw_args is None:
        raw_args = {}
    if not isinstance(raw_args, dict):
        raise InvalidArguments("'module_args' must be a map", {"field": "module_args"})
    raw_state = definition.get("state")
    if raw_state is not None and not isinstance(raw_state, dict):
        raise _bad_state("must be a map of predictor name -> predictor state", "malformed")
    kind = normalise_module(raw_module)
    mspec = parse_module(kind, raw_args, project_dir)
    spec = parse_signature(raw_signature)
    declared = {f.name for f in spec.inputs + spec.outputs}
    for name in sorted(mspec.reserved & declared):
        raise SignatureError(
            f"field name {name!r} is used by module {kind} and cannot be declared",
            {"field": name, "module": kind},
        )
    spec = SignatureSpec(
        spec.name, spec.instructions, spec.inputs, spec.outputs, mspec.extra_outputs
    )
    demos = _check_demos(raw_demos, spec)
    digest = program_hash(raw_signature, raw_module, raw_demos, raw_args, raw_state)
    signature = build_dspy_signature(spec)
    if existing is not None and existing.hash == digest:
        built = existing.built
    else:
        built = ProgramModule(mspec, spec, signature, demos, project_dir)
        if raw_state is not None:
            load_module_state(built.module, raw_state)
    stored: dict[str, Any] = {"signature": raw_signature, "module": raw_module, "demos": raw_demos}
    if raw_args:
        stored["module_args"] = raw_args
    if raw_state is not None:
        stored["state"] = raw_state
    return Program(
        program_id=program_id,
        hash=digest,
        module=kind,
        module_name=raw_module,
        definition=stored,
        spec=spec,
        signature=signature,
        demos=demos,
        created_at=time.time(),
        mspec=mspec,
        built=built,
        has_state=raw_state is not None,
    )
