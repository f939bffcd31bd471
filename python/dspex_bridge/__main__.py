"""``python -m dspex_bridge [--worker-id ID] [--mode worker | zygote]``."""

from __future__ import annotations

import sys

from dspex_bridge import fail_import_hook
from dspex_bridge.zygote import zygote_requested

if not zygote_requested(sys.argv[1:]):
    fail_import_hook()  # the zygote checks it while preloading (and refuses)

from dspex_bridge.server import main

if __name__ == "__main__":
    main()
