"""Command handlers, the worker state they share, and the command registry.

Besides running programs (``execute_program``, ``execute_batch``) the worker evaluates and
optimizes them for the host: ``evaluate`` (``evaluation.py``), ``optimize``
(``optimization.py``) and ``get_program_state`` (DSPy's ``dump_state()`` of a program's module,
which ``create_program`` takes back as ``state``).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from . import lm as lm_mod
from .errors import (
    DeadlineExceeded,
    InvalidArguments,
    LmNotConfigured,
    ProgramNotFound,
)
from .evaluation import check_metric_labels, parse_examples, parse_metric, run_evaluate
from .execution import (
    batch_threads,
    check_input_map,
    check_inputs,
    run_batch,
    run_program,
)
from .modules import MODULE_ALIASES as MODULE_ALIASES
from .modules import MODULES as MODULES
from .optimization import (
    GEPA,
    USES_VALSET,
    OptimizeRequest,
    check_combination,
    check_seed,
    job_threads,
    normalise_optimizer,
    parse_budget,
    parse_options,
    run_optimize,
)
from .plain import to_plain
from .programs import Program as Program
from .programs import build_program as build_program
from .programs import canonical_json as canonical_json
from .programs import definition_hash
from .programs import program_hash as program_hash
from .requests import MAX_REQUEST_ID, ReplySlot
from .requests import current_request as current_request  # for handlers and engines

if TYPE_CHECKING:
    from .callbacks import CallbackTable
    from .protocol import FrameWriter

log = logging.getLogger("dspex_bridge.commands")

MAX_PROGRAM_ID = 256


class NoReply(BaseException):
    """Raised by a handler that deliberately sends no reply (test faults only)."""


class ServerHooks(Protocol):
    """What handlers may ask of the running server."""

    writer: FrameWriter
    max_concurrency: int

    def exit_now(self, code: int) -> NoReturn: ...

    def shutdown(self, code: int) -> None: ...

    def ignore_shutdown(self) -> None: ...

    def dspy_loaded(self) -> bool: ...

    def cancel_request(self, request_id: int, by: int) -> bool: ...


# --- state ------------------------------------------------------------------------------


class Stats:
    """Request counters, guarded by one lock.

    ``in_flight`` counts dispatched requests whose handler has not finished (queued ones
    included); ``unanswered`` those not answered yet. They differ for a request answered by
    its deadline or by ``cancel`` while its handler still runs (its late result is then
    discarded and counted in ``late_results``).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.in_flight = 0
        self.unanswered = 0
        self.optimizing = 0
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.requests = 0
        self.ok = 0
        self.errors = 0
        self.protocol_errors = 0
        self.no_reply = 0
        self.executions = 0
        self.deadline_exceeded = 0
        self.cancelled = 0
        self.late_results = 0
        self.evaluations = 0
        self.optimizations = 0
        self.max_in_flight = self.in_flight
        self.by_command: dict[str, int] = {}
        self.errors_by_kind: dict[str, int] = {}

    def reset(self) -> None:
        with self.lock:
            self._reset_counters()

    def started(self, command: str) -> None:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.unanswered += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.by_command[command] = self.by_command.get(command, 0) + 1

    def answered(self, error_kind: str | None, *, replied: bool = True) -> None:
        """A dispatched request was answered (``replied=False``: closed without a reply)."""
        with self.lock:
            self.unanswered -= 1
            if not replied:
                self.no_reply += 1
            elif error_kind is None:
                self.ok += 1
            else:
                self.errors += 1
                self.errors_by_kind[error_kind] = self.errors_by_kind.get(error_kind, 0) + 1
                if error_kind == "DeadlineExceeded":
                    self.deadline_exceeded += 1
                elif error_kind == "Cancelled":
                    self.cancelled += 1
            if self.unanswered == 0:
                self.idle.notify_all()

    def finished(self) -> None:
        """A dispatched request's handler finished (or was skipped)."""
        with self.lock:
            self.in_flight -= 1

    def late_result(self) -> None:
        """A handler's result was discarded: its request had been answered already."""
        with self.lock:
            self.late_results += 1

    def rejected(self, error_kind: str) -> None:
        """A request answered with an error before it was dispatched."""
        with self.lock:
            if error_kind == "ProtocolError":
                self.protocol_errors += 1
            self.errors += 1
            self.errors_by_kind[error_kind] = self.errors_by_kind.get(error_kind, 0) + 1

    def executed(self) -> None:
        with self.lock:
            self.executions += 1

    def evaluated(self) -> None:
        with self.lock:
            self.evaluations += 1

    def optimize_started(self) -> None:
        with self.lock:
            self.optimizing += 1

    def optimize_ended(self, ok: bool) -> None:
        with self.lock:
            self.optimizing -= 1
            if ok:
                self.optimizations += 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every dispatched request has been answered; False on timeout.

        Handlers still running for requests answered by their deadline or by ``cancel`` are
        not waited for: their results would be discarded anyway.
        """
        end = time.monotonic() + timeout
        with self.lock:
            while self.unanswered > 0:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.idle.wait(left)
            return True

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "total": self.requests,
                "ok": self.ok,
                "error": self.errors,
                "protocol_errors": self.protocol_errors,
                "no_reply": self.no_reply,
                "in_flight": self.in_flight,
                "unanswered": self.unanswered,
                "max_in_flight": self.max_in_flight,
                "executions": self.executions,
                "deadline_exceeded": self.deadline_exceeded,
                "cancelled": self.cancelled,
                "late_results": self.late_results,
                "evaluations": self.evaluations,
                "optimizations": self.optimizations,
                "optimizing": self.optimizing,
                "by_command": dict(self.by_command),
                "errors_by_kind": dict(self.errors_by_kind),
            }


class WorkerState:
    """Everything the commands share: programs, the default and the named LMs, counters."""

    def __init__(self, worker_id: str, project_dir: str | None = None) -> None:
        self.worker_id = worker_id
        # DSPEX_PROJECT_DIR: where ``python`` modules are imported from (None: refused).
        self.project_dir = project_dir
        self.callbacks: CallbackTable | None = None
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.programs: dict[str, Program] = {}
        self.lm: lm_mod.LmHandle | None = None
        self.lm_cache = lm_mod.LmCache()
        self.named_lms = lm_mod.NamedLms()
        self.stats = Stats()

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)


@dataclass
class Context:
    """One request as a handler sees it.

    ``slot`` is the request's reply slot: its ``deadline`` and ``abandoned`` event are what
    cooperative code looks at (the same slot is ``current_request()`` in the handler thread).
    """

    request_id: int
    command: str
    state: WorkerState
    server: ServerHooks
    session_id: str | None = None
    deadline: float | None = None
    slot: ReplySlot | None = None
    after: list[Callable[[], None]] = field(default_factory=list)

    def after_reply(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the reply has been written."""
        self.after.append(action)

    def check_deadline(self) -> None:
        """Raise if the request was abandoned or its deadline has passed.

        With a slot a passed deadline is answered through it (``DeadlineExceeded`` with
        ``deadline_ms``, ``elapsed_ms``, ``started``, exactly as the scheduler answers) and
        the raised error, which only unwinds the handler, is discarded.
        """
        if self.slot is not None:
            self.slot.check()
        elif self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded(
                "the request deadline passed before it could run",
                {"late_ms": round((time.monotonic() - self.deadline) * 1000, 3)},
            )


