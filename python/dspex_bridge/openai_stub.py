"""An OpenAI-compatible chat completions server answering like the offline dummy LM.

For tests (here and on the Rust side) of the real HTTP path of an LM
(``dspy.LM("openai/<anything>", api_base="http://127.0.0.1:<port>/v1", api_key="x")``)::

    python -m dspex_bridge.openai_stub [--port 0] [--latency-ms N] [--seed S] [--exit-on-eof]

It listens on 127.0.0.1, prints one JSON line ``{"port": N}`` on stdout once it does, and
serves ``POST /v1/chat/completions`` (and ``/chat/completions``): the completion text is what
``lm.DummyEngine`` answers for the same messages (system text, last user message,
``response_format`` meaning JSON), as a standard ``chat.completion`` with a ``usage`` block
(``lm.count_tokens`` of every message's text and of the answer); with ``"stream": true`` as
server-sent events (``chat.completion.chunk`` deltas of a few words, a final chunk with
``finish_reason``, a usage chunk when ``stream_options.include_usage``, then
``data: [DONE]``). ``GET /v1/models`` lists one model. Standard library only; SIGTERM or
SIGINT (and end of stdin with ``--exit-on-eof``) end it with status 0.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sys
import threading
import time
from typing import Any, NoReturn

from .lm import DummyEngine, count_tokens, stream_pieces

MAX_BODY = 64 * 1024 * 1024


def _text(content: Any) -> str:
    """The text of an OpenAI message ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return "" if content is None else str(content)


def completion_text(engine: DummyEngine, body: dict[str, Any]) -> tuple[str, int, int]:
    """(answer, prompt tokens, completion tokens) for a chat completions request body."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []
    texts = [(m.get("role"), _text(m.get("content"))) for m in messages if isinstance(m, dict)]
    system = "".join(text for role, text in texts if role in ("system", "developer"))
    users = [text for role, text in texts if role == "user"]
    json_mode = body.get("response_format") is not None
    answer = engine.answer(system, users[-1] if users else "", json_mode)
    prompt_tokens = sum(count_tokens(text) for _, text in texts)
    return answer, prompt_tokens, count_tokens(answer)


class StubServer:
    """The HTTP server (a ``ThreadingHTTPServer`` on 127.0.0.1) and its counters."""

    def __init__(self, port: int = 0, latency_ms: float = 0.0, seed: str = "") -> None:
        self.engine = DummyEngine(seed=seed)
        self.latency_ms = latency_ms
        self.lock = threading.Lock()
        self.requests = 0
        self.streamed = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    owner._json(self, 200, {"object": "list", "data": [_model("dummy")]})
                else:
                    owner._error(self, 404, f"no route {self.path}")

            def do_POST(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                if path not in ("/v1/chat/completions", "/chat/completions"):
                    owner._error(self, 404, f"no route {self.path}")
                    return
                size = int(self.headers.get("content-length") or 0)
                if size > MAX_BODY:
                    owner._error(self, 413, "request body too large")
                    return
                try:
                    body = json.loads(self.rfile.read(size) or b"{}")
                except ValueError:
                    owner._error(self, 400, "the body is not JSON")
                    return
                if not isinstance(body, dict):
                    owner._error(self, 400, "the body is not a JSON object")
                    return
                owner._complete(self, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]

    # -- responses ---------------------------------------------------------------------------

    def _json(self, handler: http.server.BaseHTTPRequestHandler, status: int, data: Any) -> None:
        payload = json.dumps(data).encode()
        try:
            handler.send_response(status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            pass  # the client went away

    def _error(self, handler: http.server.BaseHTTPRequestHandler, status: int, text: str) -> None:
        self._json(handler, status, {"error": {"message": text, "type": "invalid_request_error"}})

    def _complete(self, handler: http.server.BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self.lock:
            self.requests += 1
            number = self.requests
        if self.latency_ms > 0:
            time.sleep(self.latency_ms / 1000.0)
        answer, prompt_tokens, completion_tokens = completion_text(self.engine, body)
        model = body.get("model") if isinstance(body.get("model"), str) else "dummy"
        ident = f"chatcmpl-stub-{number}"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            with self.lock:
                self.streamed += 1
            self._stream(handler, ident, model, answer, usage if include_usage else None)
            return
        self._json(
            handler,
            200,
            {
                "id": ident,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
        )

    def _stream(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        ident: str,
        model: str,
        answer: str,
        usage: dict[str, int] | None,
    ) -> None:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": piece}, None) for piece in stream_pieces(answer)]
        events.append(chunk({}, "stop"))
        if usage is not None:
            events.append(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        try:
            handler.send_response(200)
            handler.send_header("content-type", "text/event-stream")
            handler.send_header("cache-control", "no-cache")
            handler.send_header("connection", "close")
            handler.end_headers()
            for event in events:
                handler.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                handler.wfile.flush()
            handler.wfile.write(b"data: [DONE]\n\n")
            handler.wfile.flush()
        except OSError:
            pass
        handler.close_connection = True

    # -- running -----------------------------------------------------------------------------

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-stub",
            daemon=True,
        )
        thread.start()
        return thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "dspex"}


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -m dspex_bridge.openai_stub")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", default="")
    parser.add_argument("--exit-on-eof", action="store_true")
    ns = parser.parse_args(argv)

    def stop(signum: int, frame: Any) -> None:
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stub = StubServer(ns.port, ns.latency_ms, ns.seed)
    stub.serve_in_thread()
    sys.stdout.write(json.dumps({"port": stub.port}) + "\n")
    sys.stdout.flush()
    if ns.exit_on_eof:
        while sys.stdin.buffer.read(65536):
            pass
        os._exit(0)
    threading.Event().wait()
    os._exit(0)


if __name__ == "__main__":
    main()
