"""Examples, metrics and ``evaluate``: scoring a program on a dev set, as ``dspy.Evaluate`` does.

* **Examples** on the wire are ``{"inputs": {...}, "labels": {...}}``: the inputs are checked
  against the signature like ``execute_program``'s (a missing optional input is ``None``), the
  labels must be declared output fields and are converted to their types like outputs. Each
  becomes ``dspy.Example(**inputs, **labels).with_inputs(*inputs)``. A bad one is
  ``InvalidArguments`` ``{"field": "devset" | "trainset" | "valset", "index": i, ...}``.
* **Metrics** (the ``metric`` argument):

  - ``{"builtin": "exact_match", "field": F}``: DSPy's normalised exact match
    (``dspy.evaluate.metrics.EM``, what ``answer_exact_match`` does for ``answer``) of output
    ``F`` against label ``F``; ``{"builtin": "f1", "field": F}``: DSPy's token F1
    (``dspy.evaluate.metrics.F1``); ``F`` must be a declared text output (``str`` or
    ``literal``, optional or not) and every example must carry label ``F``;
  - ``{"builtin": "answer_exact_match"}`` / ``{"builtin": "answer_passage_match"}``: DSPy's
    own functions (the first needs a text output ``answer``, the second an output ``context``
    of type ``list[str]`` and ``answer`` among every example's labels or inputs);
  - ``{"callback": NAME, "batch": B, "feedback": bool}``: a metric on the host, the callback
    ``NAME`` with ``{"items": [{"example": {"inputs", "labels"}, "prediction": {<outputs>}},
    ...]}`` (at most ``B`` items, 1-1024, default 64), answered ``{"scores": [entry, ...]}`` in
    item order, each entry a number, ``{"score": number, "feedback": str}`` or
    ``{"error": str}``.

  A metric failure (an ``{"error"}`` entry, a malformed entry or answer, an error answer to
  the callback, an exception in a builtin) makes that example a failed one with score 0, as
  ``dspy.Evaluate`` scores a failing example ``failure_score`` 0; it is reported (kind
  ``MetricError``), never fatal. Host metric calls are batched: ``evaluate`` predicts
  everything first, then scores in batches of ``B``; inside optimizers (which call the metric
  per example, from several threads) concurrent calls are coalesced by ``MicroBatcher``: a call
  waits at most ``LINGER_S`` for others, up to ``B`` per callback, and calls that arrive while
  a batch is out with the host form the next one.
* **evaluate** returns DSPy's percentage: ``round(100 * sum(scores) / len(devset), 2)``, as
  ``dspy.Evaluate(...)(program).score`` computes it (a failed prediction scores 0). Unlike
  ``dspy.Evaluate`` it never gives up after ``max_errors`` failures.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .callbacks import CallbackError
from .errors import InvalidArguments, LmError
from .execution import add_usage, check_inputs, error_entry, predict_once
from .plain import to_plain
from .requests import ReplySlot, bind
from .signatures import SignatureSpec, TypeSpec, convert_output, to_dspy_inputs

if TYPE_CHECKING:
    from .lm import LmHandle
    from .programs import Program

MAX_EXAMPLES = 100_000
DEFAULT_METRIC_BATCH = 64
MAX_METRIC_BATCH = 1024
MAX_CALLBACK_NAME = 256
# How long a metric call inside an optimizer waits for others to share its callback.
LINGER_S = 0.005
METRIC_ERROR = "MetricError"

EXACT_MATCH = "exact_match"
F1 = "f1"
ANSWER_EXACT_MATCH = "answer_exact_match"
ANSWER_PASSAGE_MATCH = "answer_passage_match"
BUILTINS: tuple[str, ...] = (EXACT_MATCH, ANSWER_EXACT_MATCH, ANSWER_PASSAGE_MATCH, F1)
BUILTIN = "builtin"
CALLBACK = "callback"


# --- examples ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireExample:
    """One example: its checked inputs and converted labels (wire values) and the DSPy one."""

    index: int
    inputs: dict[str, Any]
    labels: dict[str, Any]
    example: Any

    def to_wire(self) -> dict[str, Any]:
        return {"inputs": to_plain(self.inputs), "labels": to_plain(self.labels)}


def _bad_example(where: str, index: int, message: str, **details: Any) -> InvalidArguments:
    return InvalidArguments(
        f"{where}[{index}]: {message}", {"field": where, "index": index, **details}
    )


def parse_examples(
    spec: SignatureSpec, raw: Any, where: str, *, required: bool = True
) -> list[WireExample]:
    """The examples of ``where`` (``devset``, ``trainset``, ``valset``); ``InvalidArguments``."""
    import dspy

    if raw is None and not required:
        return []
    if not isinstance(raw, list) or (required and not raw):
        raise InvalidArguments(
            f"'{where}' must be a non-empty list of examples "
            '({"inputs": {...}, "labels": {...}})',
            {"field": where},
        )
    if len(raw) > MAX_EXAMPLES:
        raise InvalidArguments(
            f"'{where}' has more than {MAX_EXAMPLES} examples", {"field": where, "count": len(raw)}
        )
    outputs = {f.name: f for f in spec.outputs}
    parsed: list[WireExample] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad_example(where, index, 'an example must be a map {"inputs", "labels"}')
        unknown = sorted(str(k) for k in item if k not in ("inputs", "labels"))
        if unknown:
            raise _bad_example(where, index, f"unknown keys {unknown}", unknown=unknown)
        inputs = item.get("inputs")
        if not isinstance(inputs, dict):
            raise _bad_example(where, index, "'inputs' must be a map", key="inputs")
        labels = item.get("labels")
        if labels is None:
            labels = {}
        if not isinstance(labels, dict):
            raise _bad_example(where, index, "'labels' must be a map", key="labels")
        try:
            checked = check_inputs(spec, inputs)
        except InvalidArguments as exc:
            raise _bad_example(
                where, index, exc.message, key="inputs", input=(exc.details or {}).get("field")
            ) from None
        converted: dict[str, Any] = {}
        for name, value in labels.items():
            out = outputs.get(name)
            if out is None:
                raise _bad_example(
                    where,
                    index,
                    f"label {name!r} is not a declared output (outputs: {sorted(outputs)})",
                    key="labels",
                    label=str(name),
                )
            try:
                converted[name] = convert_output(out.effective_type, value, name)
            except LmError as exc:
                raise _bad_example(
                    where,
                    index,
                    f"label {name!r}: {exc.message.removeprefix('output ')}",
                    key="labels",
                    label=name,
                ) from None
        dspy_inputs = to_dspy_inputs(spec, checked)
        example = dspy.Example(**dspy_inputs, **converted).with_inputs(*dspy_inputs)
        parsed.append(WireExample(index, checked, converted, example))
    return parsed


def example_wire(example: Any, declared: set[str]) -> dict[str, Any]:
    """``{"inputs", "labels"}`` of a ``dspy.Example`` an optimizer hands to the metric."""
    inputs_of = getattr(example, "inputs", None)
    try:
        inputs = dict(inputs_of().items()) if callable(inputs_of) else {}
    except ValueError:  # no with_inputs: every field is a label
        inputs = {}
    items = dict(example.items()) if hasattr(example, "items") else {}
    labels = {k: v for k, v in items.items() if k not in inputs and k in declared}
    return {"inputs": to_plain(inputs), "labels": to_plain(labels)}


# --- metrics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """A validated ``metric`` argument."""

    kind: str
    name: str
    field: str | None = None
    batch: int = DEFAULT_METRIC_BATCH
    feedback: bool = False

    def describe(self) -> str:
        if self.kind == CALLBACK:
            return f"host metric {self.name!r}"
        return self.name if self.field is None else f"{self.name}({self.field})"


def _bad_metric(message: str, **details: Any) -> InvalidArguments:
    return InvalidArguments(f"metric: {message}", {"field": "metric", **details})


def _is_text(spec: TypeSpec) -> bool:
    if spec.kind == "optional" and spec.item is not None:
        return _is_text(spec.item)
    return spec.kind in ("str", "literal")


def _is_text_list(spec: TypeSpec) -> bool:
    if spec.kind == "optional" and spec.item is not None:
        return _is_text_list(spec.item)
    return spec.kind == "list" and spec.item is not None and spec.item.kind == "str"


def parse_metric(raw: Any, spec: SignatureSpec) -> MetricSpec:
    """Validate ``metric`` against the program's signature; ``InvalidArguments``."""
    if not isinstance(raw, dict):
        raise _bad_metric(
            'must be {"builtin": NAME, ...} or {"callback": NAME, "batch"?, "feedback"?}'
        )
    if ("builtin" in raw) == ("callback" in raw):
        raise _bad_metric('give exactly one of "builtin" and "callback"')
    outputs = {f.name: f for f in spec.outputs}
    if "callback" in raw:
        unknown = sorted(str(k) for k in raw if k not in ("callback", "batch", "feedback"))
        if unknown:
            raise _bad_metric(f"unknown keys {unknown}", unknown=unknown)
        name = raw["callback"]
        if not isinstance(name, str) or not name or len(name) > MAX_CALLBACK_NAME:
            raise _bad_metric(
                f"callback must be a name of 1-{MAX_CALLBACK_NAME} characters", key="callback"
            )
        batch = raw.get("batch", DEFAULT_METRIC_BATCH)
        if batch is None:
            batch = DEFAULT_METRIC_BATCH
        if (
            not isinstance(batch, int)
            or isinstance(batch, bool)
            or not 1 <= batch <= MAX_METRIC_BATCH
        ):
            raise _bad_metric(f"batch must be an integer in [1, {MAX_METRIC_BATCH}]", key="batch")
        feedback = raw.get("feedback", False)
        if feedback is None:
            feedback = False
        if not isinstance(feedback, bool):
            raise _bad_metric("feedback must be a bool", key="feedback")
        return MetricSpec(CALLBACK, name, batch=batch, feedback=feedback)
    name = raw["builtin"]
    if name not in BUILTINS:
        raise _bad_metric(f"unknown builtin {name!r}", builtin=name, available=list(BUILTINS))
    allowed = {"builtin", "field"} if name in (EXACT_MATCH, F1) else {"builtin"}
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise _bad_metric(f"unknown keys {unknown} for builtin {name}", unknown=unknown)
    if name in (EXACT_MATCH, F1):
        target = raw.get("field")
        if not isinstance(target, str) or target not in outputs:
            raise _bad_metric(
                f"{name} needs 'field': one of the declared outputs {sorted(outputs)}",
                key="field",
            )
        if not _is_text(outputs[target].type):
            raise _bad_metric(
                f"{name} compares text: output {target!r} is {outputs[target].type.render()}",
                key="field",
                reason="not_text",
            )
        return MetricSpec(BUILTIN, name, field=target)
    if name == ANSWER_EXACT_MATCH:
        answer = outputs.get("answer")
        if answer is None or not _is_text(answer.type):
            raise _bad_metric(f"{name} needs a declared text output 'answer'", reason="no_answer")
        return MetricSpec(BUILTIN, name, field="answer")
    context = outputs.get("context")
    if context is None or not _is_text_list(context.type):
        raise _bad_metric(
            f"{name} needs a declared output 'context' of type list[str]", reason="no_context"
        )
    return MetricSpec(BUILTIN, name, field="answer")


