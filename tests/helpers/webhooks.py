"""Webhook receivers for the tests: a local HTTP server that records what it is sent, and an openai client whose
`webhooks` resource verifies and unwraps signed deliveries as a receiver would."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """An HTTP server on 127.0.0.1 (a free port) that records every request. With fail_first it answers 500 to
    the first request of each webhook-id at each path and 200 to the next ones, so every delivery needs a retry."""

    def __init__(self, fail_first: bool = True) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    key = (self.path, self.headers.get("webhook-id"))  # one event may go to several endpoints
                    seen = any((r["path"], r["id"]) == key for r in receiver.requests)
                    status = 500 if fail_first and not seen else 200
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "id": self.headers.get("webhook-id"),
                            "headers": dict(self.headers.items()),
                            "body": body,
                            "at": time.time(),
                            "answered": status,
                        }
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.requests)


def openai_client():
    """An openai client for its `webhooks` helpers (verify_signature, unwrap); it sends nothing."""
    from openai import OpenAI

    return OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
