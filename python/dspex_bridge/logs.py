"""stderr logging: one line per record, tagged with the worker id and pid."""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from types import TracebackType

LOG_FORMAT = "%(asctime)s %(levelname)s dspex[{worker_id} pid=%(process)d] %(name)s: %(message)s"


class OneLineHandler(logging.Handler):
    """Writes each record to fd 2 with a single ``write`` (newlines escaped)."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            line = text.replace("\r", "\\r").replace("\n", "\\n") + "\n"
            data = line.encode("utf-8", "backslashreplace")
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(worker_id: str, level: str | None = None) -> None:
    """Route all logging (and warnings, uncaught exceptions) to single stderr lines."""
    handler = OneLineHandler(2)
    handler.setFormatter(logging.Formatter(LOG_FORMAT.replace("{worker_id}", worker_id)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    name = (level or os.environ.get("DSPEX_LOG_LEVEL") or "INFO").upper()
    root.setLevel(getattr(logging, name, logging.INFO))
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