Handler = Callable[[Context, dict[str, Any]], Any]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    needs_dspy: bool = False
    inline: bool = False


class Registry:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def register(
        self, name: str, handler: Handler, *, needs_dspy: bool = False, inline: bool = False
    ) -> None:
        self._commands[name] = Command(name, handler, needs_dspy, inline)

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def names(self) -> list[str]:
        return sorted(self._commands)


# --- argument helpers --------------------------------------------------------------------


def require_str(args: dict[str, Any], key: str, *, max_len: int | None = None) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArguments(f"argument {key!r} must be a non-empty string", {"field": key})
    if max_len is not None and len(value) > max_len:
        raise InvalidArguments(f"argument {key!r} is longer than {max_len}", {"field": key})
    return value


def _rss() -> dict[str, int]:
    rss = 0
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss_bytes": rss or max_rss, "max_rss_bytes": max_rss}


# --- handlers -----------------------------------------------------------------------------


def ping(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    state = ctx.state
    return {
        "status": "ok",
        "worker_id": state.worker_id,
        "pid": state.pid,
        "uptime_s": state.uptime(),
        "requests": state.stats.snapshot()["total"],
    }


def configure_lm(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Set the default LM, or with ``lm_id`` register a named LM (the default stays)."""
    config = lm_mod.parse_lm_config({k: v for k, v in args.items() if k != "lm_id"})
    lm_id = args.get("lm_id")
    if lm_id is not None:
        lm_id = lm_mod.check_lm_id(lm_id)
    handle = lm_mod.build_lm(config)
    if lm_id is not None:
        ctx.state.named_lms.put(lm_id, handle)
        log.info("configured LM %s as lm_id %r", config.model, lm_id)
        return {"status": "configured", "model": config.model, "lm_id": lm_id}
    with ctx.state.lock:
        ctx.state.lm = handle
    log.info("configured LM %s", config.model)
    return {"status": "configured", "model": config.model}


def _install(state: WorkerState, program: Program) -> bool:
    with state.lock:
        replaced = program.program_id in state.programs
        state.programs[program.program_id] = program
    return replaced


def create_program(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Build and cache a program; ``hash`` is ``programs.program_hash`` of its definition.

    That is sha256 (lowercase hex) of the UTF-8 canonical JSON
    ``json.dumps({"signature": ..., "module": ..., "demos": [...]} (+ "module_args" when
    present and not empty), sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, so
    the Rust side can compute it too. ``outputs`` lists module-added outputs first.
    """
    program_id = require_str(args, "program_id", max_len=MAX_PROGRAM_ID)
    with ctx.state.lock:
        existing = ctx.state.programs.get(program_id)
    program = build_program(program_id, args, ctx.state.project_dir, existing)
    replaced = _install(ctx.state, program)
    return {
        "program_id": program_id,
        "hash": program.hash,
        "inputs": [f.name for f in program.spec.inputs],
        "outputs": [f.name for f in program.spec.all_outputs()],
        "module": program.module,
        "replaced": replaced,
    }


def _lookup(state: WorkerState, program_id: str) -> Program:
    with state.lock:
        program = state.programs.get(program_id)
    if program is None:
        raise ProgramNotFound(
            f"no program {program_id!r} on this worker", {"program_id": program_id}
        )
    return program


def _ensure_program(ctx: Context, program_id: str, definition: Any) -> Program:
    if not isinstance(definition, dict):
        raise InvalidArguments("'program' must be a program definition map", {"field": "program"})
    inner_id = definition.get("program_id", program_id)
    if inner_id != program_id:
        raise InvalidArguments(
            "'program.program_id' differs from 'program_id'", {"field": "program"}
        )
    wanted = definition_hash(definition)
    with ctx.state.lock:
        current = ctx.state.programs.get(program_id)
    if current is not None and current.hash == wanted:
        return current
    program = build_program(program_id, definition, ctx.state.project_dir)
    _install(ctx.state, program)
    log.info("installed program %s (%s) from execute_program", program_id, program.hash[:12])
    return program


def _resolve_lm(ctx: Context, args: dict[str, Any], program_id: str) -> lm_mod.LmHandle:
    """The LM of an execution: a named one (``lm_id``), an inline ``lm``, or the default."""
    override = args.get("lm")
    lm_id = args.get("lm_id")
    if lm_id is not None:
        if override is not None:
            raise InvalidArguments("pass either 'lm' or 'lm_id', not both", {"field": "lm_id"})
        lm_id = lm_mod.check_lm_id(lm_id)
        named = ctx.state.named_lms.get(lm_id)
        if named is None:
            raise LmNotConfigured(
                f"no LM {lm_id!r} on this worker: send configure_lm with this lm_id first",
                {"lm_id": lm_id, "reason": "unknown_lm_id", "program_id": program_id},
            )
        return named
    handle: lm_mod.LmHandle | None
    if override is not None:
        handle = ctx.state.lm_cache.get(lm_mod.parse_lm_config(override))
    else:
        with ctx.state.lock:
            handle = ctx.state.lm
    if handle is None:
        raise LmNotConfigured(
            "no LM configured: send configure_lm first or pass 'lm' with the request",
            {"program_id": program_id},
        )
    return handle


def _flag(args: dict[str, Any], key: str) -> bool:
    value = args.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidArguments(f"'{key}' must be a bool", {"field": key})
    return value


def _program_of(ctx: Context, args: dict[str, Any], program_id: str) -> Program:
    if args.get("program") is not None:
        return _ensure_program(ctx, program_id, args["program"])
    return _lookup(ctx.state, program_id)


def _counted(ctx: Context, program: Program, runs: int) -> None:
    with ctx.state.lock:
        program.executions += runs
    for _ in range(runs):
        ctx.state.stats.executed()


def execute_program(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Run a program once.

    ``stream: true`` (on a request with ``events: true``) sends its ``str`` outputs as
    ``chunk`` events while the LM produces them; ``lm_history: true`` adds the request's LM
    calls as ``lm_history``. The reply carries ``usage`` (``{model: {prompt_tokens,
    completion_tokens, total_tokens}}``, as DSPy tracked it).
    """
    started = time.perf_counter()
    program_id = require_str(args, "program_id", max_len=MAX_PROGRAM_ID)
    stream = _flag(args, "stream")
    lm_history = _flag(args, "lm_history")
    program = _program_of(ctx, args, program_id)
    checked = check_inputs(program.spec, check_input_map(args.get("inputs", {})))
    handle = _resolve_lm(ctx, args, program_id)
    ctx.check_deadline()
    outputs, usage, history = run_program(
        ctx.slot, program, handle, checked, stream=stream, lm_history=lm_history
    )
    _counted(ctx, program, 1)
    result: dict[str, Any] = {
        "program_id": program_id,
        "outputs": outputs,
        "usage": usage,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        "model": handle.model,
    }
    if history is not None:
        result["lm_history"] = history
    return result


def execute_batch(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Run a program on many inputs with DSPy's own parallelism (``dspy.Parallel``).

    ``results`` are in input order, each ``{"outputs", "usage"}`` or ``{"error": {"kind", "message",
    "details"}}`` (a bad item does not fail the batch); ``progress`` events follow each item
    when the request carried ``events: true``. The request's deadline covers the batch.
    """
    started = time.perf_counter()
    program_id = require_str(args, "program_id", max_len=MAX_PROGRAM_ID)
    items = args.get("inputs")
    if not isinstance(items, list):
        raise InvalidArguments("'inputs' must be a list of maps", {"field": "inputs"})
    num_threads = batch_threads(args.get("num_threads"), len(items))
    program = _program_of(ctx, args, program_id)
    handle = _resolve_lm(ctx, args, program_id)
    ctx.check_deadline()
    assert ctx.slot is not None
    results, usage = run_batch(ctx.slot, program, handle, items, num_threads)
    _counted(ctx, program, sum(1 for r in results if "outputs" in r))
    return {
        "program_id": program_id,
        "results": results,
        "usage": usage,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        "model": handle.model,
    }


def _duration(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _dspy_module(program: Program) -> Any:
    module = program.built.module
    if not callable(getattr(module, "dump_state", None)) or not callable(
        getattr(module, "named_parameters", None)
    ):
        raise InvalidArguments(
            f"program {program.program_id!r}: its module is not a DSPy module (no state)",
            {"field": "program", "reason": "not_a_dspy_module", "program_id": program.program_id},
        )
    return module


def get_program_state(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """DSPy's ``dump_state()`` of the program's module and DSPy's dependency versions.

    ``{**state, "metadata": {"dependency_versions": ...}}`` is the file DSPy's
    ``module.save(path)`` writes; ``create_program`` takes ``state`` back.
    """
    from dspy.utils.saving import get_dependency_versions

    program_id = require_str(args, "program_id", max_len=MAX_PROGRAM_ID)
    program = _program_of(ctx, args, program_id)
    state = to_plain(_dspy_module(program).dump_state())
    return {
        "program_id": program_id,
        "state": state,
        "dependency_versions": get_dependency_versions(),
    }


def evaluate(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Score a program on ``devset`` with ``metric``: DSPy's percentage, per-example results.

    See ``evaluation.py``; ``progress`` events ``{"done", "total", "score"}`` with ``events``.
    """
    started = time.perf_counter()
    program_id = require_str(args, "program_id", max_len=MAX_PROGRAM_ID)
    program = _program_of(ctx, args, program_id)
    devset = parse_examples(program.spec, args.get("devset"), "devset")
    metric = parse_metric(args.get("metric"), program.spec)
    check_metric_labels(metric, devset, "devset")
    num_threads = batch_threads(args.get("num_threads"), len(devset))
    handle = _resolve_lm(ctx, args, program_id)
    ctx.check_deadline()
    assert ctx.slot is not None
    outcome = run_evaluate(ctx.slot, program, handle, devset, metric, num_threads)
    _counted(ctx, program, sum(1 for r in outcome["results"] if "outputs" in r))
    ctx.state.stats.evaluated()
    return {
        "program_id": program_id,
        "score": outcome["score"],
        "results": outcome["results"],
        "usage": outcome["usage"],
        "duration_ms": _duration(started),
        "model": handle.model,
        "metric_calls": outcome["metric_calls"],
    }


def _reflection_lm(ctx: Context, optimizer: str, raw: Any) -> lm_mod.LmHandle | None:
    if optimizer != GEPA:
        if raw is not None:
            raise InvalidArguments(
                f"'reflection_lm' is only used by gepa, not {optimizer}",
                {"field": "reflection_lm", "reason": "not_used"},
            )
        return None
    if raw is None:
        raise InvalidArguments(
            "gepa needs 'reflection_lm' (an LM config, as configure_lm takes)",
            {"field": "reflection_lm"},
        )
    try:
        return ctx.state.lm_cache.get(lm_mod.parse_lm_config(raw))
    except InvalidArguments as exc:
        raise InvalidArguments(
            f"reflection_lm: {exc.message}",
            {"field": "reflection_lm", "key": (exc.details or {}).get("field")},
        ) from None


def optimize(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Compile a copy of the program with a DSPy optimizer; answer the compiled state.

    The worker's cached program is not changed. See ``optimization.py`` for the optimizers,
    their options, budgets, progress events and how the job stops.
    """
    from dspy.utils.saving import get_dependency_versions

    started = time.perf_counter()
    program_id = require_str(args, "program_id", max_len=MAX_PROGRAM_ID)
    optimizer = normalise_optimizer(args.get("optimizer"))
    options = parse_options(optimizer, args.get("options"))
    program = _program_of(ctx, args, program_id)
    _dspy_module(program)
    trainset = parse_examples(program.spec, args.get("trainset"), "trainset")
    raw_valset = args.get("valset")
    if raw_valset is not None and optimizer not in USES_VALSET:
        raise InvalidArguments(
            f"{optimizer} takes no valset (it scores on the trainset)",
            {"field": "valset", "reason": "not_used", "optimizer": optimizer},
        )
    valset = parse_examples(program.spec, raw_valset, "valset") if raw_valset is not None else None
    metric = parse_metric(args.get("metric"), program.spec)
    check_metric_labels(metric, trainset, "trainset")
    if valset is not None:
        check_metric_labels(metric, valset, "valset")
    budget = parse_budget(args.get("budget"))
    num_threads = job_threads(args.get("num_threads"), len(trainset))
    seed = check_seed(args.get("seed"))
    check_combination(optimizer, options, len(trainset), len(valset) if valset else None)
    reflection = _reflection_lm(ctx, optimizer, args.get("reflection_lm"))
    handle = _resolve_lm(ctx, args, program_id)
    ctx.check_deadline()
    assert ctx.slot is not None
    request = OptimizeRequest(
        optimizer, options, trainset, valset, metric, num_threads, budget, seed
    )
    ctx.state.stats.optimize_started()
    ok = False
    try:
        outcome = run_optimize(ctx.slot, program, handle, reflection, request)
        ok = True
    finally:
        ctx.state.stats.optimize_ended(ok)
    return {
        "program_id": program_id,
        **outcome,
        "dependency_versions": get_dependency_versions(),
        "duration_ms": _duration(started),
        "model": handle.model,
    }


def list_programs(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    with ctx.state.lock:
        programs = [p.info() for p in ctx.state.programs.values()]
    programs.sort(key=lambda p: p["program_id"])
    return {"programs": programs, "count": len(programs)}


def get_program_info(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    program = _lookup(ctx.state, require_str(args, "program_id"))
    info = program.info()
    info["fields"] = {
        "inputs": [f.to_wire() for f in program.spec.inputs],
        "outputs": [f.to_wire() for f in program.spec.all_outputs()],
    }
    info["definition"] = program.definition
    return info


def delete_program(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    program_id = require_str(args, "program_id")
    with ctx.state.lock:
        deleted = ctx.state.programs.pop(program_id, None) is not None
    return {"program_id": program_id, "deleted": deleted}


def get_stats(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    state = ctx.state
    with state.lock:
        programs = len(state.programs)
        model = state.lm.model if state.lm is not None else None
    snap = state.stats.snapshot()
    return {
        "worker_id": state.worker_id,
        "pid": state.pid,
        "uptime_s": state.uptime(),
        "requests": snap,
        "programs": programs,
        "executions": snap["executions"],
        "evaluations": snap["evaluations"],
        "optimizations": snap["optimizations"],
        "optimizing": snap["optimizing"],
        "memory": _rss(),
        "lm": model,
        "named_lms": len(state.named_lms),
        "dspy_loaded": ctx.server.dspy_loaded(),
        # Imported in this process, by anyone (a zygote's child inherits the zygote's).
        "modules": {name: name in sys.modules for name in ("dspy", "litellm")},
        "max_concurrency": ctx.server.max_concurrency,
        "threads": threading.active_count(),
        "callbacks": state.callbacks.snapshot() if state.callbacks is not None else None,
    }


def reset_state(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    with ctx.state.lock:
        cleared = len(ctx.state.programs)
        ctx.state.programs.clear()
    ctx.state.lm_cache.clear()
    ctx.state.named_lms.clear()
    ctx.state.stats.reset()
    return {"status": "reset", "programs_cleared": cleared}


def cancel(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Answer a pending request ``Cancelled`` (before this reply); served inline.

    ``{"cancelled": false}`` when ``request_id`` had been answered already or is unknown.
    """
    target = args.get("request_id")
    if not isinstance(target, int) or isinstance(target, bool) or not 0 < target <= MAX_REQUEST_ID:
        raise InvalidArguments(
            "'request_id' must be a request id (an integer > 0)", {"field": "request_id"}
        )
    cancelled = ctx.server.cancel_request(target, ctx.request_id)
    log.debug("cancel %d by request %d: %s", target, ctx.request_id, cancelled)
    return {"cancelled": cancelled}


def shutdown(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    ctx.after_reply(lambda: ctx.server.shutdown(0))
    return {"status": "shutting_down", "worker_id": ctx.state.worker_id, "pid": ctx.state.pid}


def default_registry() -> Registry:
    registry = Registry()
    registry.register("ping", ping, inline=True)
    # Inline: served on the reader thread, so it works while every request thread is busy.
    registry.register("cancel", cancel, inline=True)
    registry.register("configure_lm", configure_lm, needs_dspy=True)
    registry.register("create_program", create_program, needs_dspy=True)
    registry.register("execute_program", execute_program, needs_dspy=True)
    registry.register("execute_batch", execute_batch, needs_dspy=True)
    registry.register("get_program_state", get_program_state, needs_dspy=True)
    registry.register("evaluate", evaluate, needs_dspy=True)
    registry.register("optimize", optimize, needs_dspy=True)
    registry.register("list_programs", list_programs)
    registry.register("get_program_info", get_program_info)
    registry.register("delete_program", delete_program)
    registry.register("get_stats", get_stats)
    registry.register("reset_state", reset_state)
    registry.register("shutdown", shutdown)
    return registry
