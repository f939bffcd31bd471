"""DSPex Python worker: runs DSPy programs for Rust services over a framed pipe protocol."""

from __future__ import annotations

import os

__all__ = ["__version__", "fail_import_hook"]

__version__ = "0.1.0"


def fail_import_hook() -> None:
    """Test hook: die before the handshake like a worker whose environment is broken.

    ``DSPEX_TEST_FAIL_IMPORT=1``, or ``DSPEX_TEST_FAIL_IMPORT_IF_EXISTS=<path>`` while that
    file exists (so a test can "fix the environment" by deleting it): raises
    ``ModuleNotFoundError``. Checked by ``python -m dspex_bridge`` at start, by a worker forked
    from the zygote with its own environment, and by the zygote while it preloads (a refusal).
    """
    if os.environ.get("DSPEX_TEST_FAIL_IMPORT") == "1" or os.path.exists(
        os.environ.get("DSPEX_TEST_FAIL_IMPORT_IF_EXISTS", "")
    ):
        raise ModuleNotFoundError(
            "No module named 'dspy_missing_dependency'", name="dspy_missing_dependency"
        )
