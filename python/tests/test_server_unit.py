"""Unit tests of start-up options and handshake contents."""

from __future__ import annotations

import importlib.metadata
import os

import pytest

from dspex_bridge import server


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DSPEX_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    options, unknown = server.parse_options([])
    assert options.worker_id == f"worker-{os.getpid()}"
    assert options.mode == "worker"
    assert options.max_concurrency == 16
    assert options.max_frame == 64 * 1024 * 1024
    assert options.lazy_dspy is False
    assert options.faults is False
    assert unknown == []


def test_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_MAX_CONCURRENCY", "4")
    monkeypatch.setenv("DSPEX_LAZY_DSPY", "1")
    monkeypatch.setenv("DSPEX_TEST_FAULTS", "1")
    options, _ = server.parse_options(["--worker-id", "w9"])
    assert (options.worker_id, options.max_concurrency) == ("w9", 4)
    assert options.lazy_dspy
    assert options.faults
    options, _ = server.parse_options(["--max-concurrency=2", "--max-frame", "4096"])
    assert (options.max_concurrency, options.max_frame) == (2, 4096)


@pytest.mark.parametrize(
    "argv",
    [
        ["--unknown"],
        ["--unknown", "value", "positional"],
        ["--max-concurrency", "many"],
        ["--max-concurrency", "0"],
        ["--max-frame", "-5"],
        ["--worker-id"],
        ["--mode", "pool"],
        ["-h"],
    ],
)
def test_bad_or_unknown_flags_never_crash(argv: list[str]) -> None:
    options, _ = server.parse_options(argv)
    assert options.max_concurrency >= 1
    assert options.max_frame >= 1


def test_dspy_version_is_null_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    server.dspy_version.cache_clear()
    assert server.dspy_version() == "3.4.1"

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    server.dspy_version.cache_clear()  # read once per process
    try:
        assert server.dspy_version() is None
    finally:
        server.dspy_version.cache_clear()
