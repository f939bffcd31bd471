"""Typed error kinds of the DSPex wire protocol.

Every failure reply carries ``{"kind", "message", "traceback", "details"}`` (see
``shared/design/protocol.md``). ``kind`` is a stable word the Rust side matches on; the
classes below are the only way handlers produce one. Any other exception escaping a handler
becomes ``PythonException`` with the exception's class name in ``details["exception"]``; its
message and traceback pass through ``logs.redact`` (no LM secret is ever echoed).
"""

from __future__ import annotations

import traceback as _traceback
from typing import Any

from .logs import redact

KINDS: tuple[str, ...] = (
    "UnknownCommand",
    "InvalidArguments",
    "ProgramNotFound",
    "SignatureError",
    "LmNotConfigured",
    "LmError",
    "DeadlineExceeded",
    "Cancelled",
    "ToolError",
    "ModuleImportError",
    "BudgetExceeded",
    "PythonException",
    "ProtocolError",
)


class BridgeError(Exception):
    """Base class: an error that maps onto one protocol ``kind``."""

    kind: str = "PythonException"

    def __init__(
        self,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message: str = message
        self.details: dict[str, Any] | None = details
        self.traceback: str | None = traceback

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` map of a failure reply."""
        return {
            "kind": self.kind,
            "message": self.message,
            "traceback": self.traceback,
            "details": self.details,
        }


class UnknownCommand(BridgeError):
    kind = "UnknownCommand"


class InvalidArguments(BridgeError):
    kind = "InvalidArguments"


class ProgramNotFound(BridgeError):
    kind = "ProgramNotFound"


class SignatureError(BridgeError):
    kind = "SignatureError"


class LmNotConfigured(BridgeError):
    kind = "LmNotConfigured"


class LmError(BridgeError):
    kind = "LmError"


class DeadlineExceeded(BridgeError):
    kind = "DeadlineExceeded"


class Cancelled(BridgeError):
    """The request was answered by a ``cancel`` command before its handler finished."""

    kind = "Cancelled"


class ProtocolError(BridgeError):
    kind = "ProtocolError"


class ToolError(BridgeError):
    """A host-side function (a tool or a reward, reached by a callback) failed for good.

    ``details`` name the function (``tool``) and carry the host's own error when there was
    one (``error``: ``{"kind", "message", "details"}``).
    """

    kind = "ToolError"


class ModuleImportError(BridgeError):
    """The user's own module (``module: "python"``) could not be imported or constructed.

    ``details``: ``{"path", "stage": "import" | "construct", ...}``; ``traceback`` is set.
    """

    kind = "ModuleImportError"


class BudgetExceeded(BridgeError):
    """An ``optimize`` job used more metric or LM calls than its ``budget`` allows.

    ``details``: ``{"budget": "max_metric_calls" | "max_lm_calls", "limit", "used"}`` (``used``
    counts the refused call, so it is always above ``limit``).
    """

    kind = "BudgetExceeded"


class PythonException(BridgeError):
    kind = "PythonException"


def from_exception(exc: BaseException) -> dict[str, Any]:
    """The wire ``error`` map for any exception raised while handling a request."""
    if isinstance(exc, BridgeError):
        return exc.to_wire()
    as_bridge_error = getattr(exc, "as_bridge_error", None)
    if callable(as_bridge_error):  # e.g. ``callbacks.CallbackError`` -> ``ToolError``
        converted = as_bridge_error()
        if isinstance(converted, BridgeError):
            return converted.to_wire()
    tb = redact("".join(_traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return PythonException(
        redact(str(exc)) or type(exc).__name__,
        {"exception": type(exc).__name__},
        traceback=tb,
    ).to_wire()
