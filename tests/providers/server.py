"""A scripted HTTP/1.1 server on 127.0.0.1 (stdlib ``http.server`` in a thread).

Each request takes the next scripted :class:`Reply` (a fixed body, or chunks written
one by one with ``Transfer-Encoding: chunked`` for streams), optionally after a delay;
every request is recorded with its arrival time, so tests count attempts and measure
the waits between them. Every wait is bounded: a delay ends early when the server
stops, and stopping joins the thread with a timeout.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

MAX_REQUEST_BYTES: Final = 10 * 1024 * 1024
"""Largest request body read; a larger one is answered 413."""
STOP_TIMEOUT_S: Final = 5.0
"""Longest wait for the serving thread when stopping."""


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: Sequence[bytes] | None = None
    """When set, the body is sent chunked, one flush per chunk (a stream)."""
    delay_s: float = 0.0
    """Wait before the status line: a slow provider."""

    @staticmethod
    def json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
        """A JSON body."""
        return Reply(
            status=status,
            headers={"content-type": "application/json", **(headers or {})},
            body=json.dumps(value).encode(),
        )


@dataclass(frozen=True)
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    at: float
    """``time.monotonic()`` on arrival."""

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


UNSCRIPTED: Final = Reply.json({"error": {"message": "no reply scripted"}}, status=599)


class ScriptedServer:
    """Serves scripted replies in order; see the module docstring."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, *replies: Reply) -> None:
        """Queues replies for the next requests, in order."""
        with self._lock:
            self._replies.extend(replies)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(STOP_TIMEOUT_S)

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests' arrivals."""
        times = [request.at for request in self.requests]
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    def _next(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            return self._replies.popleft() if self._replies else UNSCRIPTED

    def _wait(self, seconds: float) -> bool:
        """Sleeps ``seconds`` unless the server stops first; True if it did not."""
        return not self._stopping.wait(seconds)


@contextmanager
def serving() -> Iterator[ScriptedServer]:
    """A started server, stopped on exit."""
    server = ScriptedServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self._answer()

        def do_GET(self) -> None:
            self._answer()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: pytest shows failures, not every request."""

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_REQUEST_BYTES:
                self.send_error(413)
                return
            body = self.rfile.read(length) if length else b""
            recorded = Recorded(
                method=self.command,
                path=self.path,
                headers={key.lower(): value for key, value in self.headers.items()},
                body=body,
                at=time.monotonic(),
            )
            reply = server._next(recorded)
            if reply.delay_s and not server._wait(reply.delay_s):
                return
            try:
                self._send(reply)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (its timeout): what a slow provider sees too.
                self.close_connection = True

        def _send(self, reply: Reply) -> None:
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if reply.chunks is None:
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                self.wfile.flush()
                return
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for chunk in reply.chunks:
                if not chunk:  # an empty chunk would end the body
                    continue
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler
