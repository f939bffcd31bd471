"""The worker loop: handshake, frame dispatch, concurrency, exit on EOF / SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.metadata
import logging
import math
import os
import platform
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from . import protocol, zygote
from .callbacks import CallbackTable
from .commands import Command, Context, NoReply, Registry, WorkerState, default_registry
from .dispatch import RequestThreads
from .errors import InvalidArguments, ProtocolError, UnknownCommand, from_exception
from .logs import adopt_dspy_logging, forward_request_logs, quiet_progress_bars, setup_logging
from .requests import MAX_REQUEST_ID, ReplySlot, RequestTable, bind, current_request

PROTOCOL_VERSION = 2
# The Protocol 2 features this worker implements (shared/design/protocol.md).
FEATURES: tuple[str, ...] = ("deadline", "events", "callbacks", "cancel", "logs")
DEFAULT_MAX_CONCURRENCY = 16
EOF_GRACE_S = 0.5

log = logging.getLogger("dspex_bridge.server")


@dataclass(frozen=True)
class Options:
    worker_id: str
    mode: str
    max_concurrency: int
    max_frame: int
    lazy_dspy: bool
    faults: bool
    log_level: str | None
    project_dir: str | None = None


def _positive_int(raw: str | None, what: str, default: int, hi: int) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", what, raw)
        return default
    if not 1 <= value <= hi:
        log.warning("ignoring %s=%r: out of range", what, raw)
        return default
    return value


def project_dir_from_env(raw: str | None) -> str | None:
    """``DSPEX_PROJECT_DIR``: an absolute path of a directory, or None (logged when unusable)."""
    if raw is None or raw.strip() == "":
        return None
    if not os.path.isabs(raw):
        log.warning("ignoring DSPEX_PROJECT_DIR=%r: not an absolute path", raw)
        return None
    if not os.path.isdir(raw):
        log.warning("ignoring DSPEX_PROJECT_DIR=%r: not a directory", raw)
        return None
    return os.path.realpath(raw)


def _option_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dspex_bridge", add_help=False, allow_abbrev=False, exit_on_error=False
    )
    parser.add_argument("--worker-id")
    parser.add_argument("--mode", default="worker")
    parser.add_argument("--max-concurrency")
    parser.add_argument("--max-frame")
    parser.add_argument("--log-level")
    return parser


# Built once, at import: a zygote's workers inherit it (parsing does not change it).
_OPTION_PARSER = _option_parser()


def parse_options(argv: list[str]) -> tuple[Options, list[str]]:
    """Parse the command line; unknown flags are returned, never fatal."""
    parser = _OPTION_PARSER
    try:
        ns, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):  # e.g. a flag missing its value
        ns, _ = parser.parse_known_args([])
        unknown = list(argv)
    env = os.environ
    worker_id = ns.worker_id or env.get("DSPEX_WORKER_ID") or f"worker-{os.getpid()}"
    concurrency = _positive_int(
        ns.max_concurrency or env.get("DSPEX_MAX_CONCURRENCY"),
        "max concurrency",
        DEFAULT_MAX_CONCURRENCY,
        1024,
    )
    max_frame = protocol.max_frame_from_env()
    if ns.max_frame is not None:
        max_frame = _positive_int(ns.max_frame, "--max-frame", max_frame, 0xFFFFFFFF)
    options = Options(
        worker_id=worker_id,
        mode=ns.mode or "worker",
        max_concurrency=concurrency,
        max_frame=max_frame,
        lazy_dspy=env.get("DSPEX_LAZY_DSPY") == "1",
        faults=env.get("DSPEX_TEST_FAULTS") == "1",
        log_level=ns.log_level,
        project_dir=project_dir_from_env(env.get("DSPEX_PROJECT_DIR")),
    )
    return options, unknown


@functools.cache
def dspy_version() -> str | None:
    """The installed DSPy's version, read once (~40 ms: a zygote's workers inherit it)."""
    try:
        return importlib.metadata.version("dspy")
    except importlib.metadata.PackageNotFoundError:
        return None


class Server:
    """Reads frames from stdin, runs commands on a thread pool, writes replies."""

    def __init__(
        self,
        options: Options,
        registry: Registry,
        in_fd: int,
        proto_fd: int,
    ) -> None:
        self.options = options
        self.registry = registry
        self.max_concurrency = options.max_concurrency
        self.reader = protocol.FrameReader(in_fd, options.max_frame)
        self.writer = protocol.FrameWriter(proto_fd, options.max_frame)
        self.state = WorkerState(options.worker_id, options.project_dir)
        self.callbacks = CallbackTable()
        self.state.callbacks = self.callbacks
        self.requests = RequestTable(self.send, self._answered, self.callbacks, self.send_side)
        self.executor = RequestThreads(options.max_concurrency, "dspex-req")
        self._dspy_lock = threading.Lock()
        self._dspy: Any = None
        self._ignore_eof = False

    # -- hooks used by handlers ----------------------------------------------------------

    def dspy_loaded(self) -> bool:
        return self._dspy is not None

    def ensure_dspy(self) -> Any:
        if self._dspy is None:
            with self._dspy_lock:
                if self._dspy is None:
                    started = time.perf_counter()
                    module = importlib.import_module("dspy")
                    adopt_dspy_logging()
                    log.info("imported dspy in %.0f ms", (time.perf_counter() - started) * 1000)
                    self._dspy = module
        return self._dspy

    def exit_now(self, code: int) -> NoReturn:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(code)

    def cancel_request(self, request_id: int, by: int) -> bool:
        return self.requests.cancel(request_id, by)

    def shutdown(self, code: int) -> None:
        """Give unanswered requests a short grace, then exit."""
        self.state.stats.wait_idle(EOF_GRACE_S)
        log.info("shutting down (exit %d)", code)
        self.exit_now(code)

    def ignore_shutdown(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._ignore_eof = True
        log.warning("fault: ignoring SIGTERM and end of input from now on")

    # -- the loop ------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.writer.send(message)
        except OSError as exc:
            log.error("protocol stream lost (%s); exiting", exc)
            self.exit_now(0)

    def send_side(self, message: dict[str, Any]) -> None:
        """Write an event or callback frame (``ValueError`` if it cannot be framed)."""
        try:
            self.writer.send_strict(message)
        except OSError as exc:
            log.error("protocol stream lost (%s); exiting", exc)
            self.exit_now(0)

    def handshake(self) -> dict[str, Any]:
        return {
            "id": 0,
            "ok": True,
            "result": {
                "event": "ready",
                "protocol": PROTOCOL_VERSION,
                "features": list(FEATURES),
                "worker_id": self.state.worker_id,
                "pid": self.state.pid,
                "python": platform.python_version(),
                "dspy": dspy_version(),
            },
        }

    def run(self) -> int:
        self.send(self.handshake())
        log.info(
            "ready (protocol %d, max_concurrency %d, max_frame %d, dspy %s)",
            PROTOCOL_VERSION,
            self.max_concurrency,
            self.options.max_frame,
            "loaded" if self.dspy_loaded() else "lazy",
        )
        while True:
            event = self.reader.read()
            if event is None:
                return self.on_eof()
            if isinstance(event, protocol.Oversize):
                self.protocol_error(
                    f"frame of {event.size} bytes exceeds max frame {self.options.max_frame}",
                    {"reason": "oversize", "size": event.size, "max_frame": self.options.max_frame},
                )
                if not self.reader.discard(event.size):
                    return self.on_eof()
                continue
            self.handle_frame(event.body)

    def on_eof(self) -> int:
        if self._ignore_eof:
            log.warning("end of input ignored (fault ignore_shutdown)")
            threading.Event().wait()
        drained = self.state.stats.wait_idle(EOF_GRACE_S)
        log.info("end of input; exiting (%s)", "idle" if drained else "abandoning unanswered work")
        self.exit_now(0)

    def protocol_error(self, message: str, details: dict[str, Any]) -> None:
        log.warning("protocol error: %s", message)
        self.state.stats.rejected("ProtocolError")
        self.send({"id": 0, "ok": False, "error": ProtocolError(message, details).to_wire()})

    def reject(self, request_id: int, error: Exception) -> None:
        wire = from_exception(error)
        self.state.stats.rejected(wire["kind"])
        self.send({"id": request_id, "ok": False, "error": wire})

    def handle_frame(self, body: bytes) -> None:
        received = time.monotonic()
        try:
            message = protocol.decode(body)
        except Exception as exc:  # noqa: BLE001 - any decode failure is a protocol error
            self.protocol_error(
                f"frame body is not valid MessagePack: {type(exc).__name__}: {exc}",
                {"reason": "decode", "exception": type(exc).__name__, "size": len(body)},
            )
            return
        if not isinstance(message, dict):
            self.protocol_error(
                f"request must be a map, got {type(message).__name__}",
                {"reason": "not_a_map"},
            )
            return
        if "command" not in message and "call" in message:
            # The host's answer to one of our callbacks (Protocol 2), not a request.
            self.callbacks.answer(message)
            return
        request_id = message.get("id")
        if (
            not isinstance(request_id, int)
            or isinstance(request_id, bool)
            or not 0 < request_id <= MAX_REQUEST_ID
        ):
            self.protocol_error("request has no valid id (an integer > 0)", {"reason": "bad_id"})
            return
        command = message.get("command")
        if not isinstance(command, str) or not command:
            self.protocol_error(
                f"request {request_id} has no command",
                {"reason": "no_command", "request_id": request_id},
            )
            return
        try:
            args, session_id, deadline_ms, events, logs = self._envelope(message)
        except InvalidArguments as exc:
            self.reject(request_id, exc)
            return
        cmd = self.registry.get(command)
        if cmd is None:
            self.reject(
                request_id,
                UnknownCommand(
                    f"unknown command {command!r}",
                    {"command": command, "available": self.registry.names()},
                ),
            )
            return
        self.state.stats.started(command)
        # Inline commands answer before the next frame is read: nothing can cancel them, and
        # their deadline is only checked before they run.
        slot = self.requests.open(
            request_id,
            command,
            received,
            deadline_ms,
            track=not cmd.inline,
            events=events,
            logs=logs,
        )
        ctx = Context(
            request_id=request_id,
            command=command,
            state=self.state,
            server=self,
            session_id=session_id,
            deadline=slot.deadline,
            slot=slot,
        )
        if deadline_ms == 0:  # already expired: answered at once, never run
            slot.expire()
            self.state.stats.finished()
        elif cmd.inline:
            self.execute(cmd, ctx, args)
        else:
            self.executor.submit(self.execute, cmd, ctx, args)

    def _answered(self, slot: ReplySlot, kind: str | None, replied: bool) -> None:
        self.state.stats.answered(kind, replied=replied)

    @staticmethod
    def _envelope(
        message: dict[str, Any],
    ) -> tuple[dict[str, Any], str | None, float | None, bool, bool]:
        args = message.get("args")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise InvalidArguments("'args' must be a map", {"field": "args"})
        session_id = message.get("session_id")
        if session_id is not None and not isinstance(session_id, str):
            raise InvalidArguments("'session_id' must be a string", {"field": "session_id"})
        deadline_ms = message.get("deadline_ms")
        if deadline_ms is not None:
            ok = isinstance(deadline_ms, (int, float)) and not isinstance(deadline_ms, bool)
            if not ok or not math.isfinite(deadline_ms) or deadline_ms < 0:
                raise InvalidArguments(
                    "'deadline_ms' must be a non-negative number", {"field": "deadline_ms"}
                )
        return args, session_id, deadline_ms, _flag(message, "events"), _flag(message, "logs")

    def execute(self, cmd: Command, ctx: Context, args: dict[str, Any]) -> None:
        """Run a handler and answer through its slot (unless the slot was answered first)."""
        slot = ctx.slot
        assert slot is not None
        delivered = False
        try:
            if slot.expired():
                # The deadline passed while the request was queued (and the scheduler has
                # not answered it yet): DeadlineExceeded, without running it.
                slot.expire()
                return
            if not slot.begin():
                log.debug(
                    "request %d (%s) was answered (%s) before it started; not running it",
                    slot.request_id,
                    cmd.name,
                    slot.answered_by,
                )
                return
            message: dict[str, Any] | None = None
            with bind(slot):
                try:
                    if cmd.needs_dspy:
                        self.ensure_dspy()
                    result = cmd.handler(ctx, args)
                    message = {"id": ctx.request_id, "ok": True, "result": result}
                except NoReply:
                    message = None
                except BaseException as exc:  # noqa: BLE001 - every request gets exactly one reply
                    wire = from_exception(exc)
                    if wire["kind"] == "PythonException" and not slot.abandoned.is_set():
                        log.error(
                            "request %d (%s) raised %s: %s",
                            ctx.request_id,
                            cmd.name,
                            type(exc).__name__,
                            wire["message"],
                        )
                    message = {"id": ctx.request_id, "ok": False, "error": wire}
            delivered = self.deliver(slot, message)
        finally:
            self.state.stats.finished()
        if delivered:
            for action in ctx.after:
                action()

    def deliver(self, slot: ReplySlot, message: dict[str, Any] | None) -> bool:
        """Answer with a handler's outcome; False (and counted) if it came too late.

        A handler that finishes after its deadline has passed is answered
        ``DeadlineExceeded`` even if the scheduler has not got round to it yet: the answer
        to a request never depends on which of the two threads ran first.
        """
        if message is None:  # NoReply: the handler deliberately sends nothing
            return slot.answer(None)
        if not slot.answered and slot.expired() and not _is_deadline_error(message):
            slot.expire()
        if slot.answer(message):
            return True
        self.state.stats.late_result()
        error = message.get("error")
        log.debug(
            "request %d (%s): discarding the late %s (answered by %s after %.1f ms)",
            slot.request_id,
            slot.command,
            error.get("kind") if isinstance(error, dict) else "result",
            slot.answered_by,
            slot.elapsed_ms(),
        )
        return False


def _flag(message: dict[str, Any], key: str) -> bool:
    """An optional bool of the envelope (missing or ``null``: false)."""
    flag = message.get(key)
    if flag is None:
        return False
    if not isinstance(flag, bool):
        raise InvalidArguments(f"'{key}' must be a bool", {"field": key})
    return flag


def _is_deadline_error(message: dict[str, Any]) -> bool:
    error = message.get("error")
    return isinstance(error, dict) and error.get("kind") == "DeadlineExceeded"


def _install_signal_handlers() -> None:
    def on_term(signum: int, frame: Any) -> None:
        log.info("received %s; exiting", signal.Signals(signum).name)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)


def _exit_on_hangup_while(loading: threading.Event, in_fd: int) -> None:
    """Until ``loading`` is set, exit 0 if the host closes stdin with nothing left to read.

    Importing DSPy takes about a second; a host that gives up on a starting worker by closing
    its stdin should not have to wait for that.
    """
    poller = select.poll()
    poller.register(in_fd, select.POLLIN | select.POLLHUP)
    while not loading.is_set():
        for _, events in poller.poll(50):
            if events & select.POLLIN:
                return  # requests are waiting: the main loop will serve them, then see EOF
            if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                log.info("end of input during start-up; exiting")
                os._exit(0)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of ``python -m dspex_bridge``; never returns."""
    args = list(sys.argv[1:] if argv is None else argv)
    if zygote.zygote_requested(args):
        zygote.main(args)  # before anything of the worker (the zygote has no protocol fd)
    proto_fd = protocol.claim_protocol_fd()
    options, unknown = parse_options(args)
    setup_logging(options.worker_id, options.log_level)
    # Records logged while a request with "logs": true runs go to it as log events, too.
    forward_request_logs(current_request)
    quiet_progress_bars()
    _install_signal_handlers()
    if unknown:
        log.info("ignoring unknown arguments: %s", " ".join(unknown))
    if options.project_dir is not None:
        # The user's own modules (``module: "python"``) are imported from here only.
        sys.path.insert(0, options.project_dir)
        log.info("project directory %s (python modules enabled)", options.project_dir)
    if options.mode != "worker":
        log.warning("unknown mode %r; running as a worker", options.mode)
    registry = default_registry()
    if options.faults:
        from . import faults

        faults.register(registry)
        log.warning("test fault commands enabled (DSPEX_TEST_FAULTS=1)")
    server = Server(options, registry, 0, proto_fd)
    if not options.lazy_dspy:
        # A worker forked by the zygote has DSPy imported already: no long import to watch.
        loaded = None if "dspy" in sys.modules else threading.Event()
        if loaded is not None:
            threading.Thread(
                target=_exit_on_hangup_while, args=(loaded, 0), name="dspex-boot-eof", daemon=True
            ).start()
        try:
            server.ensure_dspy()
        except ImportError as exc:
            log.error("dspy is not importable: %s", exc)
        finally:
            if loaded is not None:
                loaded.set()
    try:
        code = server.run()
    except Exception:
        log.exception("worker loop failed")
        code = 1
    server.exit_now(code)
