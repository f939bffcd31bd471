"""Test-only fault commands, loaded only when the worker starts with ``DSPEX_TEST_FAULTS=1``.

They inject faults into the real worker loop (see shared/design/reliability.md, "Fault
commands"). Arguments:

=======================  =========================================  ==========================
command                  args                                       reply
=======================  =========================================  ==========================
echo                     any map                                    the args
sleep                    ``ms`` (number, default 0); ends early     ``{"slept_ms"}``
                         when the request is abandoned
exit                     ``code`` (int 0-255, default 0)            none: ``os._exit(code)``
kill_self                ``signal`` (int or name, default SIGKILL)  ``{"signal", "alive"}`` if
                                                                    the process survives
hang                     ``busy`` (bool, default false: sleep),     never (a deadline still
                         ``gil`` (bool, default false): hold the    answers it, except with
                         GIL for ever, nothing else runs again      ``gil``)
raise                    ``exception`` (builtin class name from     ``PythonException``
                         ``RAISABLE``, default RuntimeError),
                         ``message``
write_garbage            ``n`` (bytes, default 16)                  none: a frame of ``n``
                                                                    0xc1 bytes instead
write_oversize_header    ``size`` (default 3 GiB)                   none: only that header,
                                                                    then nothing ever again
spam_stderr              ``bytes`` (default 1 MiB)                  ``{"written"}``
spawn_grandchild         ``seconds`` (default 1000)                 ``{"pid"}`` of ``sleep``
print_to_stdout          ``text`` (optional)                        ``{"printed": true}``
log_line                 ``text``, ``level`` (DEBUG..CRITICAL,      ``{"logged": true}``
                         default INFO), ``logger`` (name):
                         logs ``text`` there and ``print()``s it,
                         as a chatty library would
ignore_shutdown          none                                       ``{"ignoring": [...]}``
emit_events              ``count`` (default 3): ``progress``        ``{"sent"}`` (0 unless the
                         events ``{"done": i, "total": count}``     request has ``events``)
call_host                ``name`` (default ``echo``), ``args``      ``{"results": [{"ok",
                         (map), ``count`` parallel callbacks         "result" | "error"}]}``
                         (default 1, one thread each),              in call order
                         ``timeout_ms``, ``as_request`` (another
                         request id written into the frames)
=======================  =========================================  ==========================
"""

from __future__ import annotations

import builtins
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from .callbacks import CallbackError
from .commands import Context, NoReply, Registry
from .errors import BridgeError, InvalidArguments
from .protocol import HEADER, frame
from .requests import bind, cooperative_sleep

log = logging.getLogger("dspex_bridge.faults")

RAISABLE: frozenset[str] = frozenset(
    {
        "Exception",
        "ArithmeticError",
        "AssertionError",
        "AttributeError",
        "IndexError",
        "KeyError",
        "LookupError",
        "MemoryError",
        "NotImplementedError",
        "OSError",
        "RecursionError",
        "RuntimeError",
        "TimeoutError",
        "TypeError",
        "UnicodeError",
        "ValueError",
        "ZeroDivisionError",
    }
)
OVERSIZE_HEADER: int = 3 * 1024 * 1024 * 1024
SPAM_LIMIT: int = 1024 * 1024 * 1024
# One write per chunk of whole lines, at most PIPE_BUF, so a line is never split by
# another writer.
SPAM_CHUNK: int = 4096
# Catastrophic backtracking: about 2**64 steps inside the C regex engine, which never
# releases the GIL (nor runs signal handlers off the main thread).
GIL_HOG_PATTERN = r"(a+)+$"
GIL_HOG_SUBJECT = "a" * 64 + "b"

_children: list[subprocess.Popen[bytes]] = []
_children_lock = threading.Lock()


