"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions API, scriptable for
judge tests and benchmarks: valid JSON, malformed JSON, 429, 500, slow responses, dropped
connections. It counts requests and the peak number of requests in flight."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# An action: ("ok", score) | ("malformed",) | ("status", code) | ("slow", seconds) | ("drop",)
Action = tuple
Script = Callable[[int, dict[str, Any]], Action]


def always(action: Action) -> Script:
    return lambda i, body: action


def sequence(*actions: Action, then: Action = ("ok", 0.8)) -> Script:
    """The i-th request gets actions[i]; later ones get ``then``."""
    return lambda i, body: actions[i] if i < len(actions) else then


class FakeOpenAI:
    def __init__(self, script: Script | None = None, latency_s: float = 0.0):
        self.script = script or always(("ok", 0.8))
        self.latency_s = latency_s
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    index = fake.requests
                    fake.requests += 1
                    fake.bodies.append(body)
                    fake.inflight += 1
                    fake.max_inflight = max(fake.max_inflight, fake.inflight)
                try:
                    fake._respond(self, index, body)
                finally:
                    with fake._lock:
                        fake.inflight -= 1

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default backlog of 5 drops SYNs under concurrency
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- responses ---------------------------------------------------------------------------
    def _respond(self, handler: BaseHTTPRequestHandler, index: int, body: dict[str, Any]) -> None:
        action = self.script(index, body)
        if self.latency_s:
            time.sleep(self.latency_s)
        kind = action[0]
        if kind == "slow":
            time.sleep(action[1])
            action = ("ok", 0.8)
            kind = "ok"
        if kind == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if kind == "status":
            self._send(handler, action[1], {"error": {"message": f"scripted {action[1]}", "type": "server_error"}})
            return
        content = (
            '{"score": 0.7, "rationale": "unterminated'
            if kind == "malformed"
            else json.dumps({"score": action[1], "rationale": f"scripted score {action[1]}"})
        )
        prompt_chars = len(json.dumps(body.get("messages", [])))
        self._send(
            handler,
            200,
            {
                "id": f"chatcmpl-{index}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                ],
                "usage": {
                    "prompt_tokens": prompt_chars // 4,
                    "completion_tokens": len(content) // 4,
                    "total_tokens": prompt_chars // 4 + len(content) // 4,
                },
            },
        )

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        if code == 429:
            handler.send_header("Retry-After", "0")
        handler.end_headers()
        handler.wfile.write(data)
