"""What an agent run takes as its message, checked the same way by every service that
starts runs (Agent when it runs one, Job when it stores one for later)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from google.protobuf import json_format

from agentmesh.core.validation import NUL, NUL_RULE, Violations
from agentmesh.v1 import common_pb2


def parts_text(
    parts: Sequence[common_pb2.Part], violations: Violations, *, field: str = "parts"
) -> str:
    """The user's message from the parts: text as is, data as JSON, URIs as text; a
    part agents cannot take is a violation on ``field[i]``."""
    pieces: list[str] = []
    for i, part in enumerate(parts):
        kind = part.WhichOneof("kind")
        if kind in {"text", "uri"}:
            text = getattr(part, kind)
            if NUL in text:
                violations.add(f"{field}[{i}].{kind}", NUL_RULE)
            pieces.append(text)
        elif kind == "data":
            pieces.append(json.dumps(json_format.MessageToDict(part.data), sort_keys=True))
        elif kind == "blob":
            violations.add(f"{field}[{i}].blob", "binary parts are not taken by agents yet")
        else:
            violations.add(f"{field}[{i}]", "empty part: set one of text, data or uri")
    return "\n".join(pieces)
