"""Running programs: inputs in, typed outputs, usage and LM history out.

Every run happens under ``dspy.context(lm=<the request's LM>)`` (never ``dspy.configure``
from a request thread), so concurrent requests with different LMs never see each other's.

* **Usage.** Each run is wrapped in ``dspy.track_usage()``: DSPy adds every LM call's
  ``usage`` (what the engine's ``Response.usage`` reported: ``prompt_tokens``,
  ``completion_tokens``, ``total_tokens``; cache hits add nothing) to the tracker of the
  current settings, by ``lm.model``. The reply's ``usage`` is
  ``{model: {"prompt_tokens", "completion_tokens", "total_tokens"}}`` (``{}`` without LM
  calls). ``dspy.Parallel`` gives each of its threads a deep copy of the parent's tracker,
  so a batch tracks every item on its own and adds them up.
* **LM history** (``lm_history: true``). DSPy records an entry per LM call in the LM's
  ``history`` and a process-wide list, shared by every request on that LM; the worker keeps
  ``disable_history`` on and records the request's own calls with a DSPy callback
  (``on_lm_start`` / ``on_lm_end`` of ``dspy.LM.__call__``, in call order):
  ``{"model", "messages": [{"role", "content"}...], "outputs": [...]}`` — the messages the
  adapter sent and the completions the LM returned (the same values DSPy's history entries
  hold under ``messages`` and ``outputs``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .callbacks import CallbackError
from .errors import BridgeError, InvalidArguments, LmError, PythonException, from_exception
from .logs import redact
from .modules import PYTHON
from .plain import json_text, to_plain
from .requests import DSPY_SETTING, ReplySlot, bind, current_request
from .signatures import HISTORY, SignatureSpec, check_value, convert_output, to_dspy_inputs
from .streaming import run_streaming

if TYPE_CHECKING:
    from .lm import LmHandle
    from .programs import Program

USAGE_KEYS: tuple[str, ...] = ("prompt_tokens", "completion_tokens", "total_tokens")
DEFAULT_BATCH_THREADS = 8
MAX_BATCH_THREADS = 64


def check_inputs(spec: SignatureSpec, inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs checked against the signature: ``InvalidArguments`` naming the field."""
    known = {f.name for f in spec.inputs}
    for name in inputs:
        if name not in known:
            raise InvalidArguments(
                f"unknown input {name!r}", {"field": name, "expected": sorted(known)}
            )
    checked: dict[str, Any] = {}
    for f in spec.inputs:
        if f.name not in inputs:
            if f.optional:
                checked[f.name] = None
                continue
            raise InvalidArguments(f"missing required input {f.name!r}", {"field": f.name})
        value = inputs[f.name]
        if not (value is None and f.optional and f.type.kind == HISTORY):
            check_value(f.effective_type, value, f.name)
        checked[f.name] = value
    return checked


def check_input_map(inputs: Any, where: str = "inputs") -> dict[str, Any]:
    if inputs is None:
        return {}
    if not isinstance(inputs, dict):
        raise InvalidArguments(f"'{where}' must be a map", {"field": where})
    return inputs


# --- failures ------------------------------------------------------------------------------


def _unparsed_fields(exc: Any) -> list[str]:
    """The output fields an ``AdapterParseError`` could not produce."""
    import re

    match = re.search(r"Failed to parse field (\w+)", str(exc))
    if match:
        return [match.group(1)]
    expected = list(getattr(getattr(exc, "signature", None), "output_fields", {}) or {})
    parsed = getattr(exc, "parsed_result", None)
    if isinstance(parsed, dict):
        return [name for name in expected if name not in parsed]
    return expected


def lm_failure(exc: BaseException) -> LmError | None:
    """The ``LmError`` for a DSPy LM or adapter failure (None for anything else)."""
    from dspy.utils.exceptions import AdapterParseError, LMError

    if isinstance(exc, AdapterParseError):
        fields = _unparsed_fields(exc)
        named = ", ".join(repr(f) for f in fields) or "?"
        return LmError(
            f"the LM response could not be parsed into output field {named}: {exc}",
            {
                "exception": type(exc).__name__,
                "field": fields[0] if fields else None,
                "fields": fields,
            },
        )
    if isinstance(exc, LMError):
        return LmError(f"the LM call failed: {exc}", {"exception": type(exc).__name__})
    return None


def failure(program: Program, exc: BaseException) -> BaseException:
    """The error a failed run is answered with.

    Protocol errors raised inside the run (``Cancelled``, ``DeadlineExceeded``, a
    ``ToolError``) pass through; a host function's error answer becomes ``ToolError``; LM
    and parse failures ``LmError``; anything a ``python`` module's own code raised
    ``PythonException`` with ``details {"exception", "path"}``.
    """
    if isinstance(exc, BridgeError):
        return exc
    if isinstance(exc, CallbackError):
        return exc.as_bridge_error()
    lm = lm_failure(exc)
    if lm is not None:
        return lm
    if program.module == PYTHON:
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return PythonException(
            redact(f"{program.built.path}: {type(exc).__name__}: {exc}"),
            {"exception": type(exc).__name__, "path": program.built.path},
            traceback=redact(text),
        )
    return exc


