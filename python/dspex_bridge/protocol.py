"""Framing of the wire protocol and ownership of the private protocol fd.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of MessagePack
whose body is a map with string keys. At start the worker duplicates the original fd 1 for
frames and points fd 1 (and ``sys.stdout``) at stderr, so ``print()`` or a C library writing
to stdout can never corrupt the stream.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME: int = 64 * 1024 * 1024
READ_CHUNK: int = 64 * 1024
DISCARD_CHUNK: int = 64 * 1024

log = logging.getLogger("dspex_bridge.protocol")
stdout_log = logging.getLogger("dspex_bridge.stdout")


def max_frame_from_env(default: int = DEFAULT_MAX_FRAME) -> int:
    """``DSPEX_MAX_FRAME`` (bytes) if it is a positive integer, else ``default``."""
    raw = os.environ.get("DSPEX_MAX_FRAME")
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        log.warning("ignoring DSPEX_MAX_FRAME=%r: not an integer", raw)
        return default
    if value <= 0 or value > 0xFFFFFFFF:
        log.warning("ignoring DSPEX_MAX_FRAME=%r: out of range", raw)
        return default
    return value


class LogLineStream(io.TextIOBase):
    """A text stream that turns every complete line written to it into a log record.

    Installed as ``sys.stdout`` so stray ``print()`` output lands in the worker log (one
    line per record, tagged with the worker id) instead of the protocol stream.
    """

    def __init__(self, logger: logging.Logger, fd: int) -> None:
        super().__init__()
        self._logger = logger
        self._fd = fd
        self._buffer = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._buffer += text
            if "\n" not in self._buffer:
                if len(self._buffer) < 64 * 1024:
                    return len(text)
                lines, self._buffer = [self._buffer], ""
            else:
                *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._logger.info("%s", line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._logger.info("%s", rest)


def claim_protocol_fd() -> int:
    """Keep the original stdout for frames; point fd 1 and ``sys.stdout`` at stderr.

    Returns the private protocol fd (close-on-exec, so children never inherit it).
    """
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    proto_fd = os.dup(1)
    os.set_inheritable(proto_fd, False)
    os.dup2(2, 1)
    sys.stdout = LogLineStream(stdout_log, 1)
    return proto_fd


@dataclass(frozen=True)
class Frame:
    """A complete frame body."""

    body: bytes


@dataclass(frozen=True)
class Oversize:
    """A header announced ``size`` bytes, more than the configured maximum."""

    size: int


class FrameReader:
    """Reads frames from a file descriptor; the length is checked before any allocation."""

    def __init__(self, fd: int, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.fd = fd
        self.max_frame = max_frame
        self._buf = bytearray()
        self.eof = False

    def _fill(self, want: int) -> bool:
        """Read until at least ``want`` bytes are buffered; False on EOF first."""
        while len(self._buf) < want:
            if self.eof:
                return False
            chunk = os.read(self.fd, max(READ_CHUNK, min(want - len(self._buf), 1 << 20)))
            if not chunk:
                self.eof = True
                return False
            self._buf += chunk
        return True

    def read(self) -> Frame | Oversize | None:
        """The next frame, an ``Oversize`` marker, or None at end of input."""
        if not self._fill(HEADER.size):
            if self._buf:
                log.warning("end of input inside a frame header (%d bytes)", len(self._buf))
            return None
        (size,) = HEADER.unpack_from(self._buf, 0)
        if size > self.max_frame:
            del self._buf[: HEADER.size]
            return Oversize(size)
        if not self._fill(HEADER.size + size):
            log.warning("end of input inside a frame body (%d of %d bytes)", len(self._buf), size)
            return None
        body = bytes(self._buf[HEADER.size : HEADER.size + size])
        del self._buf[: HEADER.size + size]
        return Frame(body)

    def discard(self, size: int) -> bool:
        """Skip ``size`` bytes in bounded chunks; False if input ended first."""
        remaining = size
        take = min(remaining, len(self._buf))
        del self._buf[:take]
        remaining -= take
        while remaining > 0:
            chunk = os.read(self.fd, min(DISCARD_CHUNK, remaining))
            if not chunk:
                self.eof = True
                return False
            remaining -= len(chunk)
        return True


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return str(obj)


def encode(message: dict[str, Any]) -> bytes:
    """The MessagePack body of ``message`` (string keys, bin type for bytes)."""
    body: bytes = msgpack.packb(message, use_bin_type=True, default=_msgpack_default)
    return body


def decode(body: bytes) -> Any:
    """Decode one MessagePack body; raises on malformed or trailing data."""
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


class FrameWriter:
    """Writes whole frames to the protocol fd, one writer at a time."""

    def __init__(self, fd: int, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.fd = fd
        self.max_frame = max_frame
        self.lock = threading.Lock()
        self._poisoned = False

    def write_raw(self, data: bytes) -> None:
        """Write bytes as they are (caller holds no lock); nothing after ``poison``."""
        with self.lock:
            self._write_locked(data)

    def _write_locked(self, data: bytes) -> None:
        if self._poisoned:
            return
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def poison(self) -> None:
        """Stop writing for good (the stream was deliberately broken)."""
        with self.lock:
            self._poisoned = True

    def send(self, message: dict[str, Any]) -> None:
        """Encode and write one message; a reply too large to frame becomes an error reply."""
        try:
            body = encode(message)
        except Exception as exc:  # noqa: BLE001 - any encoding failure becomes an error reply
            body = encode(_unencodable(message, exc))
        if len(body) > self.max_frame:
            log.error(
                "reply to request %r is %d bytes, over the %d byte limit",
                message.get("id"),
                len(body),
                self.max_frame,
            )
            body = encode(
                {
                    "id": message.get("id", 0),
                    "ok": False,
                    "error": {
                        "kind": "ProtocolError",
                        "message": f"reply of {len(body)} bytes exceeds max frame {self.max_frame}",
                        "traceback": None,
                        "details": {"size": len(body), "max_frame": self.max_frame},
                    },
                }
            )
        with self.lock:
            self._write_locked(frame(body))

    def send_strict(self, message: dict[str, Any]) -> None:
        """Encode and write a non-reply frame (an event, a callback); ``ValueError`` (and
        nothing written) when it cannot be encoded or is larger than the maximum."""
        try:
            body = encode(message)
        except Exception as exc:  # reported to the caller as ValueError
            raise ValueError(f"frame could not be encoded as MessagePack: {exc}") from exc
        if len(body) > self.max_frame:
            raise ValueError(f"frame of {len(body)} bytes exceeds max frame {self.max_frame}")
        with self.lock:
            self._write_locked(frame(body))


def _unencodable(message: dict[str, Any], exc: Exception) -> dict[str, Any]:
    return {
        "id": message.get("id", 0),
        "ok": False,
        "error": {
            "kind": "PythonException",
            "message": f"reply could not be encoded as MessagePack: {exc}",
            "traceback": None,
            "details": {"exception": type(exc).__name__},
        },
    }
