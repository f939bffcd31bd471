"""Unit tests (no subprocess): the metric micro-batcher, host score answers, the optimize job
(budgets, stopping, the job's LM copies), optimizer options, the request reaching DSPy's
threads, and the dummy LM's ``follow_examples`` mode."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from dspex_bridge.errors import BudgetExceeded, Cancelled, InvalidArguments
from dspex_bridge.evaluation import MicroBatcher, Score, scores_of_answer
from dspex_bridge.lm import DummyEngine, build_lm, parse_lm_config
from dspex_bridge.optimization import (
    GEPA,
    MIPRO,
    SIMBA,
    Budget,
    Job,
    JobStopped,
    check_combination,
    job_lm,
    normalise_optimizer,
    parse_options,
)
from dspex_bridge.requests import DSPY_SETTING, ReplySlot, current_request

# --- the micro-batcher ----------------------------------------------------------------------------


def _wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)  # polling an in-process queue against a deadline


def test_concurrent_calls_share_callbacks() -> None:
    n = 16
    sizes: list[int] = []
    release = threading.Event()
    holder: list[MicroBatcher] = []

    def flush(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(sizes) == 1:
            # Hold the first batch "at the host" until every other call is queued.
            _wait_until(lambda: len(holder[0]._queue) == n - len(items))
            release.set()
        return [i * 10 for i in items]

    batcher = MicroBatcher(flush, size=64, linger=0.005)
    holder.append(batcher)
    results: dict[int, int] = {}
    barrier = threading.Barrier(n)

    def call(i: int) -> None:
        barrier.wait()
        results[i] = batcher.submit(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert release.is_set()
    assert results == {i: i * 10 for i in range(n)}
    assert sum(sizes) == n
    assert len(sizes) < n
    assert batcher.flushes == len(sizes) <= 2


def test_batches_never_exceed_the_size() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def flush(items: list[int]) -> list[int]:
        sizes.append(len(items))
        gate.wait(5)
        return items

    batcher = MicroBatcher(flush, size=3, linger=0.005)
    threads = [threading.Thread(target=batcher.submit, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    _wait_until(lambda: len(batcher._queue) + sum(sizes) == 10)
    gate.set()
    for t in threads:
        t.join(10)
    assert sum(sizes) == 10
    assert max(sizes) <= 3


def test_a_single_call_is_flushed_alone() -> None:
    batcher = MicroBatcher(lambda items: [x + 1 for x in items], size=8, linger=0.001)
    assert batcher.submit(1) == 2
    assert batcher.submit(5) == 6
    assert batcher.flushes == 2


def test_a_failing_flush_fails_every_caller_of_the_batch() -> None:
    def flush(items: list[int]) -> list[int]:
        raise JobStopped(Cancelled("stop"))

    batcher = MicroBatcher(flush, size=8, linger=0.001)
    with pytest.raises(JobStopped):
        batcher.submit(1)
    # The batcher is usable again (leadership was released).
    batcher2 = MicroBatcher(lambda items: items, size=8, linger=0.001)
    assert batcher2.submit(3) == 3


def test_scores_of_answer() -> None:
    scores = scores_of_answer(
        {"scores": [1, 0.5, {"score": 2, "feedback": "f"}, {"error": "e"}, None]}, 5, "m"
    )
    assert [s.value for s in scores] == [1.0, 0.5, 2.0, 0.0, 0.0]
    assert scores[2].feedback == "f"
    assert scores[3].error == {"kind": "MetricError", "message": "e"}
    assert scores[4].error is not None
    assert all(s.error is not None for s in scores_of_answer({"scores": [1]}, 2, "m"))
    assert all(s.error is not None for s in scores_of_answer(None, 2, "m"))
    assert Score.failed("x").value == 0.0


# --- the job ------------------------------------------------------------------------------------


def _slot(events: bool = False) -> tuple[ReplySlot, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    slot = ReplySlot(1, "optimize", time.monotonic(), None, sent.append, events=events)
    assert slot.begin()
    return slot, sent


def test_budget_counts_and_stops_for_good() -> None:
    slot, _ = _slot()
    job = Job(slot, Budget(max_metric_calls=2, max_lm_calls=None), None)
    job.metric_call()
    job.metric_call()
    with pytest.raises(JobStopped) as info:
        job.metric_call()
    assert isinstance(info.value.error, BudgetExceeded)
    assert info.value.error.details == {"budget": "max_metric_calls", "limit": 2, "used": 3}
    assert not isinstance(info.value, Exception)  # DSPy's `except Exception` cannot catch it
    # Every later call of the job raises the same error at once, LM calls too.
    with pytest.raises(JobStopped) as again:
        job.lm_call()
    assert again.value.error is info.value.error


def test_job_stops_when_its_request_is_cancelled() -> None:
    slot, sent = _slot()
    job = Job(slot, Budget(), None)
    job.lm_call()
    assert slot.cancel(99)
    with pytest.raises(JobStopped) as info:
        job.lm_call()
    assert isinstance(info.value.error, Cancelled)
    assert sent[-1]["error"]["kind"] == "Cancelled"


def test_job_progress_is_throttled_and_only_with_events() -> None:
    slot, sent = _slot(events=False)
    Job(slot, Budget(), None).progress({"message": "x"}, force=True)
    assert sent == []
    slot, sent = _slot(events=True)
    job = Job(slot, Budget(), 10)
    for _ in range(5):
        job.metric_call()
    events = [f["data"] for f in sent if f.get("event") == "progress"]
    assert events == [{"message": "1 metric calls", "done": 1, "total": 10}]
    job.evaluated(50.0, None)
    assert sent[-1]["data"]["best_score"] == 50.0


def test_job_lm_copies_count_and_the_original_is_untouched() -> None:
    import dspy

    handle = build_lm(parse_lm_config({"model": "dummy"}))
    slot, _ = _slot()
    job = Job(slot, Budget(max_lm_calls=2), None)
    from dspy.utils.usage_tracker import UsageTracker

    job.usage = UsageTracker()
    lm = job_lm(handle.lm, job)
    assert type(handle.lm) is dspy.LM
    assert isinstance(lm, dspy.LM)
    copied = lm.copy(rollout_id=1, temperature=1.0)
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=copied):
        predict(question="a")
    with dspy.context(lm=lm):
        predict(question="b")
        with pytest.raises(JobStopped):
            predict(question="c")
    assert job.lm_calls == 3
    assert job.usage.get_total_tokens()["dummy"]["total_tokens"] > 0
    with dspy.context(lm=handle.lm):
        predict(question="d")  # the worker's own LM is not the job's
    assert job.lm_calls == 3


def test_the_request_reaches_dspy_threads() -> None:
    import dspy

    slot, _ = _slot()
    seen: list[Any] = []

    def item(i: int) -> None:
        seen.append(current_request())

    with dspy.context(**{DSPY_SETTING: slot}):
        dspy.Parallel(num_threads=2, disable_progress_bar=True)(
            [(item, {"i": i}) for i in range(4)]
        )
    assert seen == [slot] * 4
    assert current_request() is None


# --- optimizer options --------------------------------------------------------------------------


def test_optimizer_names() -> None:
    assert normalise_optimizer("BootstrapFewShot") == "bootstrap_few_shot"
    assert normalise_optimizer("dspy.COPRO") == "copro"
    assert normalise_optimizer("random_search") == "bootstrap_few_shot_with_random_search"
    with pytest.raises(InvalidArguments) as info:
        normalise_optimizer("sgd")
    assert info.value.details is not None
    assert "gepa" in info.value.details["available"]


def test_option_types() -> None:
    assert parse_options("gepa", {"auto": None, "failure_score": 0}) == {
        "auto": None,
        "failure_score": 0.0,
    }
    for bad in (
        {"auto": "max"},
        {"use_merge": 1},
        {"max_metric_calls": 1.5},
        {"failure_score": float("nan")},
    ):
        with pytest.raises(InvalidArguments) as info:
            parse_options("gepa", bad)
        assert info.value.details == {"field": "options", "key": next(iter(bad))}


@pytest.mark.parametrize(
    ("name", "options", "train", "val", "key"),
    [
        (MIPRO, {"auto": "light", "num_trials": 3}, 10, None, "auto"),
        (MIPRO, {"num_candidates": 3}, 10, None, "num_trials"),
        (MIPRO, {"auto": None, "num_candidates": 2, "num_trials": 2}, 10, 4, "minibatch_size"),
        (MIPRO, {}, 1, None, None),
        (GEPA, {}, 10, None, "auto"),
        (GEPA, {"auto": "light", "max_metric_calls": 5}, 10, None, "auto"),
        (SIMBA, {}, 10, None, "bsize"),
    ],
)
def test_option_combinations(
    name: str, options: dict[str, Any], train: int, val: int | None, key: str | None
) -> None:
    with pytest.raises(InvalidArguments) as info:
        check_combination(name, options, train, val)
    assert info.value.details is not None
    assert info.value.details.get("key") == key


def test_valid_combinations() -> None:
    check_combination(MIPRO, {}, 10, None)
    check_combination(
        MIPRO, {"auto": None, "num_candidates": 2, "num_trials": 2, "minibatch": False}, 10, 4
    )
    check_combination(GEPA, {"max_full_evals": 2}, 10, None)
    check_combination(SIMBA, {"bsize": 4}, 4, None)


# --- the dummy LM's follow_examples ---------------------------------------------------------------


def test_follow_examples_config() -> None:
    assert parse_lm_config({"model": "dummy", "follow_examples": True}).follow_examples
    assert not parse_lm_config({"model": "dummy", "follow_examples": None}).follow_examples
    plain, follow = (
        parse_lm_config({"model": "dummy"}),
        parse_lm_config({"model": "dummy", "follow_examples": True}),
    )
    assert plain.key() != follow.key()
    for raw, field in (
        ({"model": "dummy", "follow_examples": "yes"}, "follow_examples"),
        ({"model": "openai/x", "follow_examples": True}, "follow_examples"),
    ):
        with pytest.raises(InvalidArguments) as info:
            parse_lm_config(raw)
        assert info.value.details == {"field": field}


def _predict(lm: Any, demos: list[dict[str, Any]], adapter: Any = None, **inputs: Any) -> Any:
    import dspy

    predict = dspy.Predict("question, topic -> answer, score: int")
    predict.demos = demos
    settings: dict[str, Any] = {"lm": lm}
    if adapter is not None:
        settings["adapter"] = adapter
    with dspy.context(**settings):
        return predict(**inputs)


@pytest.mark.parametrize("adapter", ["chat", "json"])
def test_follow_examples_answers_a_matching_demo(adapter: str) -> None:
    import dspy

    follow = build_lm(parse_lm_config({"model": "dummy", "follow_examples": True})).lm
    plain = build_lm(parse_lm_config({"model": "dummy"})).lm
    chosen = dspy.JSONAdapter() if adapter == "json" else None
    demos = [
        {"question": "q1", "topic": "t", "answer": "first", "score": 7},
        {"question": "q2", "topic": "t", "answer": "second", "score": 8},
    ]
    got = _predict(follow, demos, chosen, question="q2", topic="t")
    assert (got.answer, got.score) == ("second", 8)
    # Only the inputs decide: another topic is another example.
    other = _predict(follow, demos, chosen, question="q2", topic="u")
    assert other.answer == _predict(plain, demos, chosen, question="q2", topic="u").answer
    # An incomplete demo supplies what it has; the rest is answered as usual.
    partial = _predict(
        follow,
        [{"question": "q3", "topic": "t", "answer": "third"}],
        chosen,
        question="q3",
        topic="t",
    )
    assert partial.answer == "third"
    assert isinstance(partial.score, int)


def test_answer_without_demos_is_unchanged() -> None:
    engine = DummyEngine(follow_examples=True)
    system = (
        "Your input fields are:\n1. `question` (str)\nYour output fields are:\n1. `answer` (str)\n"
        "All interactions will be structured in the following way"
    )
    user = "[[ ## question ## ]]\nhi"
    assert engine.answer(system, user) == DummyEngine().answer(system, user)
    demo = ("[[ ## question ## ]]\nhi", "[[ ## answer ## ]]\nhello\n\n[[ ## completed ## ]]")
    assert "hello" in engine.answer(system, user, demos=[demo])
    assert "hello" not in DummyEngine().answer(system, user, demos=[demo])
    json_demo = ("[[ ## question ## ]]\nhi", json.dumps({"answer": "from json"}))
    assert "from json" in engine.answer(system, user, demos=[json_demo])
