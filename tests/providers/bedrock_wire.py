"""Bedrock's Converse API on the wire: ``POST /model/{modelId}/converse`` and
``/converse-stream``.

Converse answers one JSON object (``output.message``, ``stopReason``, ``usage``).
ConverseStream answers ``application/vnd.amazon.eventstream``: binary messages, each a
prelude (total length, headers length, CRC32 of both), headers (``:message-type``
``event``, ``:event-type`` the member name, ``:content-type``), a JSON payload and a
CRC32 of the whole message. Errors follow AWS restJson1: the HTTP status, the error code
in ``x-amzn-ErrorType``, ``{"message": ...}`` as the body; throttling may carry
``x-amz-retry-after`` (milliseconds), which botocore's standard retry mode reads.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from providers.server import Reply

MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"inputTokens": prompt, "outputTokens": completion, "totalTokens": prompt + completion}


def converse(
    text: str = "",
    *,
    tool_use: tuple[str, str, Mapping[str, Any]] | None = None,
    usage: tuple[int, int] = (17, 9),
) -> Reply:
    """A Converse answer with ``text`` and/or a ``toolUse`` ``(id, name, input)``."""
    content: list[dict[str, Any]] = []
    if text:
        content.append({"text": text})
    if tool_use is not None:
        tool_id, name, args = tool_use
        content.append({"toolUse": {"toolUseId": tool_id, "name": name, "input": dict(args)}})
    return Reply.json(
        {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": "tool_use" if tool_use else "end_turn",
            "usage": _usage(*usage),
            "metrics": {"latencyMs": 12},
        }
    )


def event_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: string headers (type 7) and a payload."""
    encoded = b"".join(
        struct.pack(">B", len(name.encode()))
        + name.encode()
        + b"\x07"
        + struct.pack(">H", len(value.encode()))
        + value.encode()
        for name, value in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(name: str, payload: Mapping[str, Any]) -> bytes:
    """One ConverseStream event, ``name`` its member (``contentBlockDelta``...)."""
    headers = {
        ":event-type": name,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return event_message(headers, json.dumps(payload).encode())


def converse_stream(
    pieces: Sequence[str] = (),
    *,
    tool_use: tuple[str, str, Sequence[str]] | None = None,
    usage: tuple[int, int] = (17, 9),
) -> Reply:
    """A ConverseStream answer: text ``pieces`` in block 0, then a ``tool_use``
    ``(id, name, input JSON fragments)`` block."""
    events = [event("messageStart", {"role": "assistant"})]
    index = 0
    if pieces:
        events += [
            event("contentBlockDelta", {"delta": {"text": piece}, "contentBlockIndex": 0})
            for piece in pieces
        ]
        events.append(event("contentBlockStop", {"contentBlockIndex": 0}))
        index = 1
    if tool_use is not None:
        tool_id, name, fragments = tool_use
        events.append(
            event(
                "contentBlockStart",
                {
                    "start": {"toolUse": {"toolUseId": tool_id, "name": name}},
                    "contentBlockIndex": index,
                },
            )
        )
        events += [
            event(
                "contentBlockDelta",
                {"delta": {"toolUse": {"input": fragment}}, "contentBlockIndex": index},
            )
            for fragment in fragments
        ]
        events.append(event("contentBlockStop", {"contentBlockIndex": index}))
    events.append(event("messageStop", {"stopReason": "tool_use" if tool_use else "end_turn"}))
    events.append(event("metadata", {"usage": _usage(*usage), "metrics": {"latencyMs": 12}}))
    return Reply(headers={"content-type": "application/vnd.amazon.eventstream"}, chunks=events)


def error(
    status: int,
    code: str,
    message: str = "scripted failure",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An AWS restJson1 error: ``code`` such as ``ThrottlingException``."""
    return Reply.json(
        {"message": message},
        status=status,
        headers={
            "x-amzn-errortype": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            **(headers or {}),
        },
    )
