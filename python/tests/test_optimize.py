"""``optimize``: the capitals story (optimizing raises the score, and the state carries it to a
fresh worker and to plain DSPy), every optimizer end to end on the dummy LM, argument errors,
budgets, cancel and deadline mid-run, host metrics (batched, failing) inside optimizers."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dspex_bridge.lm import build_lm, parse_lm_config
from dspex_bridge.signatures import build_dspy_signature, parse_signature

from .conftest import CAPITALS_SIGNATURE, SpawnFn, Worker, capitals

SIGNATURE = CAPITALS_SIGNATURE
TRAINSET: list[dict[str, Any]] = capitals("train")
DEVSET: list[dict[str, Any]] = capitals("dev")
FOLLOW = {"model": "dummy", "follow_examples": True}
EXACT = {"builtin": "answer_exact_match"}
PROGRESS_KEYS = {"message", "done", "total", "best_score"}
HAS_OPTUNA = importlib.util.find_spec("optuna") is not None
HAS_NUMPY = importlib.util.find_spec("numpy") is not None


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    worker = Worker({"DSPEX_TEST_FAULTS": "1"}, ["--worker-id", "optimize"], lazy=False)
    try:
        worker.ready = worker.handshake(60.0)
        worker.call("configure_lm", FOLLOW)
        worker.call("configure_lm", {**FOLLOW, "latency_ms": 100, "lm_id": "slow"})
        worker.call("create_program", {"program_id": "cap", "signature": SIGNATURE})
        yield worker
    finally:
        worker.kill()


@pytest.fixture(autouse=True)
def _no_handler(worker: Worker) -> Iterator[None]:
    yield
    worker.call_handler = None


def _optimize(worker: Worker, optimizer: str, **args: Any) -> dict[str, Any]:
    request = {"program_id": "cap", "optimizer": optimizer, "trainset": TRAINSET, "metric": EXACT}
    request.update(args)
    return worker.request("optimize", request, timeout=60.0, events=True)


def _score(worker: Worker, program: dict[str, Any], lm_id: str | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "program_id": program["program_id"],
        "program": program,
        "devset": DEVSET,
        "metric": EXACT,
    }
    if lm_id is not None:
        args["lm_id"] = lm_id
    return worker.call("evaluate", args)


def _progress(worker: Worker, request_id: int) -> list[dict[str, Any]]:
    return [f["data"] for f in worker.frames_of(request_id) if f.get("event") == "progress"]


def _wait(
    worker: Worker, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    with worker.side_cond:
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{what} not reached within {timeout} s")
            worker.side_cond.wait(left)


def _wait_idle(worker: Worker, timeout: float = 5.0) -> float:
    """Poll until no optimize job runs; returns how long that took."""
    started = time.monotonic()
    while worker.call("get_stats")["optimizing"] != 0:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the optimize job was still running after {timeout} s")
        time.sleep(0.01)  # polling the worker's counter against a deadline
    return time.monotonic() - started


# --- the story --------------------------------------------------------------------------------


def test_optimizing_raises_the_score_and_the_state_travels(
    worker: Worker, spawn: SpawnFn, tmp_path: Path
) -> None:
    import dspy

    plain = {"program_id": "story", "signature": SIGNATURE}
    worker.call("create_program", plain)
    before = _score(worker, plain)
    assert before["score"] == 0.0
    reply = _optimize(worker, "bootstrap_few_shot", program_id="story", program=plain)
    assert reply["ok"] is True, reply
    result = reply["result"]
    assert set(result) >= {
        "program_id",
        "state",
        "dependency_versions",
        "optimizer",
        "metric_calls",
        "lm_calls",
        "duration_ms",
    }
    assert result["optimizer"] == "bootstrap_few_shot"
    assert "score" not in result  # BootstrapFewShot has no score of its own
    assert result["metric_calls"] == result["lm_calls"] == len(TRAINSET)
    state = result["state"]
    # Default BootstrapFewShot: no trace bootstraps (the teacher never sees the example it is
    # asked), so 16 of the 20 train examples become labeled demos; 8 dev questions are among them.
    assert len(state["demos"]) == 16
    # The worker's cached program is not changed by optimizing.
    assert worker.call("get_program_state", {"program_id": "story"})["state"]["demos"] == []
    assert worker.call("get_program_info", {"program_id": "story"})["state"] is False

    optimized = {"program_id": "story-opt", "signature": SIGNATURE, "state": state}
    after = _score(worker, optimized)
    assert after["score"] == 80.0 > before["score"]

    fresh = spawn(lazy=False)
    fresh.call("configure_lm", FOLLOW)
    fresh.call("create_program", optimized)
    again = _score(fresh, optimized)
    assert again["score"] == after["score"]
    assert again["results"] == after["results"]

    lm = build_lm(parse_lm_config(FOLLOW)).lm
    signature = build_dspy_signature(parse_signature(SIGNATURE))
    loaded = dspy.Predict(signature)
    loaded.load_state(state)
    path = tmp_path / "optimized.json"
    path.write_text(
        json.dumps({**state, "metadata": {"dependency_versions": result["dependency_versions"]}})
    )
    from_file = dspy.Predict(signature)
    from_file.load(str(path))
    for ex, entry in zip(DEVSET, after["results"], strict=True):
        with dspy.context(lm=lm):
            assert loaded(**ex["inputs"]).answer == entry["outputs"]["answer"]
            assert from_file(**ex["inputs"]).answer == entry["outputs"]["answer"]


def test_chain_of_thought_is_optimized_too(worker: Worker) -> None:
    program = {"program_id": "cot", "signature": SIGNATURE, "module": "chain_of_thought"}
    worker.call("create_program", program)
    assert _score(worker, program)["score"] == 0.0
    reply = _optimize(
        worker, "bootstrap_few_shot", program_id="cot", options={"max_labeled_demos": 20}
    )
    assert reply["ok"] is True, reply
    assert set(reply["result"]["state"]) == {"predict"}
    assert _score(worker, {**program, "state": reply["result"]["state"]})["score"] == 100.0


# --- every optimizer ------------------------------------------------------------------------------

SMALL = TRAINSET[:8]
VALSET = DEVSET[:4]
CASES: list[Any] = [
    pytest.param("bootstrap_few_shot", {}, {}, id="bootstrap_few_shot"),
    pytest.param(
        "BootstrapFewShotWithRandomSearch",
        {"num_candidate_programs": 1},
        {"valset": VALSET},
        id="random_search",
    ),
    pytest.param(
        "mipro_v2",
        {"auto": None, "num_candidates": 2, "num_trials": 2, "minibatch": False},
        {"valset": VALSET},
        id="mipro_v2",
        marks=pytest.mark.skipif(not HAS_OPTUNA, reason="optuna is not installed"),
    ),
    pytest.param(
        "gepa",
        {"max_metric_calls": 16, "reflection_minibatch_size": 2},
        {"valset": VALSET, "reflection_lm": {"model": "dummy"}},
        id="gepa",
    ),
    pytest.param("copro", {"breadth": 2, "depth": 1}, {}, id="copro"),
    pytest.param(
        "simba",
        {"bsize": 4, "max_steps": 1, "num_candidates": 2},
        {},
        id="simba",
        marks=pytest.mark.skipif(not HAS_NUMPY, reason="numpy is not installed"),
    ),
]


@pytest.mark.parametrize(("optimizer", "options", "extra"), CASES)
def test_every_optimizer_runs_end_to_end(
    worker: Worker, optimizer: str, options: dict[str, Any], extra: dict[str, Any]
) -> None:
    reply = _optimize(
        worker, optimizer, trainset=SMALL, options=options, seed=1, num_threads=2, **extra
    )
    assert reply["ok"] is True, reply
    result = reply["result"]
    assert result["metric_calls"] > 0
    assert result["lm_calls"] > 0
    assert result["metric_errors"] == 0
    assert result["usage"]["dummy"]["total_tokens"] > 0
    if optimizer != "bootstrap_few_shot":
        assert 0.0 <= result["score"] <= 100.0
    events = _progress(worker, reply["id"])
    assert len(events) >= 2
    assert all(set(e) <= PROGRESS_KEYS and isinstance(e["message"], str) for e in events)
    # The state loads back into the program.
    worker.call(
        "create_program",
        {"program_id": f"back-{optimizer}", "signature": SIGNATURE, "state": result["state"]},
    )


@pytest.mark.skipif(HAS_OPTUNA and HAS_NUMPY, reason="both optional packages are installed")
def test_missing_optional_packages_are_typed_errors(worker: Worker) -> None:
    for optimizer, package, present in (
        ("mipro_v2", "optuna", HAS_OPTUNA),
        ("simba", "numpy", HAS_NUMPY),
    ):
        if present:
            continue
        error = worker.error(
            "optimize",
            {"program_id": "cap", "optimizer": optimizer, "trainset": SMALL, "metric": EXACT},
        )
        assert error["kind"] == "InvalidArguments"
        assert error["details"]["field"] == "optimizer"
        assert error["details"]["reason"] == "missing_dependency"
        assert error["details"]["package"] == package


# --- argument errors ----------------------------------------------------------------------------


def _bad_requests() -> list[Any]:
    bad_item = [TRAINSET[0], {"inputs": {"question": 1}}]
    return [
        ({"optimizer": None}, {"field": "optimizer"}),
        ({"optimizer": "adam"}, {"field": "optimizer", "optimizer": "adam"}),
        ({"options": {"learning_rate": 1}}, {"field": "options", "unknown": ["learning_rate"]}),
        ({"options": "fast"}, {"field": "options"}),
        ({"options": {"max_rounds": 0}}, {"field": "options", "key": "max_rounds"}),
        ({"options": {"max_rounds": "2"}}, {"field": "options", "key": "max_rounds"}),
        ({"options": {"metric_threshold": True}}, {"field": "options", "key": "metric_threshold"}),
        ({"valset": DEVSET}, {"field": "valset", "reason": "not_used"}),
        ({"reflection_lm": {"model": "dummy"}}, {"field": "reflection_lm", "reason": "not_used"}),
        ({"trainset": []}, {"field": "trainset"}),
        ({"trainset": bad_item}, {"field": "trainset", "index": 1}),
        (
            {"optimizer": "random_search", "valset": bad_item},
            {"field": "valset", "index": 1},
        ),
        ({"metric": {"builtin": "bleu"}}, {"field": "metric"}),
        ({"budget": 10}, {"field": "budget"}),
        ({"budget": {"max_lm_calls": 0}}, {"field": "budget", "key": "max_lm_calls"}),
        ({"budget": {"max_tokens": 5}}, {"field": "budget", "unknown": ["max_tokens"]}),
        ({"seed": -1}, {"field": "seed"}),
        ({"seed": "7"}, {"field": "seed"}),
        ({"num_threads": 0}, {"field": "num_threads"}),
        ({"optimizer": "gepa", "options": {"auto": "light"}}, {"field": "reflection_lm"}),
        (
            {"optimizer": "gepa", "options": {"auto": "light"}, "reflection_lm": {"model": ""}},
            {"field": "reflection_lm", "key": "model"},
        ),
        (
            {"optimizer": "gepa", "reflection_lm": {"model": "dummy"}},
            {"field": "options", "key": "auto"},
        ),
        (
            {
                "optimizer": "gepa",
                "options": {"auto": "light", "max_full_evals": 2},
                "reflection_lm": {"model": "dummy"},
            },
            {"field": "options", "key": "auto"},
        ),
        ({"optimizer": "copro", "options": {"breadth": 1}}, {"field": "options", "key": "breadth"}),
        ({"program_id": "nowhere"}, {"program_id": "nowhere"}),
    ]


@pytest.mark.parametrize(("override", "details"), _bad_requests())
def test_bad_arguments(worker: Worker, override: dict[str, Any], details: dict[str, Any]) -> None:
    request = {
        "program_id": "cap",
        "optimizer": "bootstrap_few_shot",
        "trainset": TRAINSET,
        "metric": EXACT,
        **override,
    }
    error = worker.error("optimize", request)
    expected = "ProgramNotFound" if "program_id" in override else "InvalidArguments"
    assert error["kind"] == expected, error
    for key, value in details.items():
        assert error["details"][key] == value, error


@pytest.mark.skipif(not HAS_NUMPY, reason="numpy is not installed")
def test_simba_batch_larger_than_the_trainset(worker: Worker) -> None:
    error = worker.error(
        "optimize",
        {"program_id": "cap", "optimizer": "simba", "trainset": SMALL, "metric": EXACT},
    )
    assert error["details"] == {"field": "options", "key": "bsize"}


# --- budgets, cancel, deadline --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "limit"), [("max_lm_calls", 3), ("max_metric_calls", 2), ("max_lm_calls", 1)]
)
def test_budget_exceeded(worker: Worker, budget: str, limit: int) -> None:
    reply = _optimize(worker, "bootstrap_few_shot", budget={budget: limit})
    assert reply["ok"] is False
    error = reply["error"]
    assert error["kind"] == "BudgetExceeded"
    assert error["details"] == {"budget": budget, "limit": limit, "used": limit + 1}
    assert worker.call("ping")["status"] == "ok"
    assert _wait_idle(worker) < 5.0


def test_budget_not_reached(worker: Worker) -> None:
    reply = _optimize(
        worker, "bootstrap_few_shot", budget={"max_lm_calls": 20, "max_metric_calls": 20}
    )
    assert reply["ok"] is True, reply
    assert reply["result"]["lm_calls"] == 20


def test_budget_counts_the_reflection_lm(worker: Worker) -> None:
    reply = _optimize(
        worker,
        "gepa",
        trainset=SMALL,
        valset=VALSET,
        options={"max_metric_calls": 16, "reflection_minibatch_size": 2},
        reflection_lm={"model": "dummy"},
    )
    assert reply["ok"] is True, reply
    used = reply["result"]["lm_calls"]
    program_calls = reply["result"]["metric_calls"]
    # Every metric call scores one program run; the reflection LM's calls come on top.
    assert used > 0
    limited = _optimize(
        worker,
        "gepa",
        trainset=SMALL,
        valset=VALSET,
        options={"max_metric_calls": 16, "reflection_minibatch_size": 2},
        reflection_lm={"model": "dummy"},
        budget={"max_lm_calls": used - 1},
    )
    assert limited["ok"] is False
    assert limited["error"]["details"]["budget"] == "max_lm_calls"
    assert program_calls > 0


def _start_slow(worker: Worker, **extra: Any) -> int:
    request = {
        "program_id": "cap",
        "optimizer": "bootstrap_few_shot_with_random_search",
        "options": {"num_candidate_programs": 4},
        "trainset": TRAINSET,
        "valset": DEVSET,
        "metric": EXACT,
        "lm_id": "slow",
        "num_threads": 2,
    }
    request_id = worker.submit("optimize", request, events=True, **extra)
    _wait(
        worker,
        lambda: any(f.get("event") == "progress" for f in worker.log if f.get("id") == request_id),
        what="the optimize job's first progress event",
    )
    return request_id


def test_cancel_mid_optimize(worker: Worker) -> None:
    finished = worker.call("get_stats")["optimizations"]
    request_id = _start_slow(worker)
    # The worker keeps serving other requests while it optimizes.
    assert worker.call("ping")["status"] == "ok"
    out = worker.call("execute_program", {"program_id": "cap", "inputs": {"question": "q"}})
    assert "answer" in out["outputs"]
    assert worker.call("get_stats")["optimizing"] == 1
    started = time.monotonic()
    assert worker.call("cancel", {"request_id": request_id}) == {"cancelled": True}
    reply = worker.reply(request_id)
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "Cancelled"
    assert time.monotonic() - started < 2.0
    # The job stops at its next LM or metric call (the slow LM's wait ends at the cancel).
    assert _wait_idle(worker) < 2.0
    assert worker.call("get_stats")["optimizations"] == finished  # a cancelled job is no success
    again = _optimize(worker, "bootstrap_few_shot", trainset=SMALL)
    assert again["ok"] is True


def test_deadline_mid_optimize(worker: Worker) -> None:
    request_id = _start_slow(worker, deadline_ms=600)
    reply = worker.reply(request_id, timeout=10.0)
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "DeadlineExceeded"
    assert _wait_idle(worker) < 2.0
    assert worker.call("ping")["status"] == "ok"


# --- host metrics inside optimizers --------------------------------------------------------------


def _exact_scores(items: list[dict[str, Any]]) -> list[float]:
    return [float(i["prediction"]["answer"] == i["example"]["labels"]["answer"]) for i in items]


def test_host_metric_calls_are_micro_batched(worker: Worker) -> None:
    sizes: list[int] = []
    lock = threading.Lock()

    def handler(frame: dict[str, Any]) -> dict[str, Any]:
        items = frame["args"]["items"]
        with lock:
            sizes.append(len(items))
        return {"ok": True, "result": {"scores": _exact_scores(items)}}

    worker.call_handler = handler
    reply = _optimize(
        worker,
        "bootstrap_few_shot_with_random_search",
        options={"num_candidate_programs": 1},
        valset=DEVSET,
        metric={"callback": "exact", "batch": 8},
        num_threads=8,
    )
    assert reply["ok"] is True, reply
    result = reply["result"]
    callbacks = worker.calls.get(reply["id"], [])
    assert len(callbacks) == len(sizes) == result["metric_callbacks"]
    assert sum(sizes) == result["metric_calls"]
    assert max(sizes) <= 8
    assert max(sizes) > 1
    assert len(callbacks) < result["metric_calls"]
    assert result["score"] == 100.0


def test_host_metric_errors_are_failed_examples(worker: Worker) -> None:
    answers = iter(range(10_000))

    def handler(frame: dict[str, Any]) -> dict[str, Any]:
        n = next(answers)
        items = frame["args"]["items"]
        if n % 3 == 0:
            return {"ok": False, "error": {"kind": "ToolError", "message": "judge down"}}
        if n % 3 == 1:
            return {"ok": True, "result": {"scores": ["bad"] * len(items)}}
        return {"ok": True, "result": {"scores": [{"error": "no"}] * len(items)}}

    worker.call_handler = handler
    reply = _optimize(worker, "bootstrap_few_shot", trainset=SMALL, metric={"callback": "judge"})
    assert reply["ok"] is True, reply
    result = reply["result"]
    assert result["metric_errors"] == result["metric_calls"] == len(SMALL)
    # Every example failed: nothing was bootstrapped, only labeled demos remain.
    assert all("augmented" not in d for d in result["state"]["demos"])


def test_host_tools_work_in_the_optimizers_threads(worker: Worker) -> None:
    """A ReAct program's tools are host callbacks; the optimizer runs the program in DSPy's
    own threads, which the request reaches through the DSPy setting."""
    tool = {
        "name": "lookup",
        "args": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    program = {
        "program_id": "agent",
        "signature": SIGNATURE,
        "module": "react",
        "module_args": {"tools": [tool], "max_iters": 3},
    }
    worker.call("create_program", program)
    names: list[str] = []
    lock = threading.Lock()

    def handler(frame: dict[str, Any]) -> dict[str, Any]:
        with lock:
            names.append(frame["name"])
        if frame["name"] == "lookup":
            return {"ok": True, "result": "sunny"}
        return {"ok": True, "result": {"scores": [0.0] * len(frame["args"]["items"])}}

    worker.call_handler = handler
    reply = _optimize(
        worker,
        "bootstrap_few_shot_with_random_search",
        program_id="agent",
        trainset=SMALL[:4],
        valset=VALSET,
        options={"num_candidate_programs": 1},
        metric={"callback": "judge"},
        num_threads=4,
    )
    assert reply["ok"] is True, reply
    assert reply["result"]["metric_errors"] == 0
    assert "lookup" in names
    assert "judge" in names
    assert set(reply["result"]["state"]) == {"react", "extract.predict"}


def test_gepa_with_host_feedback(worker: Worker) -> None:
    def handler(frame: dict[str, Any]) -> dict[str, Any]:
        items = frame["args"]["items"]
        return {
            "ok": True,
            "result": {
                "scores": [
                    {"score": s, "feedback": "right" if s else "name the capital city"}
                    for s in _exact_scores(items)
                ]
            },
        }

    worker.call_handler = handler
    reply = _optimize(
        worker,
        "gepa",
        trainset=SMALL,
        valset=VALSET,
        options={"max_metric_calls": 12, "reflection_minibatch_size": 2},
        reflection_lm={"model": "dummy"},
        metric={"callback": "judge", "feedback": True},
    )
    assert reply["ok"] is True, reply
    assert reply["result"]["metric_errors"] == 0
    assert reply["result"]["metric_callbacks"] > 0


def test_stats_count_optimizations(worker: Worker) -> None:
    before = worker.call("get_stats")
    assert _optimize(worker, "bootstrap_few_shot", trainset=SMALL)["ok"] is True
    after = worker.call("get_stats")
    assert after["optimizations"] == before["optimizations"] + 1
    assert after["optimizing"] == 0
    assert after["requests"]["optimizations"] == after["optimizations"]


def test_no_progress_bars_on_stderr(worker: Worker) -> None:
    """tqdm bars (BootstrapFewShot's, Evaluate's inside the optimizers) are off: stderr carries
    log lines only."""
    reply = _optimize(
        worker,
        "bootstrap_few_shot_with_random_search",
        options={"num_candidate_programs": 1},
        trainset=SMALL,
    )
    assert reply["ok"] is True
    worker.sync_stderr()
    text = worker.stderr_text()
    assert "it/s]" not in text
    lines = [line for line in text.splitlines() if line.strip() and "dspex-sync-" not in line]
    assert all(" dspex[" in line for line in lines), [x for x in lines if " dspex[" not in x][:3]
    assert any("dspy.evaluate.evaluate: Average Metric" in line for line in lines)


def test_concurrent_jobs_keep_their_own_counts(worker: Worker) -> None:
    request = {
        "program_id": "cap",
        "optimizer": "bootstrap_few_shot",
        "trainset": TRAINSET,
        "metric": EXACT,
    }
    first = worker.submit("optimize", request, events=True)
    second = worker.submit("optimize", {**request, "trainset": SMALL}, events=True)
    run = worker.submit("execute_program", {"program_id": "cap", "inputs": {"question": "q"}})
    assert worker.reply(run)["ok"] is True
    one, two = worker.reply(first, timeout=60.0), worker.reply(second, timeout=60.0)
    assert one["ok"] is True, one
    assert two["ok"] is True, two
    assert one["result"]["lm_calls"] == one["result"]["metric_calls"] == len(TRAINSET)
    assert two["result"]["lm_calls"] == two["result"]["metric_calls"] == len(SMALL)
    for request_id, total in ((first, len(TRAINSET)), (second, len(SMALL))):
        assert _progress(worker, request_id)[-1]["done"] == total
