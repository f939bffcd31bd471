"""``optimize``: DSPy 3.4.1's optimizers run on a copy of a program, for the host.

``optimize {program_id, program?, lm_id? | lm?, optimizer, options?, trainset, valset?, metric,
num_threads?, budget?, reflection_lm?, seed?}`` compiles a deep copy of the program's module
(the worker's cached program is never changed) and answers its ``dump_state()``; the host
decides what to keep (``create_program`` with ``state``).

Optimizers (names match case-insensitively without ``_`` and ``dspy.``), each with its own
allow-list of ``options`` (anything else is ``InvalidArguments {"field": "options"}``):

==========================================  ===============================================
``bootstrap_few_shot``                      ``max_bootstrapped_demos``, ``max_labeled_demos``,
                                            ``max_rounds``, ``max_errors``, ``metric_threshold``
``bootstrap_few_shot_with_random_search``   the above and ``num_candidate_programs``,
                                            ``num_threads``, ``stop_at_score``; uses ``valset``
``mipro_v2`` (needs ``optuna``)             ``auto`` (light|medium|heavy|null),
                                            ``num_candidates``, ``num_trials``,
                                            ``max_bootstrapped_demos``, ``max_labeled_demos``,
                                            ``minibatch``, ``minibatch_size``,
                                            ``minibatch_full_eval_steps``, ``init_temperature``,
                                            ``max_errors``, ``metric_threshold``,
                                            ``*_aware_proposer``, ``view_data_batch_size``,
                                            ``num_threads``; uses ``valset``
``gepa``                                    exactly one of ``auto`` / ``max_full_evals`` /
                                            ``max_metric_calls``; ``reflection_minibatch_size``,
                                            ``candidate_selection_strategy``,
                                            ``skip_perfect_score``, ``use_merge``,
                                            ``max_merge_invocations``, ``failure_score``,
                                            ``perfect_score``,
                                            ``add_format_failure_as_feedback``,
                                            ``component_selector``, ``num_threads``; needs
                                            ``reflection_lm``; uses ``valset``
``copro``                                   ``breadth`` (>= 2), ``depth``, ``init_temperature``,
                                            ``num_threads``
``simba`` (needs ``numpy``)                 ``max_steps``, ``num_candidates``, ``bsize``
                                            (<= the trainset), ``max_demos``,
                                            ``temperature_for_sampling``,
                                            ``temperature_for_candidates``, ``num_threads``
==========================================  ===============================================

An optimizer whose package is not installed is ``InvalidArguments`` ``{"field": "optimizer",
"reason": "missing_dependency", "package"}``. ``valset`` given to an optimizer that takes none,
or ``reflection_lm`` to one other than ``gepa``, is ``InvalidArguments``. ``seed`` seeds
``mipro_v2``, ``gepa`` and ``simba``. ``best_of_n`` / ``refine`` programs are optimized as
their base module alone (without the reward loop).

The job (``Job``) sees every LM call (the program's LM and the reflection LM are job copies
whose calls go through ``Job.lm_call``) and every metric call (``JobMetric``):

* **Budgets** ``{"max_metric_calls"?, "max_lm_calls"?}``: the call that would exceed one
  ends the job with ``BudgetExceeded`` ``{"budget", "limit", "used"}`` (``used`` counts the
  refused call) and no state.
* **Deadline and cancel**: the next LM or metric call after the request was abandoned (or its
  deadline passed) ends the job; a waiting metric callback is released at once.

A job ends by raising ``JobStopped`` (a ``BaseException``, so DSPy's ``except Exception`` —
in ``Evaluate``, ``BootstrapFewShot``, the adapters — cannot swallow it); every later LM or
metric call of the job raises it again at once, so threads still running wind down quickly.
The request reaches DSPy's own threads through the DSPy setting ``dspex_request``
(``requests.current_request``), so host tools, rewards, the dummy LM and the deadline LM
work there as in the handler thread.

**Progress** (``events: true``): ``progress`` events ``{"message", "done"?, "total"?,
"best_score"?}`` from what DSPy exposes: its callbacks (``on_evaluate_end``: a candidate's
score; the best score of full evaluations, as a percentage), the metric wrapper (``done`` =
metric calls, ``total`` = the known bound: the metric budget or GEPA's ``max_metric_calls``),
and the optimizers' own log lines (MIPROv2's ``Trial i / n`` gives ``done`` / ``total``).
Events from counts and log lines are throttled to a few per second.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BridgeError, BudgetExceeded, InvalidArguments
from .evaluation import (
    BUILTIN,
    HostMetric,
    MetricSpec,
    Score,
    WireExample,
    builtin_score,
    example_wire,
)
from .execution import read_outputs, usage_of
from .plain import to_plain
from .programs import is_single_predictor
from .requests import DSPY_SETTING, ReplySlot, current_request

if TYPE_CHECKING:
    from .lm import LmHandle
    from .programs import Program

log = logging.getLogger("dspex_bridge.optimization")

BOOTSTRAP = "bootstrap_few_shot"
RANDOM_SEARCH = "bootstrap_few_shot_with_random_search"
MIPRO = "mipro_v2"
GEPA = "gepa"
COPRO = "copro"
SIMBA = "simba"
OPTIMIZER_NAMES: tuple[str, ...] = (BOOTSTRAP, RANDOM_SEARCH, MIPRO, GEPA, COPRO, SIMBA)
_ALIASES: dict[str, str] = {
    "bootstrapfewshot": BOOTSTRAP,
    "bootstrapfewshotwithrandomsearch": RANDOM_SEARCH,
    "randomsearch": RANDOM_SEARCH,
    "miprov2": MIPRO,
    "mipro": MIPRO,
    "gepa": GEPA,
    "copro": COPRO,
    "simba": SIMBA,
}
MAX_THREADS = 64
DEFAULT_THREADS = 8
MAX_BUDGET = 1_000_000_000
# Least time between two progress events made from counts or log lines.
PROGRESS_INTERVAL_S = 0.2
_MAX_MESSAGE = 500


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One allowed option: an int or float range, a bool, or a choice (``None`` allowed)."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] = ()

    def check(self, key: str, value: Any) -> Any:
        def bad(expected: str) -> InvalidArguments:
            return InvalidArguments(
                f"options.{key} must be {expected}", {"field": "options", "key": key}
            )

        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad("a bool")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise bad(
                    "one of " + ", ".join("null" if c is None else str(c) for c in self.choices)
                )
            return value
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind == "int" and not (number and isinstance(value, int)):
            raise bad(f"an integer in [{self.lo:g}, {self.hi:g}]")
        if not number or value != value:  # NaN
            raise bad("a number")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise bad(f"in [{self.lo:g}, {self.hi:g}]")
        return float(value) if self.kind == "float" else value


def _int(lo: int, hi: int) -> Option:
    return Option("int", lo, hi)


def _float(lo: float = -1e12, hi: float = 1e12) -> Option:
    return Option("float", lo, hi)


_BOOL = Option("bool")
_AUTO = Option("choice", choices=("light", "medium", "heavy", None))
_THREADS = _int(1, MAX_THREADS)
_BOOTSTRAP_OPTIONS: dict[str, Option] = {
    "max_bootstrapped_demos": _int(0, 64),
    "max_labeled_demos": _int(0, 1024),
    "max_rounds": _int(1, 100),
    "max_errors": _int(1, 1_000_000),
    "metric_threshold": _float(),
}
OPTIONS: dict[str, dict[str, Option]] = {
    BOOTSTRAP: _BOOTSTRAP_OPTIONS,
    RANDOM_SEARCH: {
        **_BOOTSTRAP_OPTIONS,
        "num_candidate_programs": _int(1, 256),
        "num_threads": _THREADS,
        "stop_at_score": _float(),
    },
    MIPRO: {
        "auto": _AUTO,
        "num_candidates": _int(1, 256),
        "num_trials": _int(1, 100_000),
        "max_bootstrapped_demos": _int(0, 64),
        "max_labeled_demos": _int(0, 1024),
        "minibatch": _BOOL,
        "minibatch_size": _int(1, 100_000),
        "minibatch_full_eval_steps": _int(1, 100_000),
        "init_temperature": _float(0.0, 100.0),
        "max_errors": _int(1, 1_000_000),
        "metric_threshold": _float(),
        "program_aware_proposer": _BOOL,
        "data_aware_proposer": _BOOL,
        "tip_aware_proposer": _BOOL,
        "fewshot_aware_proposer": _BOOL,
        "view_data_batch_size": _int(1, 10_000),
        "num_threads": _THREADS,
    },
    GEPA: {
        "auto": _AUTO,
        "max_full_evals": _int(1, 1_000_000),
        "max_metric_calls": _int(1, MAX_BUDGET),
        "reflection_minibatch_size": _int(1, 10_000),
        "candidate_selection_strategy": Option("choice", choices=("pareto", "current_best")),
        "skip_perfect_score": _BOOL,
        "use_merge": _BOOL,
        "max_merge_invocations": _int(0, 10_000),
        "failure_score": _float(),
        "perfect_score": _float(),
        "add_format_failure_as_feedback": _BOOL,
        "component_selector": Option("choice", choices=("round_robin", "all")),
        "num_threads": _THREADS,
    },
    COPRO: {
        "breadth": _int(2, 1000),
        "depth": _int(1, 1000),
        "init_temperature": _float(0.0, 100.0),
        "num_threads": _THREADS,
    },
    SIMBA: {
        "max_steps": _int(1, 10_000),
        "num_candidates": _int(1, 1000),
        "bsize": _int(1, 100_000),
        "max_demos": _int(0, 1000),
        "temperature_for_sampling": _float(0.0, 100.0),
        "temperature_for_candidates": _float(0.0, 100.0),
        "num_threads": _THREADS,
    },
}
USES_VALSET = frozenset({RANDOM_SEARCH, MIPRO, GEPA})
NEEDS_PACKAGE: dict[str, str] = {MIPRO: "optuna", SIMBA: "numpy"}


def normalise_optimizer(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise InvalidArguments(
            "'optimizer' must name an optimizer",
            {"field": "optimizer", "available": list(OPTIMIZER_NAMES)},
        )
    name = _ALIASES.get(raw.lower().removeprefix("dspy.").replace("_", ""))
    if name is None:
        raise InvalidArguments(
            f"unknown optimizer {raw!r}",
            {"field": "optimizer", "optimizer": raw, "available": list(OPTIMIZER_NAMES)},
        )
    package = NEEDS_PACKAGE.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        raise InvalidArguments(
            f"optimizer {name} needs the Python package {package!r}, which is not installed "
            "in the worker's environment",
            {
                "field": "optimizer",
                "optimizer": name,
                "reason": "missing_dependency",
                "package": package,
            },
        )
    return name


def parse_options(name: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArguments("'options' must be a map", {"field": "options"})
    allowed = OPTIONS[name]
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise InvalidArguments(
            f"unknown options {unknown} for {name} (known: {sorted(allowed)})",
            {"field": "options", "optimizer": name, "unknown": unknown, "known": sorted(allowed)},
        )
    return {key: allowed[key].check(key, value) for key, value in raw.items()}


def _bad_option(message: str, key: str, **details: Any) -> InvalidArguments:
    return InvalidArguments(message, {"field": "options", "key": key, **details})


def check_combination(
    name: str, options: dict[str, Any], trainset: int, valset: int | None
) -> None:
    """Refuse option combinations the optimizer would reject only after starting."""
    if name == MIPRO:
        explicit = "num_candidates" in options or "num_trials" in options
        auto = options.get("auto", None if explicit else "light")
        if auto is not None and explicit:
            raise _bad_option("mipro_v2: num_candidates / num_trials need auto: null", "auto")
        if auto is None:
            missing = [k for k in ("num_candidates", "num_trials") if k not in options]
            if missing:
                raise _bad_option(f"mipro_v2 without auto needs {missing}", missing[0])
        if valset is None and trainset < 2:
            raise InvalidArguments(
                "mipro_v2 needs at least 2 trainset examples without a valset",
                {"field": "trainset"},
            )
        val = valset if valset is not None else max(1, int(trainset * 0.8))
        minibatch = options.get("minibatch", True) if auto is None else val > 50
        if minibatch and options.get("minibatch_size", 35) > val:
            raise _bad_option(
                f"mipro_v2: minibatch_size is larger than the validation set ({val}); "
                "pass a smaller minibatch_size or minibatch: false",
                "minibatch_size",
            )
    if name == GEPA:
        given = [k for k in ("auto", "max_full_evals", "max_metric_calls") if options.get(k)]
        if len(given) != 1:
            raise _bad_option(
                "gepa needs exactly one of auto, max_full_evals, max_metric_calls",
                "auto",
                given=given,
            )
    if name == SIMBA and options.get("bsize", 32) > trainset:
        raise _bad_option(
            f"simba: bsize ({options.get('bsize', 32)}) is larger than the trainset ({trainset})",
            "bsize",
        )


@dataclass(frozen=True)
class Budget:
    max_metric_calls: int | None = None
    max_lm_calls: int | None = None


def parse_budget(raw: Any) -> Budget:
    if raw is None:
        return Budget()
    if not isinstance(raw, dict):
        raise InvalidArguments("'budget' must be a map", {"field": "budget"})
    unknown = sorted(str(k) for k in raw if k not in ("max_metric_calls", "max_lm_calls"))
    if unknown:
        raise InvalidArguments(
            f"unknown budget keys {unknown}", {"field": "budget", "unknown": unknown}
        )
    values: dict[str, int | None] = {}
    for key in ("max_metric_calls", "max_lm_calls"):
        value = raw.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_BUDGET
        ):
            raise InvalidArguments(
                f"budget.{key} must be an integer in [1, {MAX_BUDGET}]",
                {"field": "budget", "key": key},
            )
        values[key] = value
    return Budget(values["max_metric_calls"], values["max_lm_calls"])


def job_threads(raw: Any, trainset: int) -> int:
    if raw is None:
        return max(1, min(trainset, DEFAULT_THREADS))
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= MAX_THREADS:
        raise InvalidArguments(
            f"'num_threads' must be an integer in [1, {MAX_THREADS}]", {"field": "num_threads"}
        )
    return raw


def check_seed(raw: Any) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw < 2**32:
        raise InvalidArguments("'seed' must be an integer in [0, 2^32)", {"field": "seed"})
    return raw


# --- the job ---------------------------------------------------------------------------------


class JobStopped(BaseException):
    """Ends an optimizer run: raised through DSPy (a ``BaseException``: never swallowed)."""

    def __init__(self, error: BridgeError) -> None:
        super().__init__(error.message)
        self.error = error


class Job:
    """One ``optimize`` request: its counters, budgets, stop reason and progress events."""

    def __init__(self, slot: ReplySlot, budget: Budget, metric_bound: int | None) -> None:
        self.slot = slot
        self.budget = budget
        self.metric_bound = metric_bound
        self.lock = threading.Lock()
        self.lm_calls = 0
        self.metric_calls = 0
        self.metric_errors = 0
        self.stopped: BridgeError | None = None
        self.best_score: float | None = None
        self.evaluations = 0
        self.val_size: int | None = None
        self._last_event = 0.0
        self.usage: Any = None

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, error: BridgeError) -> BridgeError:
        with self.lock:
            if self.stopped is None:
                self.stopped = error
                log.info("request %d: optimize stopped: %s", self.slot.request_id, error.message)
            return self.stopped

    def check(self) -> None:
        """Raise ``JobStopped`` if the job was stopped, or its request abandoned / past due."""
        if self.stopped is not None:
            raise JobStopped(self.stopped)
        try:
            self.slot.check()
        except BridgeError as exc:
            raise JobStopped(self.stop(exc)) from None

    def _count(self, kind: str) -> None:
        self.check()
        limit = self.budget.max_lm_calls if kind == "max_lm_calls" else self.budget.max_metric_calls
        with self.lock:
            if kind == "max_lm_calls":
                self.lm_calls += 1
                used = self.lm_calls
            else:
                self.metric_calls += 1
                used = self.metric_calls
        if limit is not None and used > limit:
            raise JobStopped(
                self.stop(
                    BudgetExceeded(
                        f"the optimize job needed more than {limit} "
                        f"{'LM' if kind == 'max_lm_calls' else 'metric'} calls "
                        f"(budget.{kind})",
                        {"budget": kind, "limit": limit, "used": used},
                    )
                )
            )

    def lm_call(self) -> None:
        self._count("max_lm_calls")

    def metric_call(self) -> None:
        self._count("max_metric_calls")
        if self.metric_bound is not None or self.slot.events:
            self.progress(
                {
                    "message": f"{self.metric_calls} metric calls",
                    "done": self.metric_calls,
                    **({"total": self.metric_bound} if self.metric_bound is not None else {}),
                }
            )

    def metric_failed(self, message: str) -> None:
        with self.lock:
            self.metric_errors += 1
            first = self.metric_errors == 1
        if first:
            log.warning("request %d: a metric call failed: %s", self.slot.request_id, message)

    # -- progress ----------------------------------------------------------------------------

    def progress(self, data: dict[str, Any], *, force: bool = False) -> None:
        if not self.slot.events:
            return
        now = time.monotonic()
        with self.lock:
            if not force and now - self._last_event < PROGRESS_INTERVAL_S:
                return
            self._last_event = now
            if self.best_score is not None and "best_score" not in data:
                data = {**data, "best_score": self.best_score}
        data = {**data, "message": str(data.get("message", ""))[:_MAX_MESSAGE]}
        self.slot.event("progress", data)

    def evaluated(self, score: float, size: int | None) -> None:
        with self.lock:
            self.evaluations += 1
            count = self.evaluations
            full = self.val_size is None or size is None or size >= self.val_size
            if full and (self.best_score is None or score > self.best_score):
                self.best_score = score
        self.progress({"message": f"evaluation {count}: {score:g}% on {size} examples"}, force=True)


_JOBS: dict[int, Job] = {}
_JOBS_LOCK = threading.Lock()


def _job_of_current() -> Job | None:
    slot = current_request()
    if slot is None:
        return None
    with _JOBS_LOCK:
        return _JOBS.get(id(slot))


# --- the LM and the metric of a job -------------------------------------------------------------


@functools.cache
def _job_lm_class(base: type) -> type:
    class JobLM(base):  # type: ignore[misc, valid-type]
        """A job's copy of an LM: every call is counted (and stopped) by its job first."""

        _dspex_job: Job

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            import dspy

            job = self._dspex_job
            job.lm_call()
            with dspy.context(usage_tracker=job.usage, track_usage=True):
                return super().__call__(*args, **kwargs)

        async def acall(self, *args: Any, **kwargs: Any) -> Any:
            import dspy

            job = self._dspex_job
            job.lm_call()
            with dspy.context(usage_tracker=job.usage, track_usage=True):
                return await super().acall(*args, **kwargs)

    JobLM.__name__ = JobLM.__qualname__ = f"Job{base.__name__}"
    return JobLM


