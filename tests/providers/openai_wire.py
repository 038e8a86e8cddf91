"""OpenAI chat completions on the wire: ``POST /v1/chat/completions``.

A plain answer is one ``chat.completion`` JSON object; a stream (``"stream": true``) is
server-sent events, one ``chat.completion.chunk`` per ``data:`` line, a last chunk with
``usage`` and no choices when ``stream_options.include_usage`` asked for it, then
``data: [DONE]``. Errors are ``{"error": {...}}`` with the HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from providers.server import Reply

MODEL = "gpt-4.1-mini"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion(
    content: str | None = "",
    *,
    tool_calls: Sequence[tuple[str, str, Mapping[str, Any]]] = (),
    usage: tuple[int, int] = (11, 7),
) -> Reply:
    """A ``chat.completion``: ``content`` and/or ``tool_calls`` as ``(id, name, args)``."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for call_id, name, args in tool_calls
        ]
    return Reply.json(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                    "logprobs": None,
                }
            ],
            "usage": _usage(*usage),
        }
    )


def _chunk(delta: Mapping[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}],
    }


def sse(events: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """``data:`` events, then ``data: [DONE]``."""
    return [f"data: {json.dumps(event)}\n\n".encode() for event in events] + [b"data: [DONE]\n\n"]


def stream(
    pieces: Sequence[str] = (),
    *,
    tool_call: tuple[str, str, Sequence[str]] | None = None,
    usage: tuple[int, int] | None = (11, 7),
) -> Reply:
    """A streamed answer: text ``pieces``, or a ``tool_call`` ``(id, name, argument
    fragments)`` whose arguments arrive in pieces; a usage chunk last unless None."""
    events: list[dict[str, Any]] = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": piece}) for piece in pieces]
    if tool_call is not None:
        call_id, name, fragments = tool_call
        events.append(
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        events += [
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
            for fragment in fragments
        ]
    events.append(_chunk({}, "tool_calls" if tool_call else "stop"))
    if usage is not None:
        events.append({**_chunk({}), "choices": [], "usage": _usage(*usage)})
    return Reply(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
        chunks=sse(events),
    )


def error(
    status: int, message: str = "scripted failure", headers: Mapping[str, str] | None = None
) -> Reply:
    """An error answer as the API sends it."""
    kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(status, "server_error")
    return Reply.json(
        {"error": {"message": message, "type": kind, "param": None, "code": kind}},
        status=status,
        headers=headers,
    )


def malformed() -> Reply:
    """A 200 whose body is not JSON (a proxy's error page, a truncated answer)."""
    return Reply(headers={"content-type": "application/json"}, body=b'{"id": "chatcmpl-1", "cho')