def _int_arg(args: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = args.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidArguments(f"{key!r} must be an integer in [{lo}, {hi}]", {"field": key})
    return value


def echo(ctx: Context, args: dict[str, Any]) -> Any:
    return args


def sleep(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    ms = args.get("ms", 0)
    if ms is None:
        ms = 0
    ok = isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms)
    if not ok or not 0 <= ms <= 86_400_000:
        raise InvalidArguments("'ms' must be a number of milliseconds >= 0", {"field": "ms"})
    # Abandonment (deadline or cancel) ends it early; the reply is discarded then anyway.
    cooperative_sleep(ms / 1000.0)
    return {"slept_ms": ms}


def exit_(ctx: Context, args: dict[str, Any]) -> Any:
    code = _int_arg(args, "code", 0, 0, 255)
    log.warning("fault: exit(%d) without reply to request %d", code, ctx.request_id)
    ctx.server.exit_now(code)


def _signal_number(value: Any) -> int:
    if value is None:
        return int(signal.SIGKILL)
    if isinstance(value, int) and not isinstance(value, bool):
        if value in {int(s) for s in signal.Signals}:
            return value
    elif isinstance(value, str):
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        member = signal.Signals.__members__.get(name)
        if member is not None:
            return int(member)
    raise InvalidArguments(f"unknown signal {value!r}", {"field": "signal"})


def kill_self(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    signum = _signal_number(args.get("signal"))
    log.warning("fault: sending %s to self", signal.Signals(signum).name)
    os.kill(os.getpid(), signum)
    if signum in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        return {"signal": signum, "alive": True}
    # Give a fatal signal (or the SIGTERM handler on the main thread) time to act first.
    time.sleep(1.0)
    return {"signal": signum, "alive": True}


def hang(ctx: Context, args: dict[str, Any]) -> Any:
    """Never reply; ``gil``: hold the GIL for ever, so no other thread runs again.

    Without ``gil`` the rest of the worker keeps serving (and a deadline answers the request
    ``DeadlineExceeded``); the hung thread never notices abandonment. With ``gil`` the
    interpreter is truly hung: no reader, no deadline scheduler, no Python signal handler.
    """
    busy = bool(args.get("busy", False))
    gil = bool(args.get("gil", False))
    log.warning("fault: hanging on request %d (busy=%s, gil=%s)", ctx.request_id, busy, gil)
    if gil:
        pattern = re.compile(GIL_HOG_PATTERN)
        pattern.match(GIL_HOG_SUBJECT)
    if busy:
        while True:
            pass
    threading.Event().wait()
    raise NoReply


def raise_(ctx: Context, args: dict[str, Any]) -> Any:
    name = args.get("exception", "RuntimeError")
    message = args.get("message", "raised by the raise fault command")
    if not isinstance(name, str) or name not in RAISABLE:
        raise InvalidArguments(
            f"exception must be one of {sorted(RAISABLE)}", {"field": "exception"}
        )
    if not isinstance(message, str):
        raise InvalidArguments("'message' must be a string", {"field": "message"})
    exc_type = getattr(builtins, name)
    raise exc_type(message)


def write_garbage(ctx: Context, args: dict[str, Any]) -> Any:
    n = _int_arg(args, "n", 16, 1, ctx.server.writer.max_frame)
    log.warning("fault: writing a %d byte non-MessagePack frame", n)
    ctx.server.writer.write_raw(frame(b"\xc1" * n))
    raise NoReply


def write_oversize_header(ctx: Context, args: dict[str, Any]) -> Any:
    size = _int_arg(args, "size", OVERSIZE_HEADER, 0, 0xFFFFFFFF)
    log.warning("fault: writing a frame header claiming %d bytes, then nothing", size)
    ctx.server.writer.write_raw(HEADER.pack(size))
    ctx.server.writer.poison()
    raise NoReply


def spam_stderr(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    total = _int_arg(args, "bytes", 1024 * 1024, 0, SPAM_LIMIT)
    line = f"dspex spam pid={os.getpid()} request={ctx.request_id} ".encode()
    line = line + b"x" * max(0, 99 - len(line)) + b"\n"
    per_chunk = max(1, SPAM_CHUNK // len(line))
    chunk = line * per_chunk
    left = total
    while left > 0:
        part = chunk if left >= len(chunk) else _tail(line, left)
        view = memoryview(part)
        while view:
            view = view[os.write(2, view) :]
        left -= len(part)
    return {"written": total}


def _tail(line: bytes, size: int) -> bytes:
    full, rest = divmod(size, len(line))
    data = line * full
    if rest:
        data += b"x" * (rest - 1) + b"\n"
    return data


def spawn_grandchild(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    seconds = _int_arg(args, "seconds", 1000, 1, 10_000_000)
    child = subprocess.Popen(
        ["sleep", str(seconds)],
        stdin=subprocess.DEVNULL,
        stdout=2,
        stderr=2,
        close_fds=True,
    )
    with _children_lock:
        _children[:] = [c for c in _children if c.poll() is None]
        _children.append(child)
    log.info("fault: spawned grandchild sleep pid=%d", child.pid)
    return {"pid": child.pid}


def print_to_stdout(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    text = args.get("text", "dspex print_to_stdout marker")
    if not isinstance(text, str):
        raise InvalidArguments("'text' must be a string", {"field": "text"})
    print(f"{text} (print)")
    sys.stdout.flush()
    os.write(1, f"{text} (fd 1)\n".encode())
    return {"printed": True}


def log_line(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Log ``text`` through ``logger`` at ``level`` and ``print()`` it (like a library)."""
    text = args.get("text")
    level = args.get("level", "INFO")
    name = args.get("logger", "dspex_bridge.faults")
    if not isinstance(text, str):
        raise InvalidArguments("'text' must be a string", {"field": "text"})
    levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    if not isinstance(level, str) or level.upper() not in levels:
        raise InvalidArguments(f"'level' must be one of {list(levels)}", {"field": "level"})
    if not isinstance(name, str) or not name:
        raise InvalidArguments("'logger' must be a logger name", {"field": "logger"})
    logging.getLogger(name).log(getattr(logging, level.upper()), "%s", text)
    print(text)
    sys.stdout.flush()
    return {"logged": True}


def ignore_shutdown(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    ctx.server.ignore_shutdown()
    return {"ignoring": ["SIGTERM", "EOF"]}


def emit_events(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    count = _int_arg(args, "count", 3, 0, 10_000)
    assert ctx.slot is not None
    sent = sum(ctx.slot.event("progress", {"done": i + 1, "total": count}) for i in range(count))
    return {"sent": sent}


def call_host(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """``count`` callbacks at once (one thread each), all outstanding until answered."""
    name = args.get("name", "echo")
    call_args = args.get("args", {})
    count = _int_arg(args, "count", 1, 1, 32)
    timeout_ms = args.get("timeout_ms")
    as_request = args.get("as_request")
    if as_request is not None and (
        not isinstance(as_request, int) or isinstance(as_request, bool) or as_request < 0
    ):
        raise InvalidArguments("'as_request' must be an integer >= 0", {"field": "as_request"})
    if not isinstance(name, str) or not name:
        raise InvalidArguments("'name' must be a string", {"field": "name"})
    if not isinstance(call_args, dict):
        raise InvalidArguments("'args' must be a map", {"field": "args"})
    if timeout_ms is not None and (
        not isinstance(timeout_ms, (int, float)) or isinstance(timeout_ms, bool) or timeout_ms < 0
    ):
        raise InvalidArguments("'timeout_ms' must be a number >= 0", {"field": "timeout_ms"})
    slot = ctx.slot
    assert slot is not None
    timeout = None if timeout_ms is None else timeout_ms / 1000.0
    results: list[dict[str, Any]] = [{} for _ in range(count)]

    def one(i: int) -> None:
        with bind(slot):
            try:
                value = slot.callback(name, {**call_args, "index": i}, timeout, as_request)
                results[i] = {"ok": True, "result": value}
            except CallbackError as exc:
                error = {"kind": exc.kind, "message": exc.message, "details": exc.details}
                results[i] = {"ok": False, "error": error}
            except BridgeError as exc:
                results[i] = {"ok": False, "error": exc.to_wire()}

    threads = [
        threading.Thread(target=one, args=(i,), name=f"dspex-call-{i}") for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"results": results}


def register(registry: Registry) -> None:
    registry.register("echo", echo)
    registry.register("sleep", sleep)
    registry.register("exit", exit_)
    registry.register("kill_self", kill_self)
    registry.register("hang", hang)
    registry.register("raise", raise_)
    registry.register("write_garbage", write_garbage)
    registry.register("write_oversize_header", write_oversize_header)
    registry.register("spam_stderr", spam_stderr)
    registry.register("spawn_grandchild", spawn_grandchild)
    registry.register("print_to_stdout", print_to_stdout)
    registry.register("log_line", log_line)
    registry.register("emit_events", emit_events)
    registry.register("call_host", call_host)
    # Runs on the main thread: only it may change signal dispositions.
    registry.register("ignore_shutdown", ignore_shutdown, inline=True)