def job_lm(lm: Any, job: Job) -> Any:
    """A copy of ``lm`` whose calls (and its own copies' calls) go through ``job``."""
    copied = lm.copy()
    copied.__class__ = _job_lm_class(type(lm))
    copied._dspex_job = job
    return copied


class JobMetric:
    """The metric an optimizer calls: counted by the job, builtin or batched to the host.

    A failure scores 0 (and is counted); with ``feedback`` it returns
    ``dspy.Prediction(score, feedback)`` for GEPA and SIMBA, a number otherwise.
    """

    def __init__(
        self,
        job: Job,
        metric: MetricSpec,
        program: Program,
        host: HostMetric | None,
        *,
        with_feedback: bool,
    ) -> None:
        self.job = job
        self.metric = metric
        self.program = program
        self.host = host
        self.with_feedback = with_feedback and metric.feedback
        self.declared = {f.name for f in program.spec.outputs}
        self.__name__ = metric.describe()

    def score(self, example: Any, prediction: Any) -> Score:
        if self.metric.kind == BUILTIN:
            return builtin_score(self.metric, example, prediction)
        assert self.host is not None
        try:
            outputs = read_outputs(self.program, prediction)
        except Exception as exc:  # noqa: BLE001 - no prediction to score: a failed example
            return Score.failed(f"no outputs to score: {exc}")
        item = {"example": example_wire(example, self.declared), "prediction": to_plain(outputs)}
        try:
            return self.host.batcher.submit(item)
        except BridgeError as exc:  # the request was abandoned while the host was asked
            raise JobStopped(self.job.stop(exc)) from None

    def __call__(
        self,
        example: Any,
        prediction: Any,
        trace: Any = None,
        pred_name: Any = None,
        pred_trace: Any = None,
    ) -> Any:
        self.job.metric_call()
        result = self.score(example, prediction)
        if result.error is not None:
            self.job.metric_failed(result.error["message"])
        if self.with_feedback:
            import dspy

            return dspy.Prediction(score=result.value, feedback=result.feedback)
        return result.value


