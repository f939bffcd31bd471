"""Turning Python values (DSPy's, pydantic's, the user's) into plain wire values."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64


def to_plain(value: Any, depth: int = 0) -> Any:
    """A value MessagePack and JSON can carry: None, bool, int, float, str, bytes, lists, maps.

    Maps get string keys; tuples and sets become lists; pydantic models (``dspy.History``,
    ``dspy.Tool`` arguments, ...) their ``model_dump``; anything with ``items()`` (a
    ``dspy.Prediction``) a map; non-finite floats and anything else their ``str``.
    """
    if depth > MAX_DEPTH:
        return str(value)
    if value is None or isinstance(value, (bool, int, str, bytes)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1 << 63:
            return str(value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return [to_plain(v, depth + 1) for v in sorted(value, key=repr)]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return to_plain(dump(mode="json"), depth + 1)
        except Exception:  # noqa: BLE001 - fall back to the text form
            return str(value)
    items = getattr(value, "items", None)
    if callable(items):
        try:
            return {str(k): to_plain(v, depth + 1) for k, v in items()}
        except Exception:  # noqa: BLE001 - fall back to the text form
            return str(value)
    return str(value)


def json_text(value: Any) -> str:
    """``value`` as compact JSON text (non-ASCII kept), after ``to_plain``."""
    plain = to_plain(value)
    return json.dumps(plain, ensure_ascii=False, default=str)
