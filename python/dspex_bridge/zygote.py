"""``python -m dspex_bridge --mode zygote``: import DSPy once, then fork workers in milliseconds.

The host (``crates/dspex-bridge/src/process/zygote.rs``) starts the zygote with an
``AF_UNIX`` ``SOCK_SEQPACKET`` control socket on the inherited fd named by
``DSPEX_ZYGOTE_FD``. The zygote imports what a direct worker imports before its handshake
(DSPy, unless ``DSPEX_LAZY_DSPY=1``, and every ``dspex_bridge`` module) and the modules listed
in ``DSPEX_ZYGOTE_PRELOAD``, runs ``gc.freeze()``, and says so. Later, while it is idle (no
control message for 300 ms), it imports what a worker imports only on first use (litellm,
optuna, ...) one module at a time, so workers forked after that inherit them too. For each
``spawn`` request (with the worker's stdin,
stdout and stderr attached as ``SCM_RIGHTS``), it forks a child that becomes a worker
(``server.main``) on those descriptors, and answers with the child's pid and a pidfd of it.
It reaps its children and reports each exit.

Messages are one JSON object (UTF-8, at most 64 KiB) per packet:

- zygote → host, once: ``{"ready": {"pid", "python", "dspy", "import_ms", "preloaded",
  "deferred"}}`` or
  ``{"refused": {"reason"}}`` (then exit 3);
- host → zygote: ``{"spawn": {"id", "worker_id", "argv", "env"}}`` with exactly 3 fds;
- zygote → host: ``{"spawned": {"id", "pid"}}`` with 1 fd (the pidfd) or
  ``{"error": {"id", "message"}}`` (``id`` 0 when the request had no usable id);
- zygote → host, after the child's ``spawned``: ``{"exit": {"pid", "code" | "signal"}}``.

End of input on stdin or on the control socket, SIGTERM or SIGINT: no more forks; the zygote
keeps reaping (and reporting while the socket works) until its last child is gone, then
exits 0. It never signals its children: a worker ends on its own stdin's EOF.

The main loop is single-threaded (forking with a thread alive is refused): SIGCHLD, SIGTERM
and SIGINT only wake it through ``signal.set_wakeup_fd``, and ``select.poll`` waits on the
control socket, the wakeup pipe and stdin; with deferred imports left, its timeout is the
end of the idle wait, and a timeout with nothing readable imports the next one.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import fcntl
import gc
import importlib
import json
import logging
import math
import os
import platform
import random
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

ZYGOTE_FD_ENV = "DSPEX_ZYGOTE_FD"
PRELOAD_ENV = "DSPEX_ZYGOTE_PRELOAD"
# Variables meant for the zygote alone: a forked worker does not see them.
ZYGOTE_ONLY_ENV: tuple[str, ...] = (ZYGOTE_FD_ENV, PRELOAD_ENV)
MAX_MESSAGE = 64 * 1024
SPAWN_FDS = 3
# More than a spawn carries, so a request with too many is seen (and refused) whole.
MAX_FDS = 16
MAX_ID = (1 << 64) - 1
MAX_TEXT = 8 * 1024
EXIT_REFUSED = 3
EXIT_NO_CONTROL = 2
# A host that stops reading the control socket for this long is taken as gone.
SEND_TIMEOUT_S = 10.0
# Reaping does not depend on it (SIGCHLD wakes the loop); it only bounds a lost wake-up.
POLL_MS = 5000

LAZY_ENV = "DSPEX_LAZY_DSPY"
# Phase 1, before ``ready``: what a direct worker imports before its handshake, so a forked
# worker is one at its handshake. DSPy (unless the zygote's environment has
# ``DSPEX_LAZY_DSPY=1``: its workers import DSPy on first use, and so does a forked one), then
# every module of the worker (those that import DSPy at module level only without lazy DSPy),
# then the ``DSPEX_ZYGOTE_PRELOAD`` modules.
DSPY_MODULE = "dspy"
# Modules of the worker that import DSPy at module level (the worker imports them lazily).
BRIDGE_MODULES_WITH_DSPY: frozenset[str] = frozenset({"dspex_bridge.deadline_lm"})
BRIDGE_MODULES: tuple[str, ...] = (
    "dspex_bridge.protocol",
    "dspex_bridge.logs",
    "dspex_bridge.errors",
    "dspex_bridge.plain",
    "dspex_bridge.requests",
    "dspex_bridge.callbacks",
    "dspex_bridge.signatures",
    "dspex_bridge.lm",
    "dspex_bridge.deadline_lm",
    "dspex_bridge.programs",
    "dspex_bridge.modules",
    "dspex_bridge.execution",
    "dspex_bridge.streaming",
    "dspex_bridge.evaluation",
    "dspex_bridge.optimization",
    "dspex_bridge.commands",
    "dspex_bridge.faults",
    "dspex_bridge.server",
)
# Phase 2, after ``ready`` and only while the zygote is idle (DSPy mode only): what a worker
# imports on first use (litellm alone costs ~3 s). Those already imported by phase 1 (DSPy
# 3.4 imports most of them itself) are not planned; children forked later inherit the rest.
DEFERRED_MODULES: tuple[str, ...] = (
    "litellm",  # dspy.LM's first call
    "dspy.utils.saving",
    "dspy.utils.exceptions",
    "dspy.utils.callback",
    "dspy.utils.usage_tracker",
    "dspy.evaluate.metrics",
    "dspy.teleprompt",
    "dspy.streaming",
    "dspy.lm15",
    "dspy.dsp.utils.settings",
    "anyio.to_thread",  # streaming
    "tqdm",
    "optuna",  # MIPROv2
    "gepa",  # GEPA
)
# Deferred imports wait for this long without a control message (the pool's first burst of
# spawn requests right after ``ready`` is served first).
IDLE_BEFORE_DEFERRED_S = 0.3
# numpy's bundled OpenBLAS starts a thread pool (one thread per extra core) when it is
# imported, which would make every fork unsafe; unless the environment says otherwise the
# zygote asks for none. A forked worker's environment does not keep the setting, but its BLAS
# stays single-threaded.
THREAD_POOL_ENV: dict[str, str] = {"OPENBLAS_NUM_THREADS": "1"}
# The dispositions a worker starts with are the interpreter's (recorded at zygote start);
# the zygote changes these.
ZYGOTE_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGPIPE,
)
BLOCKED_AROUND_FORK: frozenset[signal.Signals] = frozenset(
    {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
)

log = logging.getLogger("dspex_bridge.zygote")

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def zygote_requested(argv: list[str]) -> bool:
    """True if ``argv`` asks for ``--mode zygote`` (the last ``--mode`` wins, as in argparse)."""
    mode = "worker"
    for i, arg in enumerate(argv):
        if arg == "--mode" and i + 1 < len(argv):
            mode = argv[i + 1]
        elif arg.startswith("--mode="):
            mode = arg.removeprefix("--mode=")
    return mode == "zygote"


def _parse_argv(argv: list[str]) -> tuple[str, str | None]:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--worker-id")
    parser.add_argument("--log-level")
    try:
        ns, _ = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        ns, _ = parser.parse_known_args([])
    return ns.worker_id or f"zygote-{os.getpid()}", ns.log_level


class Refused(Exception):
    """The zygote cannot serve: the reason goes to the host, then exit 3."""


class BadRequest(Exception):
    """A control message the zygote answers with an ``error``."""


def thread_census() -> tuple[int, list[str]]:
    """(threads alive, their names): Python's threads and the kernel's tasks of this process."""
    tasks = sorted(int(tid) for tid in os.listdir("/proc/self/task"))
    known = {t.native_id: t.name for t in threading.enumerate()}
    names: list[str] = []
    for tid in tasks:
        name = known.pop(tid, None)
        if name is None:
            try:
                with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as comm:
                    name = f"native {comm.read().strip()}"
            except OSError:
                name = f"native {tid}"
        names.append(name)
    names.extend(name for name in known.values())  # threads the kernel no longer lists
    return max(threading.active_count(), len(tasks)), names


def threads_alive(when: str) -> str | None:
    """Why forking is unsafe now, or None if this is the only thread."""
    count, names = thread_census()
    if count == 1:  # threading.active_count() and /proc/self/task agree on one
        return None
    return f"{count} threads alive {when} ({', '.join(names)}); forking is unsafe"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    """Keep a reason or error message well inside one packet."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def preload(extra: list[str], *, lazy_dspy: bool) -> list[str]:
    """Phase 1: the names imported, in order (``Refused`` if one fails)."""
    from . import fail_import_hook

    preloaded: list[str] = []
    if lazy_dspy:
        required = [name for name in BRIDGE_MODULES if name not in BRIDGE_MODULES_WITH_DSPY]
    else:
        required = [DSPY_MODULE, *BRIDGE_MODULES]
    try:
        # A worker "whose environment is broken" (the test hook) cannot start here either.
        fail_import_hook()
        for name in required:
            importlib.import_module(name)
            preloaded.append(name)
    except ImportError as exc:
        raise Refused(_describe(exc)) from exc
    from .logs import adopt_dspy_logging, quiet_progress_bars

    if not lazy_dspy:
        adopt_dspy_logging()
        from .lm import warm_up

        warm_up()
    quiet_progress_bars()
    for name in extra:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure of a preload module refuses
            log.error("preloading %s failed: %s", name, traceback.format_exc())
            raise Refused(_describe(exc)) from exc
        preloaded.append(name)
    return preloaded


