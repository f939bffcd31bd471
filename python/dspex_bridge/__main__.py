"""``python -m dspex_bridge [--worker-id ID] [--mode worker]``."""

from __future__ import annotations

import os

if os.environ.get("DSPEX_TEST_FAIL_IMPORT") == "1":
    # Test hook: die before the handshake like a worker whose environment is broken.
    raise ModuleNotFoundError(
        "No module named 'dspy_missing_dependency'", name="dspy_missing_dependency"
    )

from dspex_bridge.server import main

if __name__ == "__main__":
    main()