@functools.cache
def _callback_class() -> type:
    from dspy.utils.callback import BaseCallback

    class JobCallback(BaseCallback):  # type: ignore[misc]
        """Progress from DSPy's evaluate callbacks: each evaluation's score and size."""

        def __init__(self, job: Job) -> None:
            self.job = job
            self.sizes: dict[str, int | None] = {}
            self.lock = threading.Lock()

        def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            devset = inputs.get("devset") or getattr(instance, "devset", None)
            with self.lock:
                self.sizes[call_id] = len(devset) if devset is not None else None

        def on_evaluate_end(
            self, call_id: str, outputs: Any, exception: BaseException | None = None
        ) -> None:
            with self.lock:
                size = self.sizes.pop(call_id, None)
            score = getattr(outputs, "score", None)
            if exception is None and isinstance(score, (int, float)):
                self.job.evaluated(float(score), size)

    return JobCallback


_TRIAL = re.compile(r"Trial (\d+) / (\d+)")


class _ProgressLogHandler(logging.Handler):
    """Turns the optimizers' own INFO log lines into progress events of the job logging them."""

    def emit(self, record: logging.LogRecord) -> None:
        job = _job_of_current()
        if job is None or not job.slot.events:
            return
        try:
            text = record.getMessage().strip()
        except Exception:  # noqa: BLE001 - a broken log record is no progress
            return
        if not text:
            return
        line = text.splitlines()[0].strip("= ")
        data: dict[str, Any] = {"message": line}
        match = _TRIAL.search(line)
        if match and int(match.group(1)) <= int(match.group(2)):
            data["done"], data["total"] = int(match.group(1)), int(match.group(2))
        job.progress(data, force=match is not None)


