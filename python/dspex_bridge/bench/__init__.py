"""The Python anchors of ``dspex bench`` (shared/design/performance.md, B1-B8).

``python -m dspex_bridge.bench <anchor> [options]`` runs one anchor and prints one JSON object
on stdout as its last line; everything else goes to stderr. Anchors:

* ``b1``: no-op task throughput of ``multiprocessing.Pool`` and ``ProcessPoolExecutor``;
* ``b2``: the bare loop, ``ping`` round trips to the real worker over its pipes;
* ``b3``: ``import dspy`` in a fresh interpreter, wall and in-process time;
* ``b5``: this process's RSS and PSS after ``import dspy``;
* ``cpu``: plain DSPy's CPU per ``Predict`` call on the offline dummy LM (B6, B7);
* ``serve``: DSPy's FastAPI + ``dspy.asyncify`` + uvicorn recipe (B8), until SIGTERM.

Nothing here imports DSPy at module level: each anchor imports what it measures.
"""

from __future__ import annotations
