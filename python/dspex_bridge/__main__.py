"""``python -m dspex_bridge [--worker-id ID] [--mode worker]``."""

from __future__ import annotations

import os

if os.environ.get("DSPEX_TEST_FAIL_IMPORT") == "1" or os.path.exists(
    os.environ.get("DSPEX_TEST_FAIL_IMPORT_IF_EXISTS", "")
):
    # Test hook: die before the handshake like a worker whose environment is broken
    # (_IF_EXISTS: while that file exists, so a test can "fix the environment" by deleting it).
    raise ModuleNotFoundError(
        "No module named 'dspy_missing_dependency'", name="dspy_missing_dependency"
    )

from dspex_bridge.server import main

if __name__ == "__main__":
    main()