def check_metric_labels(metric: MetricSpec, examples: list[WireExample], where: str) -> None:
    """A builtin metric needs its label on every example: ``InvalidArguments`` otherwise."""
    if metric.kind != BUILTIN or metric.field is None:
        return
    for ex in examples:
        present = metric.field in ex.labels or (
            metric.name == ANSWER_PASSAGE_MATCH and metric.field in ex.inputs
        )
        if not present:
            raise _bad_example(
                where,
                ex.index,
                f"metric {metric.describe()} needs label {metric.field!r}",
                reason="missing_label",
                label=metric.field,
            )


@dataclass
class Score:
    """One example's score: a value, the host's feedback, or a failure (score 0)."""

    value: float = 0.0
    feedback: str | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def failed(cls, message: str, kind: str = METRIC_ERROR) -> Score:
        return cls(0.0, None, {"kind": kind, "message": message})


def builtin_value(metric: MetricSpec, example: Any, prediction: Any) -> float:
    """A builtin metric of DSPy's on (example, prediction); raises as DSPy's own does."""
    from dspy.evaluate import metrics

    if metric.name == ANSWER_EXACT_MATCH:
        return float(metrics.answer_exact_match(example, prediction))
    if metric.name == ANSWER_PASSAGE_MATCH:
        return float(metrics.answer_passage_match(example, prediction))
    assert metric.field is not None
    gold = example[metric.field]
    if isinstance(gold, str):
        answers = [gold]
    elif isinstance(gold, list):
        answers = gold
    else:
        raise ValueError(f"invalid label type for {metric.field!r}: {type(gold).__name__}")
    value = prediction[metric.field]
    if metric.name == EXACT_MATCH:
        return float(metrics.EM(value, answers))
    return float(metrics.F1(value, answers))