def deferred_plan(lazy_dspy: bool) -> list[str]:
    """Phase 2: the deferred modules not imported yet (none with lazy DSPy)."""
    if lazy_dspy:
        return []
    return [name for name in DEFERRED_MODULES if name not in sys.modules]


def preload_list(raw: str | None) -> list[str]:
    """``DSPEX_ZYGOTE_PRELOAD``: comma-separated module names (blanks ignored)."""
    if not raw:
        return []
    return [name.strip() for name in raw.split(",") if name.strip()]


@dataclass(frozen=True)
class SpawnRequest:
    id: int
    worker_id: str
    argv: list[str]
    env: dict[str, str]


def _request_id(message: Any) -> int:
    """The id of a spawn request, or 0 when it has none usable (the host's ids start at 1)."""
    if isinstance(message, dict):
        body = message.get("spawn")
        if isinstance(body, dict):
            value = body.get("id")
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
                return value
    return 0


def parse_spawn(message: Any) -> SpawnRequest:
    """A ``{"spawn": {...}}`` message, checked (``BadRequest`` says what is wrong)."""
    if not isinstance(message, dict) or set(message) != {"spawn"}:
        kinds = sorted(message) if isinstance(message, dict) else type(message).__name__
        raise BadRequest(f"expected a {{'spawn': {{...}}}} object, got {kinds}")
    body = message["spawn"]
    if not isinstance(body, dict):
        raise BadRequest("'spawn' must be an object")
    request_id = body.get("id")
    if (
        not isinstance(request_id, int)
        or isinstance(request_id, bool)
        or not 0 <= request_id <= MAX_ID
    ):
        raise BadRequest("'spawn.id' must be an integer in [0, 2^64)")
    worker_id = body.get("worker_id")
    if not isinstance(worker_id, str) or not worker_id:
        raise BadRequest("'spawn.worker_id' must be a non-empty string")
    argv = body.get("argv", [])
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise BadRequest("'spawn.argv' must be a list of strings")
    if zygote_requested(argv):
        raise BadRequest("'spawn.argv' asks for --mode zygote")
    env = body.get("env", {})
    if env is None:
        env = {}
    if not isinstance(env, dict):
        raise BadRequest("'spawn.env' must be an object of strings")
    for key, value in env.items():
        if not isinstance(value, str) or not key or "=" in key or "\0" in key + value:
            raise BadRequest(f"'spawn.env' has an unusable entry {key!r}")
    return SpawnRequest(request_id, worker_id, list(argv), dict(env))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def reset_network_clients() -> None:
    """Forget the HTTP clients litellm may have created in the zygote (never used there).

    ``module_level_client`` / ``module_level_aclient`` are built lazily by ``litellm``'s
    module ``__getattr__`` and cached as module attributes: removing them makes the worker
    build its own on first use. ``in_memory_llm_clients_cache`` holds provider clients; it is
    emptied in place (other modules may hold a reference to it). Nothing is closed: a close
    could act on connection state shared with the zygote.
    """
    litellm = sys.modules.get("litellm")
    if litellm is None:
        return
    namespace = vars(litellm)
    for name in ("module_level_client", "module_level_aclient"):
        if name in namespace:
            with contextlib.suppress(AttributeError):
                delattr(litellm, name)
    cache = namespace.get("in_memory_llm_clients_cache")
    flush = getattr(cache, "flush_cache", None)
    if callable(flush):
        flush()