_LOG_HANDLER: _ProgressLogHandler | None = None
_LOG_LOCK = threading.Lock()


def _install_log_handler() -> None:
    global _LOG_HANDLER
    with _LOG_LOCK:
        if _LOG_HANDLER is None:
            _LOG_HANDLER = _ProgressLogHandler(logging.INFO)
            for name in ("dspy.teleprompt", "dspy.evaluate"):
                logging.getLogger(name).addHandler(_LOG_HANDLER)


# --- running ---------------------------------------------------------------------------------


@dataclass
class OptimizeRequest:
    optimizer: str
    options: dict[str, Any]
    trainset: list[WireExample]
    valset: list[WireExample] | None
    metric: MetricSpec
    num_threads: int
    budget: Budget
    seed: int | None


def _state_names(module: Any) -> list[str]:
    return [name for name, _ in module.named_parameters()]


def _compile(
    req: OptimizeRequest, metric: JobMetric, student: Any, reflection_lm: Any
) -> tuple[Any, float | None]:
    """Run the optimizer: (the compiled module, its best / validation score or None)."""
    from dspy import teleprompt

    opts = dict(req.options)
    trainset = [ex.example for ex in req.trainset]
    valset = [ex.example for ex in req.valset] if req.valset else None
    threads = opts.pop("num_threads", req.num_threads)
    name = req.optimizer
    if name == BOOTSTRAP:
        compiled = teleprompt.BootstrapFewShot(metric=metric, **opts).compile(
            student, trainset=trainset
        )
        return compiled, None
    if name == RANDOM_SEARCH:
        optimizer = teleprompt.BootstrapFewShotWithRandomSearch(
            metric=metric, num_threads=threads, **opts
        )
        compiled = optimizer.compile(student, trainset=trainset, valset=valset)
        candidates = getattr(compiled, "candidate_programs", None) or []
        return compiled, (float(candidates[0]["score"]) if candidates else None)
    if name == MIPRO:
        init_keys = (
            "auto",
            "num_candidates",
            "max_bootstrapped_demos",
            "max_labeled_demos",
            "init_temperature",
            "max_errors",
            "metric_threshold",
        )
        init = {k: opts.pop(k) for k in init_keys if k in opts}
        if ("num_candidates" in init or "num_trials" in opts) and "auto" not in init:
            init["auto"] = None
        optimizer = teleprompt.MIPROv2(
            metric=metric,
            num_threads=threads,
            seed=9 if req.seed is None else req.seed,
            verbose=False,
            track_stats=True,
            **init,
        )
        compiled = optimizer.compile(student, trainset=trainset, valset=valset, **opts)
        score = getattr(compiled, "score", None)
        return compiled, (float(score) if isinstance(score, (int, float)) else None)
    if name == GEPA:
        optimizer = teleprompt.GEPA(
            metric=metric,
            reflection_lm=reflection_lm,
            num_threads=threads,
            track_stats=True,
            seed=0 if req.seed is None else req.seed,
            **opts,
        )
        compiled = optimizer.compile(student, trainset=trainset, valset=valset)
        results = getattr(compiled, "detailed_results", None)
        if results is None:
            return compiled, None
        return compiled, round(100 * float(results.val_aggregate_scores[results.best_idx]), 2)
    if name == COPRO:
        optimizer = teleprompt.COPRO(metric=metric, **opts)
        compiled = optimizer.compile(
            student,
            trainset=trainset,
            eval_kwargs={"num_threads": threads, "display_progress": False},
        )
        candidates = getattr(compiled, "candidate_programs", None) or []
        return compiled, (float(candidates[0]["score"]) if candidates else None)
    assert name == SIMBA
    optimizer = teleprompt.SIMBA(metric=metric, num_threads=threads, **opts)
    compiled = optimizer.compile(student, trainset=trainset, seed=req.seed or 0)
    candidates = getattr(compiled, "candidate_programs", None) or []
    return compiled, (round(100 * float(candidates[0]["score"]), 2) if candidates else None)