def builtin_score(metric: MetricSpec, example: Any, prediction: Any) -> Score:
    try:
        return Score(builtin_value(metric, example, prediction))
    except Exception as exc:  # noqa: BLE001 - a failing metric fails its example only
        return Score.failed(f"metric {metric.describe()} raised {type(exc).__name__}: {exc}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entry_score(entry: Any) -> Score:
    if _finite(entry):
        return Score(float(entry))
    if isinstance(entry, dict):
        if "error" in entry:
            message = entry["error"]
            return Score.failed(message if isinstance(message, str) else repr(message))
        score = entry.get("score")
        feedback = entry.get("feedback")
        extra = sorted(str(k) for k in entry if k not in ("score", "feedback"))
        if _finite(score) and (feedback is None or isinstance(feedback, str)) and not extra:
            return Score(float(score), feedback)
    return Score.failed(f"malformed score {_short(entry)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def scores_of_answer(answer: Any, count: int, name: str) -> list[Score]:
    """The host's ``{"scores": [...]}`` for ``count`` items (all failed if it is malformed)."""
    scores = answer.get("scores") if isinstance(answer, dict) else None
    if not isinstance(scores, list):
        return [Score.failed(f"metric {name!r} answered no 'scores' list")] * count
    if len(scores) != count:
        return [
            Score.failed(f"metric {name!r} answered {len(scores)} scores for {count} items")
        ] * count
    return [_entry_score(entry) for entry in scores]


class MicroBatcher:
    """Coalesces concurrent single calls into batches of at most ``size``.

    The first call of a batch leads it: it waits up to ``linger`` seconds for more calls (or
    until ``size`` are queued), flushes them with one ``flush(items)``, and keeps flushing
    what queued up meanwhile until the queue is empty. Every caller gets its own result (or
    the exception the flush raised).
    """

    @dataclass
    class _Pending:
        item: Any
        done: threading.Event = field(default_factory=threading.Event)
        result: Any = None
        error: BaseException | None = None

    def __init__(
        self, flush: Callable[[list[Any]], list[Any]], size: int, linger: float = LINGER_S
    ) -> None:
        self._flush = flush
        self.size = size
        self.linger = linger
        self._cond = threading.Condition()
        self._queue: list[MicroBatcher._Pending] = []
        self._leading = False
        self.flushes = 0

    def submit(self, item: Any) -> Any:
        pending = MicroBatcher._Pending(item)
        with self._cond:
            self._queue.append(pending)
            lead = not self._leading
            if lead:
                self._leading = True
            elif len(self._queue) >= self.size:
                self._cond.notify_all()
        if lead:
            self._lead()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _lead(self) -> None:
        while True:
            with self._cond:
                end = time.monotonic() + self.linger
                while len(self._queue) < self.size:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = self._queue[: self.size]
                del self._queue[: self.size]
                if not batch:
                    self._leading = False
                    return
                self.flushes += 1
            try:
                results = self._flush([p.item for p in batch])
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                with self._cond:
                    rest, self._queue = self._queue, []
                    self._leading = False
                for p in batch + rest:
                    p.error = exc
                    p.done.set()
                return
            for p, result in zip(batch, results, strict=True):
                p.result = result
                p.done.set()


class HostMetric:
    """A metric on the host: one callback per batch of items."""

    def __init__(self, slot: ReplySlot, metric: MetricSpec, linger: float = LINGER_S) -> None:
        self.slot = slot
        self.metric = metric
        self.callbacks = 0
        self._lock = threading.Lock()
        self.batcher = MicroBatcher(self.score_batch, metric.batch, linger)

    def score_batch(self, items: list[dict[str, Any]]) -> list[Score]:
        """Score ``items`` with one callback; abandonment of the request propagates."""
        with self._lock:
            self.callbacks += 1
        name = self.metric.name
        try:
            answer = self.slot.callback(name, {"items": items})
        except CallbackError as exc:
            return [
                Score.failed(f"metric callback {name!r} failed: {exc.kind}: {exc.message}")
            ] * len(items)
        return scores_of_answer(answer, len(items), name)

    def score_many(self, items: list[dict[str, Any]]) -> list[Score]:
        """Score ``items`` in batches of ``metric.batch``, in order (``evaluate``)."""
        scores: list[Score] = []
        size = self.metric.batch
        for start in range(0, len(items), size):
            scores.extend(self.score_batch(items[start : start + size]))
        return scores


# --- evaluate ----------------------------------------------------------------------------------


def percentage(total: float, count: int) -> float:
    """``dspy.Evaluate``'s score: ``round(100 * total / count, 2)``."""
    return round(100 * total / count, 2) if count else 0.0


def _result_entry(outputs: dict[str, Any] | None, score: Score) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if outputs is not None:
        entry["outputs"] = outputs
    entry["score"] = score.value
    if score.error is not None:
        entry["error"] = score.error
    if score.feedback is not None:
        entry["feedback"] = score.feedback
    return entry


def run_evaluate(
    slot: ReplySlot,
    program: Program,
    handle: LmHandle,
    devset: list[WireExample],
    metric: MetricSpec,
    num_threads: int,
) -> dict[str, Any]:
    """Predict every example (``dspy.Parallel``), score them, and add up DSPy's percentage.

    A builtin metric scores each prediction in its thread, as ``dspy.Evaluate`` does; a host
    metric scores after every prediction is made, in batches. ``progress`` events
    ``{"done", "total", "score"}`` (the running percentage over the examples done) follow each
    finished example (or batch) when the request asked for events.
    """
    import dspy

    total = len(devset)
    entries: list[dict[str, Any] | None] = [None] * total
    values: list[float] = [0.0] * total
    predicted: dict[int, dict[str, Any]] = {}
    usage: dict[str, dict[str, int]] = {}
    lock = threading.Lock()
    done = 0
    running = 0.0
    scored = 0

    def finished(index: int, outputs: dict[str, Any] | None, score: Score) -> None:
        nonlocal done, running
        with lock:
            entries[index] = _result_entry(outputs, score)
            values[index] = score.value
            done += 1
            running += score.value
            slot.event(
                "progress", {"done": done, "total": total, "score": percentage(running, done)}
            )

    def run_item(index: int) -> None:
        nonlocal scored
        ex = devset[index]
        try:
            with bind(slot):
                slot.check()
                prediction, outputs, used = predict_once(program, handle.lm, ex.inputs)
        except Exception as exc:  # noqa: BLE001 - a failed prediction fails its example only
            wire = error_entry(exc)["error"]
            finished(
                index, None, Score(0.0, None, {"kind": wire["kind"], "message": wire["message"]})
            )
            return
        with lock:
            add_usage(usage, used)
        if metric.kind == BUILTIN:
            with lock:
                scored += 1
            finished(index, outputs, builtin_score(metric, ex.example, prediction))
        else:
            with lock:
                predicted[index] = outputs

    parallel = dspy.Parallel(
        num_threads=min(num_threads, total),
        max_errors=total + 1,
        disable_progress_bar=True,
        provide_traceback=False,
        timeout=0,  # no straggler resubmission: an example (and its callbacks) runs once
    )
    with dspy.context(lm=handle.lm, disable_history=True):
        parallel([(run_item, {"index": i}) for i in range(total)])
    if metric.kind == CALLBACK and predicted:
        host = HostMetric(slot, metric)
        order = sorted(predicted)
        size = metric.batch
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            items = [
                {"example": devset[i].to_wire(), "prediction": to_plain(predicted[i])}
                for i in chunk
            ]
            scores = host.score_batch(items)
            scored += len(chunk)
            for i, score in zip(chunk, scores, strict=True):
                finished(i, predicted[i], score)
    results = [
        entry or {"score": 0.0, "error": {"kind": "PythonException", "message": "not evaluated"}}
        for entry in entries
    ]
    return {
        "score": percentage(sum(values), total),
        "results": results,
        "usage": usage,
        "metric_calls": scored,
    }