def reseed() -> None:
    """Fresh random state in a forked worker (Python's and numpy's global generators)."""
    random.seed()
    # Only once imported: ``numpy.random`` is a lazy submodule that seeds its global generator
    # from OS entropy when it is imported (in the worker, then). Reaching it through
    # ``numpy.random`` would import it in every forked worker (~10-20 ms of its boot).
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        with contextlib.suppress(Exception):
            numpy_random.seed()


class Zygote:
    """The single-threaded fork server."""

    def __init__(
        self,
        control: socket.socket,
        worker_dispositions: dict[signal.Signals, Handler],
        project_dir: str | None,
        added_env: list[str],
        deferred: Iterable[str] = (),
    ) -> None:
        self.control: socket.socket | None = control
        self.worker_dispositions = worker_dispositions
        self.project_dir = project_dir
        self.added_env = added_env
        self.children: set[int] = set()
        self.accepting = True
        self.stdin_open = True
        self.stop_signal: str | None = None
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.poller = select.poll()
        self.deferred: collections.deque[str] = collections.deque(deferred)
        self.deferred_imported: list[str] = []
        self.deferred_skipped: list[str] = []
        self.deferred_ms = 0.0
        self.last_control = time.monotonic()
        # Set for good when a deferred import left a thread behind: every spawn is an error.
        self.unsafe: str | None = None
        self.importing = False

    # -- signals ---------------------------------------------------------------------------

    def install_signals(self) -> None:
        def on_child(signum: int, frame: FrameType | None) -> None:
            return None  # the wakeup fd wakes the loop, which reaps

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.stop_signal = signal.Signals(signum).name
            if self.importing and not self.children:
                # A deferred import can take seconds (and may swallow any exception raised
                # into it); with nobody left to reap or report, stop here.
                self.stop(f"received {self.stop_signal} during a deferred import")
                log.info("no workers left; exiting")
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os._exit(0)

        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, on_child)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)

    # -- the control socket ----------------------------------------------------------------

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> bool:
        """Send one message (and fds); False (and the control socket dropped) if it failed."""
        control = self.control
        if control is None:
            return False
        data = json.dumps(message, separators=(",", ":")).encode("utf-8")
        try:
            if fds:
                socket.send_fds(control, [data], fds, socket.MSG_NOSIGNAL)
            else:
                control.send(data, socket.MSG_NOSIGNAL)
        except OSError as exc:
            log.warning("control socket lost while sending (%s)", _describe(exc))
            self.drop_control()
            return False
        return True

    def drop_control(self) -> None:
        control = self.control
        if control is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.poller.unregister(control.fileno())
        with contextlib.suppress(OSError):
            control.close()
        self.control = None
        self.stop("control socket closed")

    def stop(self, why: str) -> None:
        if self.accepting:
            log.info("%s: no more forks; waiting for %d worker(s) to end", why, len(self.children))
        self.accepting = False

    def on_control(self) -> None:
        control = self.control
        if control is None:
            return
        try:
            data, fds, flags, _ = socket.recv_fds(
                control, MAX_MESSAGE, MAX_FDS, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("control socket lost while reading (%s)", _describe(exc))
            self.drop_control()
            return
        self.last_control = time.monotonic()
        if not data and not fds:
            self.drop_control()
            return
        try:
            self.on_message(data, fds, flags)
        finally:
            _close_all(fds)

    def on_message(self, data: bytes, fds: list[int], flags: int) -> None:
        message: Any = None
        try:
            if flags & socket.MSG_TRUNC:
                raise BadRequest(f"message larger than {MAX_MESSAGE} bytes")
            try:
                message = json.loads(data.decode("utf-8"))
            except ValueError as exc:
                raise BadRequest(f"not a JSON object: {_describe(exc)}") from exc
            request = parse_spawn(message)
            if flags & socket.MSG_CTRUNC:
                raise BadRequest(f"more than {MAX_FDS} descriptors attached; expected 3")
            if len(fds) != SPAWN_FDS:
                raise BadRequest(
                    f"{len(fds)} descriptor(s) attached; expected 3 (stdin, stdout, stderr)"
                )
            if not self.accepting:
                raise BadRequest("the zygote is stopping")
            if self.unsafe is not None:
                raise BadRequest(self.unsafe)
            unsafe = threads_alive("in the zygote")
            if unsafe is not None:
                raise BadRequest(unsafe)
        except BadRequest as exc:
            request_id = _request_id(message)
            log.warning("refusing spawn request %d: %s", request_id, exc)
            self.send({"error": {"id": request_id, "message": _clip(str(exc))}})
            return
        self.spawn(request, fds)

    # -- forking ---------------------------------------------------------------------------

    def spawn(self, request: SpawnRequest, fds: list[int]) -> None:
        """Fork a worker on ``fds``; the caller closes them afterwards, whatever happened."""
        started = time.perf_counter()
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_AROUND_FORK)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            log.error("fork for %s failed: %s", request.worker_id, exc)
            self.send({"error": {"id": request.id, "message": f"fork failed: {_describe(exc)}"}})
            return
        if pid == 0:
            self.become_worker(request, fds, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        try:
            os.setpgid(pid, pid)  # the child does it too; whoever is first wins the race
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.ESRCH):
                log.warning("setpgid(%d) failed: %s", pid, exc)
        self.children.add(pid)  # the caller (on_control) closes the received fds
        try:
            pidfd = os.pidfd_open(pid)  # before any reaping: it cannot name a reused pid
        except OSError as exc:
            log.error("pidfd_open(%d) failed: %s", pid, exc)
            self.send({"error": {"id": request.id, "message": f"pidfd_open failed: {exc}"}})
            return
        try:
            self.send({"spawned": {"id": request.id, "pid": pid}}, [pidfd])
        finally:
            os.close(pidfd)
        log.info(
            "forked %s as pid %d in %.1f ms",
            request.worker_id,
            pid,
            (time.perf_counter() - started) * 1000,
        )

    def become_worker(self, request: SpawnRequest, fds: list[int], mask: Iterable[int]) -> NoReturn:
        """In the child: drop everything of the zygote and run the worker. Never returns."""
        code = 1
        try:
            with contextlib.suppress(OSError):
                os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for signum, handler in self.worker_dispositions.items():
                if handler is not None:
                    signal.signal(signum, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if self.control is not None:
                self.control.close()
                self.control = None
            _close_all([self.wake_r, self.wake_w])
            # Out of the way of 0-2 first, so no received fd is overwritten by another's dup2.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in fds]
            _close_all(fds)
            for target, fd in enumerate(high):
                os.dup2(fd, target)
            _close_all(high)
            for name in (*ZYGOTE_ONLY_ENV, *self.added_env):
                os.environ.pop(name, None)
            os.environ.update(request.env)
            sys.argv = [sys.argv[0] if sys.argv else "-m", *request.argv]
            if self.project_dir is not None:
                # The worker puts its own project directory at sys.path[0].
                with contextlib.suppress(ValueError):
                    sys.path.remove(self.project_dir)
            reseed()
            reset_network_clients()
            from . import fail_import_hook
            from .server import main as worker_main

            fail_import_hook()  # the worker's start-up test hook, with the worker's env
            worker_main(list(request.argv))
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                with contextlib.suppress(Exception):
                    print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - a child never returns into the zygote's loop
            with contextlib.suppress(Exception):
                traceback.print_exc(file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(code)
        os._exit(code)  # unreachable; keeps type checkers sure of NoReturn

    # -- reaping ---------------------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            self.children.discard(pid)
            if os.WIFSIGNALED(status):
                report: dict[str, int] = {"pid": pid, "signal": os.WTERMSIG(status)}
            elif os.WIFEXITED(status):
                report = {"pid": pid, "code": os.WEXITSTATUS(status)}
            else:
                continue
            log.info("worker pid %d ended: %s", pid, report)
            self.send({"exit": report})

    def drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.wake_r, 4096):
                pass

    def on_stdin(self) -> None:
        try:
            data = os.read(0, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("stdin unreadable (%s)", exc)
            data = b""
        if data:
            log.debug("ignoring %d bytes on stdin", len(data))
            return
        with contextlib.suppress(KeyError):
            self.poller.unregister(0)
        self.stdin_open = False
        self.stop("end of input on stdin")

    # -- deferred preloading ----------------------------------------------------------------

    def poll_timeout_ms(self) -> int:
        """How long the loop may wait: until the zygote counts as idle while imports remain."""
        if not self.deferred or not self.accepting:
            return POLL_MS
        left = self.last_control + IDLE_BEFORE_DEFERRED_S - time.monotonic()
        return max(0, min(POLL_MS, math.ceil(left * 1000)))

    def idle(self) -> bool:
        return time.monotonic() - self.last_control >= IDLE_BEFORE_DEFERRED_S

    def import_deferred(self) -> None:
        """Import the next deferred module (a failure is logged and the module skipped)."""
        self.importing = True  # before the log line: a test waits for it, then signals
        if not self.deferred_imported and not self.deferred_skipped:
            log.info("deferred preload starting: %s", ", ".join(self.deferred))
        name = self.deferred.popleft()
        started = time.perf_counter()
        try:
            try:
                importlib.import_module(name)
            finally:
                self.importing = False
        except Exception as exc:  # noqa: BLE001 - a deferred module is never a refusal
            log.warning("deferred preload of %s failed; skipped: %s", name, _describe(exc))
            self.deferred_skipped.append(name)
        else:
            self.deferred_imported.append(name)
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.deferred_ms += elapsed_ms
        log.debug("deferred preload of %s: %.0f ms", name, elapsed_ms)
        unsafe = threads_alive(f"after the deferred import of {name}")
        if unsafe is not None:
            self.deferred.clear()
            self.unsafe = _clip(unsafe)
            log.error("%s; every spawn request is an error from now on", unsafe)
            return
        if not self.deferred:
            gc.collect()
            gc.freeze()
            skipped = self.deferred_skipped
            skipped_text = f"; skipped: {', '.join(skipped)}" if skipped else ""
            log.info(
                "deferred preload done in %.0f ms: %s%s",
                self.deferred_ms,
                ", ".join(self.deferred_imported) or "nothing",
                skipped_text,
            )

    # -- the loop --------------------------------------------------------------------------

    def serve(self) -> int:
        assert self.control is not None
        flags = select.POLLIN | select.POLLPRI
        self.poller.register(self.control.fileno(), flags)
        self.poller.register(self.wake_r, flags)
        self.poller.register(0, flags)
        self.last_control = time.monotonic()  # ``ready`` starts the first idle wait
        while True:
            self.reap()
            if self.stop_signal is not None:
                self.stop(f"received {self.stop_signal}")
                self.stop_signal = None
            if not self.accepting and not self.children:
                log.info("no workers left; exiting")
                return 0
            if not self.accepting:
                self.deferred.clear()  # no more forks: nothing would inherit them
            polled = self.poller.poll(self.poll_timeout_ms())
            if not polled and self.deferred and self.accepting and self.idle():
                self.import_deferred()  # nothing pending: the socket was not readable
            for fd, events in polled:
                control = self.control
                if fd == self.wake_r:
                    self.drain_wakeup()
                elif control is not None and fd == control.fileno():
                    if events & select.POLLNVAL:
                        self.drop_control()
                    else:
                        self.on_control()
                elif fd == 0 and self.stdin_open:
                    if events & select.POLLNVAL:
                        self.poller.unregister(0)
                        self.stdin_open = False
                        self.stop("stdin is closed")
                    else:
                        self.on_stdin()


def _control_socket() -> socket.socket | None:
    raw = os.environ.get(ZYGOTE_FD_ENV, "")
    try:
        fd = int(raw)
        control = socket.socket(fileno=fd)
    except (ValueError, OSError) as exc:
        log.error("%s=%r is not a usable socket: %s", ZYGOTE_FD_ENV, raw, _describe(exc))
        return None
    os.set_inheritable(fd, False)
    control.settimeout(SEND_TIMEOUT_S)
    return control


def main(argv: list[str]) -> NoReturn:
    """Entry point of ``--mode zygote`` (dispatched by ``server.main``); never returns."""
    started = time.perf_counter()
    dispositions = {signum: signal.getsignal(signum) for signum in ZYGOTE_SIGNALS}
    from .logs import setup_logging
    from .protocol import LogLineStream, stdout_log

    worker_id, log_level = _parse_argv(argv)
    setup_logging(worker_id, log_level)
    # stdout is unused: print() goes to the log, and no buffered text can reach a worker.
    sys.stdout = LogLineStream(stdout_log, 2)
    control = _control_socket()
    if control is None:
        os._exit(EXIT_NO_CONTROL)
    if control.family != socket.AF_UNIX or control.type != socket.SOCK_SEQPACKET:
        reason = f"{ZYGOTE_FD_ENV} is not an AF_UNIX SOCK_SEQPACKET socket"
        _refuse(control, reason)
    from .server import project_dir_from_env

    project_dir = project_dir_from_env(os.environ.get("DSPEX_PROJECT_DIR"))
    if project_dir is not None:
        sys.path.insert(0, project_dir)
    added_env = [name for name in THREAD_POOL_ENV if name not in os.environ]
    for name in added_env:
        os.environ[name] = THREAD_POOL_ENV[name]
    lazy_dspy = os.environ.get(LAZY_ENV) == "1"
    try:
        preloaded = preload(preload_list(os.environ.get(PRELOAD_ENV)), lazy_dspy=lazy_dspy)
        unsafe = threads_alive("after preloading")
        if unsafe is not None:
            raise Refused(unsafe)
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError as exc:
            raise Refused(f"pidfd_open is not available: {_describe(exc)}") from exc
    except Refused as exc:
        _refuse(control, str(exc))
    import_ms = (time.perf_counter() - started) * 1000
    gc.collect()
    gc.freeze()
    from .server import dspy_version

    deferred = deferred_plan(lazy_dspy)
    zygote = Zygote(control, dispositions, project_dir, added_env, deferred)
    zygote.install_signals()
    log.info(
        "ready in %.0f ms (%d modules preloaded%s; deferred: %s)",
        import_ms,
        len(preloaded),
        ", DSPy lazy" if lazy_dspy else "",
        ", ".join(deferred) or "none",
    )
    zygote.send(
        {
            "ready": {
                "pid": os.getpid(),
                "python": platform.python_version(),
                "dspy": dspy_version(),
                "import_ms": round(import_ms, 3),
                "preloaded": preloaded,
                "deferred": deferred,
            }
        }
    )
    try:
        code = zygote.serve()
    except Exception:
        log.exception("zygote loop failed")
        code = 1
    os._exit(code)


def _refuse(control: socket.socket, reason: str) -> NoReturn:
    log.error("refusing to serve: %s", reason)
    with contextlib.suppress(OSError):
        control.send(
            json.dumps({"refused": {"reason": _clip(reason)}}).encode("utf-8"), socket.MSG_NOSIGNAL
        )
    os._exit(EXIT_REFUSED)