# --- outputs -------------------------------------------------------------------------------


class _Missing(Exception):
    pass


def _output_value(prediction: Any, name: str) -> Any:
    try:
        return prediction[name]
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    if not isinstance(prediction, dict) and hasattr(prediction, name):
        return getattr(prediction, name)
    raise _Missing(name)


def read_outputs(program: Program, prediction: Any) -> dict[str, Any]:
    """The program's outputs from a prediction, converted to their declared types.

    Module-added outputs are text (a non-text value, such as ReAct's trajectory, as JSON).
    """
    if prediction is None:
        raise LmError("the program produced no prediction", {"module": program.module})
    spec = program.spec
    extra = {f.name for f in spec.extra_outputs}
    outputs: dict[str, Any] = {}
    for f in spec.all_outputs():
        try:
            value = _output_value(prediction, f.name)
        except _Missing:
            if f.optional or f.type.allows_none():
                outputs[f.name] = None
                continue
            raise LmError(
                f"the LM produced no value for output {f.name!r}", {"field": f.name}
            ) from None
        if f.name in extra and isinstance(value, (dict, list, tuple)):
            value = json_text(value)
        outputs[f.name] = convert_output(f.effective_type, value, f.name)
    return outputs


# --- usage and history ----------------------------------------------------------------------


def _count(value: Any) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return int(value) if ok else 0


def usage_of(totals: dict[str, Any]) -> dict[str, dict[str, int]]:
    """``UsageTracker.get_total_tokens()`` reduced to the three counts per model."""
    usage: dict[str, dict[str, int]] = {}
    for model, entry in totals.items():
        if not isinstance(entry, dict):
            continue
        counts = {key: _count(entry.get(key)) for key in USAGE_KEYS}
        if entry.get("total_tokens") is None:
            counts["total_tokens"] = counts["prompt_tokens"] + counts["completion_tokens"]
        usage[str(model)] = counts
    return usage


def add_usage(into: dict[str, dict[str, int]], usage: dict[str, dict[str, int]]) -> None:
    for model, counts in usage.items():
        total = into.setdefault(model, dict.fromkeys(USAGE_KEYS, 0))
        for key in USAGE_KEYS:
            total[key] += counts.get(key, 0)


