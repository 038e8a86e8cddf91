"""Anthropic Messages on the wire: ``POST /v1/messages``.

A plain answer is one ``message`` object; a stream is server-sent events with an
``event:`` name each: ``message_start`` (input tokens), ``content_block_start``,
``ping``, ``content_block_delta`` (``text_delta`` or a tool's ``input_json_delta``),
``content_block_stop``, ``message_delta`` (stop reason, output tokens), ``message_stop``.
Errors are ``{"type": "error", "error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from providers.server import Reply

MODEL = "claude-sonnet-4-5"


def message(
    text: str = "",
    *,
    tool_use: tuple[str, str, Mapping[str, Any]] | None = None,
    usage: tuple[int, int] = (13, 5),
) -> Reply:
    """A ``message`` with ``text`` and/or a ``tool_use`` ``(id, name, input)`` block."""
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    if tool_use is not None:
        tool_id, name, args = tool_use
        content.append({"type": "tool_use", "id": tool_id, "name": name, "input": dict(args)})
    return Reply.json(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": content,
            "stop_reason": "tool_use" if tool_use else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }
    )


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def stream(
    pieces: Sequence[str] = (),
    *,
    tool_use: tuple[str, str, Sequence[str]] | None = None,
    usage: tuple[int, int] = (13, 5),
) -> Reply:
    """A streamed answer: text ``pieces`` in block 0, and a ``tool_use`` ``(id, name,
    partial JSON fragments)`` in the next block."""
    start: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": 1},
    }
    events = [_event("message_start", {"message": start})]
    index = 0
    if pieces:
        events.append(
            _event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            )
        )
        events.append(_event("ping", {}))
        events += [
            _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
            for p in pieces
        ]
        events.append(_event("content_block_stop", {"index": 0}))
        index = 1
    if tool_use is not None:
        tool_id, name, fragments = tool_use
        block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
        events.append(_event("content_block_start", {"index": index, "content_block": block}))
        events += [
            _event(
                "content_block_delta",
                {"index": index, "delta": {"type": "input_json_delta", "partial_json": f}},
            )
            for f in fragments
        ]
        events.append(_event("content_block_stop", {"index": index}))
    events.append(
        _event(
            "message_delta",
            {
                "delta": {
                    "stop_reason": "tool_use" if tool_use else "end_turn",
                    "stop_sequence": None,
                },
                # Cumulative usage, input included, as the API sends it now (and the
                # only usage langchain-anthropic reads from a stream).
                "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
            },
        )
    )
    events.append(_event("message_stop", {}))
    return Reply(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache"}, chunks=events
    )


def error(
    status: int, message: str = "scripted failure", headers: Mapping[str, str] | None = None
) -> Reply:
    """An error answer as the API sends it."""
    kind = {
        429: "rate_limit_error",
        400: "invalid_request_error",
        401: "authentication_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    return Reply.json(
        {"type": "error", "error": {"type": kind, "message": message}},
        status=status,
        headers=headers,
    )
