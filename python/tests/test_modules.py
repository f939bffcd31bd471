"""The modules beyond predict / chain_of_thought, with the test acting as the host.

One DSPy worker for the module, with the dummy LM and a project directory holding the
user's own modules (``module: "python"``).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Worker, qa_signature
from .test_commands import expected_hash

LOOKUP = {
    "name": "lookup",
    "description": "Look up the weather of a city.",
    "args": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
CONVERT = {
    "name": "convert",
    "description": "Convert a temperature.",
    "args": {"type": "object", "properties": {"celsius": {"type": "number"}}},
}

USER_MODULES = {
    "userpkg/__init__.py": "",
    "userpkg/good.py": """
        import dspy

        class Echo(dspy.Module):
            def __init__(self, prefix="echo"):
                super().__init__()
                self.prefix = prefix
                self.predict = dspy.Predict("question -> answer")

            def forward(self, question):
                pred = self.predict(question=question)
                return dspy.Prediction(answer=f"{self.prefix} {pred.answer}", size=len(question))

        class Fails(dspy.Module):
            def forward(self, question):
                raise ValueError("forward broke on " + question)

        class BadInit(dspy.Module):
            def __init__(self):
                raise RuntimeError("constructor broke")

        class NoAnswer(dspy.Module):
            def forward(self, question):
                return dspy.Prediction(other=1)

        def make(prefix):
            return Echo(prefix=prefix)

        class NoLM(dspy.Module):
            def forward(self, question):
                return {"answer": question.upper()}

        CONSTRUCTED = []

        class Counted(Echo):
            def __init__(self):
                CONSTRUCTED.append(1)
                super().__init__(prefix=f"built {len(CONSTRUCTED)}")
    """,
    "userpkg/broken.py": "def oops(:\n    pass\n",
    "userpkg/reexport.py": "from dspy import Predict\n",
    "userpkg/needs_missing.py": "import dspex_no_such_dependency\n",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name, text in USER_MODULES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture(scope="module")
def worker(project: Path) -> Iterator[Worker]:
    env = {"DSPEX_TEST_FAULTS": "1", "DSPEX_PROJECT_DIR": str(project)}
    worker = Worker(env, ["--worker-id", "modules"], lazy=False)
    try:
        worker.ready = worker.handshake(60.0)
        worker.call("configure_lm", {"model": "dummy"})
        worker.call("create_program", {"program_id": "plain", "signature": qa_signature()})
        yield worker
    finally:
        worker.kill()


Host = Callable[[dict[str, Any]], dict[str, Any] | None]


@pytest.fixture
def host(worker: Worker) -> Iterator[Callable[[Host], None]]:
    """Install a callback handler (the test as host) for the duration of a test."""

    def install(handler: Host) -> None:
        worker.call_handler = handler

    yield install
    worker.call_handler = None


def _create(worker: Worker, program_id: str, module: str, **extra: Any) -> dict[str, Any]:
    extra.setdefault("signature", qa_signature())
    return worker.call("create_program", {"program_id": program_id, "module": module, **extra})


def _run(worker: Worker, program_id: str, question: str = "weather in Paris?", **extra: Any) -> Any:
    request_id = worker.submit(
        "execute_program", {"program_id": program_id, "inputs": {"question": question}, **extra}
    )
    return request_id, worker.reply(request_id)


def _serves_another_program(worker: Worker) -> None:
    result = worker.call("execute_program", {"program_id": "plain", "inputs": {"question": "q"}})
    assert result["outputs"]["answer"].startswith("answer: ")


# --- react ----------------------------------------------------------------------------------


def test_react_calls_the_host_tool_then_finishes(worker: Worker, host: Any) -> None:
    created = _create(worker, "react-1", "react", module_args={"tools": [LOOKUP, CONVERT]})
    assert created["outputs"] == ["trajectory", "reasoning", "answer"]
    assert created["module"] == "react"
    host(lambda f: {"ok": True, "result": {"temp": 21, "city": f["args"]["city"]}})
    request_id, reply = _run(worker, "react-1")
    assert reply["ok"] is True, reply
    (call,) = worker.calls[request_id]
    assert call["name"] == "lookup"  # the first tool, with schema-conforming arguments
    assert set(call["args"]) == {"city", "days"}
    assert isinstance(call["args"]["city"], str)
    assert isinstance(call["args"]["days"], int)
    outputs = reply["result"]["outputs"]
    trajectory = json.loads(outputs["trajectory"])
    assert trajectory["tool_name_0"] == "lookup"
    assert trajectory["tool_args_0"] == call["args"]
    assert trajectory["observation_0"] == {"temp": 21, "city": call["args"]["city"]}
    assert trajectory["tool_name_1"] == "finish"
    assert outputs["reasoning"].startswith("reasoning: ")
    assert outputs["answer"].startswith("answer: ")
    # the same inputs and observations give the same answer
    _, again = _run(worker, "react-1")
    assert again["result"]["outputs"] == outputs


def test_react_tool_error_reaches_the_lm_as_an_observation(worker: Worker, host: Any) -> None:
    _create(worker, "react-err", "react", module_args={"tools": [LOOKUP], "max_iters": 3})
    error = {"kind": "NotFound", "message": "no weather station in Paris"}
    host(lambda f: {"ok": False, "error": error})
    request_id, reply = _run(worker, "react-err", lm_history=True)
    assert reply["ok"] is True, reply  # a tool error never fails the request by itself
    trajectory = json.loads(reply["result"]["outputs"]["trajectory"])
    observation = trajectory["observation_0"]
    assert observation.startswith("Execution error in lookup: ")
    assert "NotFound: no weather station in Paris" in observation
    assert trajectory["tool_name_1"] == "finish"
    # the LM saw it: the second step's prompt carries the observation
    second_prompt = reply["result"]["lm_history"][1]["messages"][-1]["content"]
    assert "Execution error in lookup" in second_prompt
    assert len(worker.calls[request_id]) == 1


def test_react_without_tools_just_finishes(worker: Worker, host: Any) -> None:
    _create(worker, "react-none", "dspy.ReAct", module_args={"tools": []})
    request_id, reply = _run(worker, "react-none")
    assert reply["ok"] is True, reply
    assert json.loads(reply["result"]["outputs"]["trajectory"])["tool_name_0"] == "finish"
    assert request_id not in worker.calls


def test_react_deadline_while_a_tool_runs(worker: Worker) -> None:
    _create(worker, "react-slow", "react", module_args={"tools": [LOOKUP]})
    request_id = worker.submit(
        "execute_program",
        {"program_id": "react-slow", "inputs": {"question": "q"}},
        deadline_ms=300,
    )
    worker.wait_calls(request_id, 1)  # never answered
    reply = worker.reply(request_id, timeout=5.0)
    assert reply["error"]["kind"] == "DeadlineExceeded"
    worker.wait_stats(lambda r: r["in_flight"] == 1)
    _serves_another_program(worker)


@pytest.mark.parametrize(
    ("tools", "tool"),
    [
        ([{**LOOKUP, "name": "finish"}], "finish"),
        ([LOOKUP, LOOKUP], "lookup"),
        ([{**LOOKUP, "name": "not an identifier"}], "not an identifier"),
        ([{**LOOKUP, "args": {"type": "array"}}], "lookup"),
        ([{**LOOKUP, "args": {"type": "object", "properties": {"x": 1}}}], "lookup"),
        ([{**LOOKUP, "args": {"type": "object", "required": ["x"]}}], "lookup"),
        ([{**LOOKUP, "description": 5}], "lookup"),
        ([{**LOOKUP, "extra": True}], "lookup"),
    ],
)
def test_react_bad_tool_specs_name_the_tool(worker: Worker, tools: Any, tool: str) -> None:
    error = worker.error(
        "create_program",
        {
            "program_id": "react-bad",
            "signature": qa_signature(),
            "module": "react",
            "module_args": {"tools": tools},
        },
    )
    assert error["kind"] == "InvalidArguments"
    assert error["details"]["tool"] == tool
    assert repr(tool) in error["message"]


@pytest.mark.parametrize(
    ("module", "module_args"),
    [
        ("react", {}),
        ("react", {"tools": "lookup"}),
        ("react", {"tools": [], "max_iters": 0}),
        ("react", {"tools": [], "unknown": 1}),
        ("predict", {"n": 3}),
        ("best_of_n", {"n": 3, "threshold": 0.5}),
        ("best_of_n", {"n": 0, "threshold": 0.5, "reward": "r"}),
        ("best_of_n", {"n": 2, "threshold": "high", "reward": "r"}),
        ("refine", {"n": 2, "threshold": 0.5, "reward": "r", "base": "react"}),
        ("multi_chain_comparison", {"m": 0}),
        ("python", {"path": "no colon"}),
        ("python", {"path": "a.b:c", "kwargs": [1]}),
    ],
)
def test_bad_module_args(worker: Worker, module: str, module_args: Any) -> None:
    error = worker.error(
        "create_program",
        {
            "program_id": "bad-args",
            "signature": qa_signature(),
            "module": module,
            "module_args": module_args,
        },
    )
    assert error["kind"] == "InvalidArguments", error
    assert error["details"]["field"] == "module_args"


def test_module_fields_are_reserved(worker: Worker) -> None:
    signature = qa_signature(inputs=[{"name": "trajectory", "type": "str"}])
    error = worker.error(
        "create_program",
        {
            "program_id": "reserved",
            "signature": signature,
            "module": "react",
            "module_args": {"tools": []},
        },
    )
    assert error["kind"] == "SignatureError"
    assert error["details"]["field"] == "trajectory"


def test_module_args_enter_the_hash_only_when_not_empty(worker: Worker) -> None:
    args = {"tools": [LOOKUP], "max_iters": 4}
    created = _create(worker, "hash-react", "react", module_args=args)
    text = json.dumps(
        {"signature": qa_signature(), "module": "react", "demos": [], "module_args": args},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    import hashlib

    assert created["hash"] == hashlib.sha256(text.encode()).hexdigest()
    empty = _create(worker, "hash-empty", "predict", module_args={})
    assert empty["hash"] == expected_hash(qa_signature(), "predict", [])
    info = worker.call("get_program_info", {"program_id": "hash-react"})
    assert info["definition"]["module_args"] == args
    assert (
        "module_args"
        not in worker.call("get_program_info", {"program_id": "hash-empty"})["definition"]
    )


# --- best_of_n / refine ------------------------------------------------------------------------


def test_best_of_n_stops_at_the_threshold(worker: Worker, host: Any) -> None:
    created = _create(
        worker,
        "bon",
        "best_of_n",
        module_args={"n": 3, "threshold": 0.5, "reward": "score"},
    )
    assert created["outputs"] == ["answer"]
    host(lambda f: {"ok": True, "result": 0.9})
    request_id, reply = _run(worker, "bon", question="q1")
    assert reply["ok"] is True, reply
    (call,) = worker.calls[request_id]
    assert call["name"] == "score"
    assert call["args"] == {
        "inputs": {"question": "q1"},
        "outputs": {"answer": reply["result"]["outputs"]["answer"]},
    }
    assert reply["result"]["usage"]["dummy"]["total_tokens"] > 0


def test_best_of_n_tries_n_times_below_the_threshold(worker: Worker, host: Any) -> None:
    _create(
        worker,
        "bon-cot",
        "BestOfN",
        module_args={"n": 3, "threshold": 0.95, "reward": "score", "base": "chain_of_thought"},
    )
    scores = iter([0.1, 0.7, 0.3])
    host(lambda f: {"ok": True, "result": next(scores)})
    request_id, reply = _run(worker, "bon-cot")
    assert reply["ok"] is True, reply
    assert len(worker.calls[request_id]) == 3
    assert list(reply["result"]["outputs"]) == ["reasoning", "answer"]


@pytest.mark.parametrize(
    "answer",
    [
        {"ok": False, "error": {"kind": "RewardBroken", "message": "no"}},
        {"ok": True, "result": "high"},
        {"ok": True, "result": True},
    ],
)
@pytest.mark.parametrize("n", [2, 3])
def test_reward_failures_fail_every_attempt(
    worker: Worker, host: Any, answer: dict[str, Any], n: int
) -> None:
    _create(
        worker, f"bon-fail-{n}", "best_of_n", module_args={"n": n, "threshold": 1, "reward": "r"}
    )
    host(lambda f: answer)
    request_id, reply = _run(worker, f"bon-fail-{n}")
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "ToolError"
    assert reply["error"]["details"]["tool"] == "r"
    assert len(worker.calls[request_id]) == n
    _serves_another_program(worker)


def test_refine_asks_for_advice_between_attempts(worker: Worker, host: Any) -> None:
    _create(
        worker,
        "refine",
        "refine",
        module_args={"n": 2, "threshold": 0.9, "reward": "judge", "base": "chain_of_thought"},
    )
    host(lambda f: {"ok": True, "result": 0.2})
    request_id, reply = _run(worker, "refine", lm_history=True)
    assert reply["ok"] is True, reply
    calls = worker.calls[request_id]
    assert len(calls) == 2
    first, second = (c["args"]["outputs"]["answer"] for c in calls)
    assert first != second  # the second attempt had the advice as a hint
    history = reply["result"]["lm_history"]
    assert len(history) == 3  # attempt, feedback, attempt
    feedback = history[1]["messages"][-1]["content"]
    assert "[[ ## module_names ## ]]" in feedback
    assert "hint_" in history[2]["messages"][-1]["content"]
    assert reply["result"]["outputs"]["answer"] == first  # both scored 0.2: the first is kept


# --- multi_chain_comparison ---------------------------------------------------------------------


def test_multi_chain_comparison(worker: Worker) -> None:
    created = _create(worker, "mcc", "multi_chain_comparison", module_args={"m": 2})
    assert created["outputs"] == ["rationale", "answer"]
    _, reply = _run(worker, "mcc", lm_history=True)
    assert reply["ok"] is True, reply
    outputs = reply["result"]["outputs"]
    assert outputs["rationale"].startswith("rationale: ")
    assert outputs["answer"].startswith("answer: ")
    history = reply["result"]["lm_history"]
    assert len(history) == 3  # two attempts, one comparison
    assert "reasoning_attempt_2" in history[2]["messages"][-1]["content"]
    assert _create(worker, "mcc-default", "mcc")["outputs"] == ["rationale", "answer"]


# --- python modules ----------------------------------------------------------------------------


def _python(worker: Worker, program_id: str, path: str, **kwargs: Any) -> dict[str, Any]:
    module_args: dict[str, Any] = {"path": path}
    if kwargs:
        module_args["kwargs"] = kwargs
    return worker.request(
        "create_program",
        {
            "program_id": program_id,
            "signature": qa_signature(),
            "module": "python",
            "module_args": module_args,
        },
    )


def test_python_module_runs_with_kwargs(worker: Worker) -> None:
    reply = _python(worker, "py-good", "userpkg.good:Echo", prefix="user says")
    assert reply["ok"] is True, reply
    assert reply["result"]["outputs"] == ["answer"]
    _, result = _run(worker, "py-good", question="hello")
    assert result["ok"] is True, result
    answer = result["result"]["outputs"]["answer"]
    assert answer.startswith("user says answer: ")
    assert result["result"]["usage"]["dummy"]["prompt_tokens"] > 0
    factory = _python(worker, "py-factory", "userpkg.good:make", prefix="made")
    assert factory["ok"] is True, factory
    _, made = _run(worker, "py-factory", question="hello")
    assert made["result"]["outputs"]["answer"] == answer.replace("user says", "made")


def test_python_module_without_lm_calls_has_no_usage(worker: Worker) -> None:
    assert _python(worker, "py-nolm", "userpkg.good:NoLM")["ok"] is True
    _, reply = _run(worker, "py-nolm", question="shout")
    assert reply["result"]["outputs"] == {"answer": "SHOUT"}  # a plain map works too
    assert reply["result"]["usage"] == {}


def test_python_module_is_built_once_per_version(worker: Worker) -> None:
    assert _python(worker, "py-counted", "userpkg.good:Counted")["ok"] is True
    again = _python(worker, "py-counted", "userpkg.good:Counted")  # the same version again
    assert again["result"]["replaced"] is True
    answers = {_run(worker, "py-counted")[1]["result"]["outputs"]["answer"] for _ in range(3)}
    assert len(answers) == 1
    (answer,) = answers
    assert answer.startswith("built 1 ")


@pytest.mark.parametrize(
    ("path", "stage", "needle"),
    [
        ("userpkg.broken:oops", "import", "SyntaxError"),
        ("userpkg.needs_missing:X", "import", "ModuleNotFoundError"),
        ("userpkg.good:NoSuchClass", "import", "AttributeError"),
        ("userpkg.nosuchmodule:X", "import", "ModuleNotFoundError"),
        ("userpkg.good:BadInit", "construct", "constructor broke"),
        ("userpkg.good:Echo", "construct", "unexpected keyword"),
    ],
)
def test_python_module_import_and_construct_errors(
    worker: Worker, path: str, stage: str, needle: str
) -> None:
    kwargs = {"bogus": 1} if needle == "unexpected keyword" else {}
    reply = _python(worker, "py-bad", path, **kwargs)
    assert reply["ok"] is False
    error = reply["error"]
    assert error["kind"] == "ModuleImportError"
    assert error["details"]["path"] == path
    assert error["details"]["stage"] == stage
    assert needle in error["traceback"]
    assert worker.error("get_program_info", {"program_id": "py-bad"})["kind"] == "ProgramNotFound"
    _serves_another_program(worker)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("json:loads", "outside_project_dir"),
        ("userpkg.reexport:Predict", "outside_project_dir"),  # imported from elsewhere
        ("nosuchtoplevel:X", "not_found"),
    ],
)
def test_python_module_outside_the_project_is_refused(
    worker: Worker, path: str, reason: str
) -> None:
    reply = _python(worker, "py-outside", path)
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "ModuleImportError"
    assert reply["error"]["details"]["reason"] == reason
    assert reply["error"]["details"]["stage"] == "import"
    _serves_another_program(worker)


def test_python_module_forward_error(worker: Worker) -> None:
    assert _python(worker, "py-fails", "userpkg.good:Fails")["ok"] is True
    _, reply = _run(worker, "py-fails", question="Tuesday")
    assert reply["ok"] is False
    error = reply["error"]
    assert error["kind"] == "PythonException"
    assert error["details"] == {"exception": "ValueError", "path": "userpkg.good:Fails"}
    assert "forward broke on Tuesday" in error["traceback"]
    _serves_another_program(worker)


def test_python_module_missing_output_is_lm_error(worker: Worker) -> None:
    assert _python(worker, "py-noanswer", "userpkg.good:NoAnswer")["ok"] is True
    _, reply = _run(worker, "py-noanswer")
    assert reply["error"]["kind"] == "LmError"
    assert reply["error"]["details"]["field"] == "answer"
    _serves_another_program(worker)


# --- refused modules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module", ["program_of_thought", "pot", "ProgramOfThought", "code_act", "codeact", "CodeAct"]
)
def test_deno_modules_are_refused(worker: Worker, module: str) -> None:
    error = worker.error(
        "create_program", {"program_id": "deno", "signature": qa_signature(), "module": module}
    )
    assert error["kind"] == "InvalidArguments"
    assert error["details"] == {"field": "module", "module": module, "reason": "needs_deno"}
    assert "needs Deno, which is not available on this host" in error["message"]


def test_unknown_module_lists_what_is_available(worker: Worker) -> None:
    error = worker.error(
        "create_program", {"program_id": "x", "signature": qa_signature(), "module": "avatar"}
    )
    assert error["kind"] == "InvalidArguments"
    assert error["details"]["available"] == [
        "predict",
        "chain_of_thought",
        "react",
        "best_of_n",
        "refine",
        "multi_chain_comparison",
        "python",
    ]