@functools.cache
def _recorder_class() -> type:
    from dspy.utils.callback import BaseCallback

    class HistoryRecorder(BaseCallback):  # type: ignore[misc]
        """The LM calls of one request, in call order (``lm_history``)."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.entries: list[dict[str, Any]] = []
            self.open: dict[str, dict[str, Any]] = {}

        def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            messages = inputs.get("messages")
            if messages is None and inputs.get("prompt") is not None:
                messages = [{"role": "user", "content": inputs["prompt"]}]
            entry = {
                "model": str(getattr(instance, "model", "")),
                "messages": to_plain(messages or []),
                "outputs": [],
            }
            with self.lock:
                self.entries.append(entry)
                self.open[call_id] = entry

        def on_lm_end(
            self, call_id: str, outputs: Any, exception: BaseException | None = None
        ) -> None:
            with self.lock:
                entry = self.open.pop(call_id, None)
            if entry is not None and outputs is not None:
                entry["outputs"] = to_plain(outputs if isinstance(outputs, list) else [outputs])

    return HistoryRecorder


# --- running -------------------------------------------------------------------------------


@contextlib.contextmanager
def _tracked(dspy: Any, settings: dict[str, Any]) -> Iterator[Any]:
    """``dspy.context(**settings)`` with ``dspy.track_usage()`` inside, as one settings
    context (half the per-call cost): a fresh ``UsageTracker`` whose entries are added to
    the enclosing tracker, if any, on exit, as ``track_usage`` does."""
    from dspy.utils.usage_tracker import UsageTracker

    tracker = UsageTracker()
    parent = dspy.settings.usage_tracker
    try:
        with dspy.context(**settings, usage_tracker=tracker):
            yield tracker
    finally:
        if parent is not None:
            for model, entries in tracker.usage_data.items():
                parent.usage_data[model].extend(entries)


def run_program(
    slot: ReplySlot | None,
    program: Program,
    handle: LmHandle,
    checked: dict[str, Any],
    *,
    stream: bool = False,
    lm_history: bool = False,
) -> tuple[dict[str, Any], dict[str, dict[str, int]], list[dict[str, Any]] | None]:
    """Run a program once: (outputs, usage, LM history or None).

    ``stream`` (with a slot that accepts events) sends the ``str`` outputs as ``chunk``
    events while the LM produces them.
    """
    import dspy

    inputs = to_dspy_inputs(program.spec, checked)
    runner, reward = program.built.runner()
    recorder = _recorder_class()() if lm_history else None
    settings: dict[str, Any] = {"lm": handle.lm, "disable_history": True}
    if slot is not None:
        # Carried by DSPy into the threads it starts (dspy.Parallel inside a python module):
        # the request's deadline, cancel and log records reach them (``current_request``).
        settings[DSPY_SETTING] = slot
    if recorder is not None:
        settings["callbacks"] = [recorder]
    with _tracked(dspy, settings) as tracker:
        try:
            if stream and slot is not None and slot.events:
                prediction = run_streaming(slot, program.built, runner, inputs)
            else:
                prediction = runner(**inputs)
        except Exception as exc:
            raise failure(program, exc) from exc
    if prediction is None and reward is not None and reward.last_error is not None:
        # BestOfN / Refine gave up without a prediction: every attempt failed.
        raise failure(program, reward.last_error) from reward.last_error
    outputs = read_outputs(program, prediction)
    usage = usage_of(tracker.get_total_tokens())
    return outputs, usage, (recorder.entries if recorder is not None else None)


def predict_once(
    program: Program, lm: Any, checked: dict[str, Any]
) -> tuple[Any, dict[str, Any], dict[str, dict[str, int]]]:
    """Run a program once on checked inputs: (DSPy's prediction, outputs, usage).

    As ``run_program`` without streaming or history; the raw prediction is what DSPy's own
    metrics are given (``evaluate``).
    """
    import dspy

    inputs = to_dspy_inputs(program.spec, checked)
    runner, reward = program.built.runner()
    settings: dict[str, Any] = {"lm": lm, "disable_history": True}
    slot = current_request()
    if slot is not None:
        settings[DSPY_SETTING] = slot  # as in ``run_program``
    with _tracked(dspy, settings) as tracker:
        try:
            prediction = runner(**inputs)
        except Exception as exc:
            raise failure(program, exc) from exc
    if prediction is None and reward is not None and reward.last_error is not None:
        raise failure(program, reward.last_error) from reward.last_error
    outputs = read_outputs(program, prediction)
    return prediction, outputs, usage_of(tracker.get_total_tokens())


def error_entry(exc: BaseException) -> dict[str, Any]:
    """``{"error": {"kind", "message", "details"}}`` of a failed item (no traceback)."""
    return _error_entry(exc)


def _error_entry(exc: BaseException) -> dict[str, Any]:
    wire = from_exception(exc)
    return {"error": {"kind": wire["kind"], "message": wire["message"], "details": wire["details"]}}


def batch_threads(raw: Any, count: int) -> int:
    if raw is None:
        return max(1, min(count, DEFAULT_BATCH_THREADS))
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= MAX_BATCH_THREADS:
        raise InvalidArguments(
            f"'num_threads' must be an integer in [1, {MAX_BATCH_THREADS}]",
            {"field": "num_threads"},
        )
    return raw


def run_batch(
    slot: ReplySlot,
    program: Program,
    handle: LmHandle,
    items: list[Any],
    num_threads: int,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Run a program on every item with ``dspy.Parallel``: (results in input order, usage).

    An item that is not valid input is an error entry and does not run; an item that fails
    is an error entry too. After each item a ``progress`` event ``{"done", "total"}`` is
    sent (when the request asked for events).
    """
    import dspy

    total = len(items)
    results: list[dict[str, Any] | None] = [None] * total
    usage: dict[str, dict[str, int]] = {}
    lock = threading.Lock()
    done = 0

    def finished(index: int, entry: dict[str, Any], used: dict[str, dict[str, int]]) -> None:
        nonlocal done
        with lock:
            results[index] = entry
            add_usage(usage, used)
            done += 1
            slot.event("progress", {"done": done, "total": total})

    runnable: list[tuple[int, dict[str, Any]]] = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise InvalidArguments(
                    f"inputs[{index}] must be a map", {"field": "inputs", "index": index}
                )
            runnable.append((index, check_inputs(program.spec, item)))
        except BridgeError as exc:
            finished(index, _error_entry(exc), {})

    checked_by_index = dict(runnable)

    def run_item(index: int) -> None:
        used: dict[str, dict[str, int]] = {}
        try:
            with bind(slot):
                slot.check()
                outputs, used, _ = run_program(slot, program, handle, checked_by_index[index])
            entry: dict[str, Any] = {"outputs": outputs, "usage": used}
        except Exception as exc:  # noqa: BLE001 - one failed item is one error entry
            entry = _error_entry(exc)
        finished(index, entry, used)

    if runnable:
        parallel = dspy.Parallel(
            num_threads=min(num_threads, len(runnable)),
            max_errors=total + 1,
            disable_progress_bar=True,
            provide_traceback=False,
            timeout=0,  # no straggler resubmission: an item (and its callbacks) runs once
        )
        with dspy.context(lm=handle.lm, disable_history=True):
            parallel([(run_item, {"index": index}) for index, _ in runnable])
    return [
        entry or {"error": {"kind": "PythonException", "message": "not run", "details": None}}
        for entry in results
    ], usage