@functools.cache
def _tracker_class() -> type:
    from dspy.utils.usage_tracker import UsageTracker

    class JobUsage(UsageTracker):  # type: ignore[misc]
        """The usage of every LM call of a job, from whichever thread made it."""

        def __init__(self) -> None:
            super().__init__()
            self._lock = threading.Lock()

        def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
            with self._lock:
                super().add_usage(lm, usage_entry)

        def get_total_tokens(self) -> dict[str, dict[str, Any]]:
            with self._lock:
                return dict(super().get_total_tokens())

    return JobUsage


def run_optimize(
    slot: ReplySlot,
    program: Program,
    handle: LmHandle,
    reflection: LmHandle | None,
    req: OptimizeRequest,
) -> dict[str, Any]:
    """Optimize a deep copy of ``program``'s module; the result carries its ``dump_state()``."""
    import dspy

    bound = req.budget.max_metric_calls
    if req.optimizer == GEPA and req.options.get("max_metric_calls"):
        bound = min(bound or MAX_BUDGET, req.options["max_metric_calls"])
    job = Job(slot, req.budget, bound)
    job.usage = _tracker_class()()
    job.val_size = len(req.valset) if req.valset else len(req.trainset)
    host = HostMetric(slot, req.metric) if req.metric.kind != BUILTIN else None
    metric = JobMetric(job, req.metric, program, host, with_feedback=req.optimizer in (GEPA, SIMBA))
    lm = job_lm(handle.lm, job)
    reflection_lm = job_lm(reflection.lm, job) if reflection is not None else None
    student = program.built.module.deepcopy()
    names = _state_names(student)
    _install_log_handler()
    with _JOBS_LOCK:
        _JOBS[id(slot)] = job
    job.progress(
        {
            "message": f"{req.optimizer}: {len(req.trainset)} train, "
            f"{len(req.valset) if req.valset else 0} val examples",
            "done": 0,
            **({"total": bound} if bound is not None else {}),
        },
        force=True,
    )
    settings: dict[str, Any] = {
        "lm": lm,
        "disable_history": True,
        "callbacks": [_callback_class()(job)],
        DSPY_SETTING: slot,
    }
    try:
        with dspy.context(**settings):
            try:
                compiled, score = _compile(req, metric, student, reflection_lm)
            except JobStopped as stop:
                raise stop.error from None
            except BaseException:
                if job.stopped is not None:
                    raise job.stopped from None
                raise
        if job.stopped is not None:  # stopped, and the optimizer swallowed it somewhere
            raise job.stopped
    finally:
        with _JOBS_LOCK:
            _JOBS.pop(id(slot), None)
    state = to_plain(compiled.dump_state())
    if is_single_predictor(compiled):
        predictor_states = {"self": state}
    else:
        # Optimizers attach candidate programs and logs to what they return; only the
        # predictors of the program itself make its state.
        state = {name: state[name] for name in names if name in state}
        predictor_states = state
    for name, value in predictor_states.items():
        if isinstance(value, dict) and value.get("lm") is not None:
            log.warning("optimize: predictor %s came back with an LM set; dropped", name)
            value["lm"] = None
    result: dict[str, Any] = {
        "state": state,
        "optimizer": req.optimizer,
        "metric_calls": job.metric_calls,
        "lm_calls": job.lm_calls,
        "metric_errors": job.metric_errors,
        "usage": usage_of(job.usage.get_total_tokens()),
    }
    if score is not None:
        result["score"] = score
    if host is not None:
        result["metric_callbacks"] = host.callbacks
    job.progress(
        {
            "message": f"{req.optimizer} done: {job.metric_calls} metric calls, "
            f"{job.lm_calls} LM calls",
            "done": job.metric_calls,
            **({"total": bound} if bound is not None else {}),
            **({"best_score": score} if score is not None else {}),
        },
        force=True,
    )
    return result
