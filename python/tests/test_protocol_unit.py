"""Unit tests of framing, on real pipes."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

import msgpack
import pytest

from dspex_bridge import protocol
from dspex_bridge.errors import InvalidArguments, from_exception


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def _writer(fd: int, data: bytes) -> threading.Thread:
    def run() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_reader_reads_frames_then_eof(pipe: tuple[int, int]) -> None:
    r, w = pipe
    bodies = [msgpack.packb({"id": i, "command": "x" * i}) for i in range(1, 50)]
    bodies.append(b"y" * 300_000)
    thread = _writer(w, b"".join(protocol.frame(b) for b in bodies))
    reader = protocol.FrameReader(r)
    got = []
    while (event := reader.read()) is not None:
        assert isinstance(event, protocol.Frame)
        got.append(event.body)
    thread.join(5)
    assert got == bodies


def test_reader_oversize_then_discard_keeps_sync(pipe: tuple[int, int]) -> None:
    r, w = pipe
    big = b"z" * 200_000
    small = msgpack.packb({"id": 1, "command": "ping"})
    thread = _writer(w, protocol.frame(big) + protocol.frame(small))
    reader = protocol.FrameReader(r, max_frame=1000)
    event = reader.read()
    assert event == protocol.Oversize(200_000)
    assert reader.discard(200_000)
    assert reader.read() == protocol.Frame(small)
    assert reader.read() is None
    thread.join(5)


def test_reader_truncated_body_is_eof(pipe: tuple[int, int]) -> None:
    r, w = pipe
    thread = _writer(w, protocol.HEADER.pack(10) + b"abc")
    assert protocol.FrameReader(r).read() is None
    thread.join(5)


def test_reader_discard_hits_eof(pipe: tuple[int, int]) -> None:
    r, w = pipe
    thread = _writer(w, protocol.HEADER.pack(3 * 1024**3) + b"abc")
    reader = protocol.FrameReader(r)
    assert reader.read() == protocol.Oversize(3 * 1024**3)
    assert reader.discard(3 * 1024**3) is False
    thread.join(5)


def test_writer_frames_and_replaces_oversize_replies(pipe: tuple[int, int]) -> None:
    r, w = pipe
    writer = protocol.FrameWriter(w, max_frame=100)
    writer.send({"id": 1, "ok": True, "result": "small"})
    writer.send({"id": 2, "ok": True, "result": "x" * 500})
    os.close(w)
    reader = protocol.FrameReader(r, max_frame=1000)
    first = reader.read()
    second = reader.read()
    assert isinstance(first, protocol.Frame)
    assert isinstance(second, protocol.Frame)
    assert protocol.decode(first.body) == {"id": 1, "ok": True, "result": "small"}
    reply = protocol.decode(second.body)
    assert reply["id"] == 2
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "ProtocolError"


def test_writer_poison_stops_output(pipe: tuple[int, int]) -> None:
    r, w = pipe
    writer = protocol.FrameWriter(w)
    writer.write_raw(b"abcd")
    writer.poison()
    writer.send({"id": 1, "ok": True, "result": None})
    os.close(w)
    assert os.read(r, 100) == b"abcd"


def test_encode_unencodable_values() -> None:
    body = protocol.encode({"id": 1, "result": {"s": {1}, "o": object()}})
    decoded = protocol.decode(body)
    assert decoded["result"]["s"] == [1]
    assert isinstance(decoded["result"]["o"], str)


def test_decode_rejects_trailing_bytes_and_garbage() -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011 - msgpack raises several types
        protocol.decode(msgpack.packb({"id": 1}) + b"\x01")
    with pytest.raises(Exception):  # noqa: B017, PT011
        protocol.decode(b"\xc1")


def test_max_frame_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSPEX_MAX_FRAME", raising=False)
    assert protocol.max_frame_from_env() == 64 * 1024 * 1024
    monkeypatch.setenv("DSPEX_MAX_FRAME", "4096")
    assert protocol.max_frame_from_env() == 4096
    for bad in ("abc", "-1", "0", str(1 << 40)):
        monkeypatch.setenv("DSPEX_MAX_FRAME", bad)
        assert protocol.max_frame_from_env() == 64 * 1024 * 1024


def test_log_line_stream_logs_whole_lines(caplog: pytest.LogCaptureFixture) -> None:
    stream = protocol.LogLineStream(logging.getLogger("t.stdout"), 1)
    with caplog.at_level(logging.INFO, logger="t.stdout"):
        stream.write("one\ntw")
        stream.write("o\nthree")
        assert [r.getMessage() for r in caplog.records] == ["one", "two"]
        stream.flush()
    assert [r.getMessage() for r in caplog.records] == ["one", "two", "three"]


def test_error_shapes() -> None:
    wire = InvalidArguments("bad", {"field": "x"}).to_wire()
    assert wire == {
        "kind": "InvalidArguments",
        "message": "bad",
        "traceback": None,
        "details": {"field": "x"},
    }
    try:
        raise KeyError("k")
    except KeyError as exc:
        wire = from_exception(exc)
    assert wire["kind"] == "PythonException"
    assert wire["details"] == {"exception": "KeyError"}
    assert "Traceback" in wire["traceback"]
