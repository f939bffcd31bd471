"""stderr logging: one line per record, tagged with the worker id and pid, secrets redacted.

Every string option of an LM configuration (``api_key``, ``api_base``, headers, any extra
option; see ``lm.register_config_secrets``) is registered here before the configuration is
even validated, and every log line the worker writes, from any logger and at any level, has
each registered value replaced by ``[REDACTED]`` on its way out.

A request that carried ``"logs": true`` also gets the records logged in its context as
``log`` events (``RequestLogHandler``, beside the stderr handler on the root logger), redacted
the same way and cut to ``MAX_LOG_MESSAGE`` bytes.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol

LOG_FORMAT = "%(asctime)s %(levelname)s dspex[{worker_id} pid=%(process)d] %(name)s: %(message)s"
REDACTED = "[REDACTED]"
# Shorter values are not secrets worth the damage redacting them would do to every line.
MIN_SECRET_LEN = 4
MAX_SECRETS = 1024
# The longest ``message`` of a ``log`` event, in bytes of UTF-8 (cut at a character boundary),
# and of its ``logger``.
MAX_LOG_MESSAGE = 2048
MAX_LOGGER_NAME = 256


class Secrets:
    """The most recent ``MAX_SECRETS`` secret strings, and one regex matching any of them."""

    def __init__(self, limit: int = MAX_SECRETS) -> None:
        self._limit = limit
        self._values: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            changed = False
            for value in values:
                if len(value) < MIN_SECRET_LEN:
                    continue
                if value in self._values:
                    self._values.move_to_end(value)
                    continue
                self._values[value] = None
                changed = True
            while len(self._values) > self._limit:
                self._values.popitem(last=False)
                changed = True
            if changed:
                # Longest first, so a secret containing another is replaced whole.
                ordered = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None:
            return text
        return pattern.sub(REDACTED, text)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern = None


SECRETS = Secrets()


def register_secrets(values: Iterable[str]) -> None:
    """Never let these strings reach a log line (or an error message built by ``redact``)."""
    SECRETS.add(values)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
    return SECRETS.redact(text)


class OneLineHandler(logging.Handler):
    """Writes each record to fd 2 with a single ``write`` (newlines escaped)."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = redact(self.format(record))
            line = text.replace("\r", "\\r").replace("\n", "\\n") + "\n"
            data = line.encode("utf-8", "backslashreplace")
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class LogTarget(Protocol):
    """Where the records of a request go (``requests.ReplySlot``)."""

    logs: bool

    def log_event(self, data: dict[str, Any]) -> bool: ...


def wire_text(text: str, limit: int) -> str:
    """``text`` as at most ``limit`` bytes of UTF-8 (lone surrogates backslash-escaped)."""
    return text.encode("utf-8", "backslashreplace")[:limit].decode("utf-8", "ignore")


class RequestLogHandler(logging.Handler):
    """Sends each record logged in the context of a request that asked for logs to it.

    ``current()`` names the request of the calling thread (``requests.current_request``:
    the request bound to the thread or context, or the one DSPy carried into a thread it
    started). Only records at or above the worker's level (the root logger's, read per
    record) are sent, as ``{"level", "logger", "message"}``: the message formatted with the
    traceback of its exception appended, secrets redacted, cut to ``MAX_LOG_MESSAGE``
    bytes. The stderr handler writes the same records as ever.
    """

    def __init__(self, current: Callable[[], LogTarget | None]) -> None:
        super().__init__()
        self._current = current
        self._message = logging.Formatter("%(message)s")
        self._local = threading.local()

    def createLock(self) -> None:
        # No handler lock: ``emit`` takes the request's lock, and a thread holding that one
        # may log (lock-order deadlock). ``emit`` needs no lock of its own.
        self.lock = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.root.level or getattr(self._local, "busy", False):
            return  # below the worker's level, or logged while sending one of ours
        target = self._current()
        if target is None or not target.logs:
            return
        self._local.busy = True
        try:
            target.log_event(self.data(record))
        except Exception:  # noqa: BLE001 - logging must never raise; stderr has the record
            pass
        finally:
            self._local.busy = False

    def data(self, record: logging.LogRecord) -> dict[str, Any]:
        """The ``data`` of the ``log`` event of ``record``."""
        return {
            "level": record.levelname,
            "logger": wire_text(record.name, MAX_LOGGER_NAME),
            "message": wire_text(redact(self._message.format(record)), MAX_LOG_MESSAGE),
        }


def forward_request_logs(current: Callable[[], LogTarget | None]) -> RequestLogHandler:
    """Add a ``RequestLogHandler`` to the root logger (replacing an earlier one)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, RequestLogHandler):
            root.removeHandler(old)
    handler = RequestLogHandler(current)
    root.addHandler(handler)
    return handler


def setup_logging(worker_id: str, level: str | None = None) -> None:
    """Route all logging (and warnings, uncaught exceptions) to single stderr lines."""
    handler = OneLineHandler(2)
    handler.setFormatter(logging.Formatter(LOG_FORMAT.replace("{worker_id}", worker_id)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    name = (level or os.environ.get("DSPEX_LOG_LEVEL") or "INFO").upper()
    level = getattr(logging, name, logging.INFO)
    if root.level != level:
        # Not when unchanged (a worker forked by the zygote): setting it clears the level
        # cache of every logger, which in a forked worker copies their memory pages.
        root.setLevel(level)
    logging.captureWarnings(True)

    def excepthook(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        logging.getLogger("dspex_bridge").error("uncaught exception: %s", text)

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        name = args.thread.name if args.thread is not None else "?"
        logging.getLogger("dspex_bridge").error("uncaught exception in thread %s: %s", name, text)

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


def quiet_progress_bars() -> None:
    """Turn off tqdm progress bars (DSPy's ``Evaluate``, its optimizers, GEPA).

    stderr carries log lines only, and a progress bar redraws itself with carriage returns
    many times a second; the worker reports progress as ``progress`` events instead.
    Every ``tqdm.tqdm`` (and subclass) is constructed with ``disable=True``.
    """
    try:
        import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with DSPy
        return
    original = tqdm.tqdm.__init__
    if getattr(original, "_dspex_quiet", False):
        return

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    init._dspex_quiet = True  # type: ignore[attr-defined]
    tqdm.tqdm.__init__ = init  # type: ignore[method-assign]


def adopt_dspy_logging() -> None:
    """Route DSPy's log records through the worker's handler (after ``import dspy``).

    DSPy gives its ``dspy`` logger a handler of its own on stderr and stops propagation, so
    its lines (``Evaluate``'s scores, the optimizers' reports, its warnings) would bypass the
    worker's one-line format and its secret redaction.
    """
    logger = logging.getLogger("dspy")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
