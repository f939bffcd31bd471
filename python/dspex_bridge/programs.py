"""Program definitions: validation, the program hash, and the built program.

A definition is ``{"program_id", "signature", "module"?, "demos"?, "module_args"?}``
(``create_program``'s arguments, or the ``program`` of ``execute_program`` /
``execute_batch``). Its hash names one version of it on both sides of the pipe.
"""

from __future__ import annotations

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


def program_hash(signature: Any, module: Any, demos: Any, module_args: Any = None) -> str:
    """Hash of a program definition, computable on the Rust side too.

    ``sha256(canonical_json(d))`` as lowercase hex, where ``d`` is
    ``{"signature": signature, "module": module, "demos": demos}`` plus
    ``"module_args": module_args`` only when ``module_args`` is present and not empty (so
    the hash of a definition without module arguments is what it always was), and
    ``canonical_json(obj)`` is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` encoded as UTF-8. Everything is hashed exactly as sent; an absent
    ``module`` counts as ``"predict"`` and absent ``demos`` as ``[]``.
    """
    hashed: dict[str, Any] = {"signature": signature, "module": module, "demos": demos}
    if module_args:
        hashed["module_args"] = module_args
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

    def info(self) -> dict[str, Any]:
        return {
            "program_id": self.program_id,
            "hash": self.hash,
            "module": self.module,
            "signature_name": self.spec.name,
            "inputs": [f.name for f in self.spec.inputs],
            "outputs": [f.name for f in self.spec.all_outputs()],
            "demos": len(self.demos),
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
    digest = program_hash(raw_signature, raw_module, raw_demos, raw_args)
    signature = build_dspy_signature(spec)
    if existing is not None and existing.hash == digest:
        built = existing.built
    else:
        built = ProgramModule(mspec, spec, signature, demos, project_dir)
    stored: dict[str, Any] = {"signature": raw_signature, "module": raw_module, "demos": raw_demos}
    if raw_args:
        stored["module_args"] = raw_args
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
    )
