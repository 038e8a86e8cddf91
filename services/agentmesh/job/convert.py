"""A ``job.jobs`` row, or a change's snapshot in ``job.events``, as the wire Job.

Rows come from asyncpg (``jsonb`` as text, ``timestamptz`` as datetimes); snapshots are
the same columns as one ``jsonb`` object (nested JSON, timestamps as ISO text). One
function reads both, so a watched change and a read job look the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from agentmesh.core.errors import ERROR_DOMAIN
from agentmesh.core.names import AGENTS, JOBS
from agentmesh.core.storage import json_to_struct, timestamp
from agentmesh.job.domain.policy import Policy
from agentmesh.v1 import common_pb2, job_pb2


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _time(value: Any) -> Any:
    if isinstance(value, str):
        return timestamp(datetime.fromisoformat(value))
    return timestamp(value)


def error_json(code: int, message: str, reason: str, **metadata: str) -> str:
    """A job's error as stored: the gRPC code, the message and the ErrorInfo reason."""
    return json.dumps(
        {"code": code, "message": message[:2048], "reason": reason, "metadata": metadata}
    )


def error_status(stored: Mapping[str, Any]) -> status_pb2.Status:
    """A stored error as ``google.rpc.Status`` carrying its ErrorInfo."""
    status = status_pb2.Status(code=int(stored.get("code", 2)), message=str(stored.get("message")))
    info = error_details_pb2.ErrorInfo(
        reason=str(stored.get("reason", "")),
        domain=ERROR_DOMAIN,
        metadata={str(k): str(v) for k, v in (stored.get("metadata") or {}).items()},
    )
    status.details.add().Pack(info)
    return status


def policy_of(row: Mapping[str, Any]) -> Policy:
    """The job's retry policy, as stored."""
    return Policy(
        max_attempts=int(row["max_attempts"]),
        initial_backoff_s=row["initial_backoff_ms"] / 1000,
        max_backoff_s=row["max_backoff_ms"] / 1000,
        multiplier=float(row["backoff_multiplier"]),
    )


def job_proto(row: Mapping[str, Any], immutable: Mapping[str, Any] | None = None) -> job_pb2.Job:
    """The wire Job of a row or a snapshot; a snapshot lacks the input and parts, which
    ``immutable`` (the job's current row) supplies."""
    whole = immutable if immutable is not None else row
    job = job_pb2.Job(
        name=JOBS.format(row["id"]),
        agent=AGENTS.format(row["agent"]),
        input=json_to_struct(_json(whole["input"])),
        session=row["session"],
        priority=row["priority"],
        labels=_json(row["labels"]),
        retry_policy=policy_of(row).as_proto(),
        state=row["state"],
        attempt=row["attempt"],
        thread_id=row["thread_id"],
        usage=common_pb2.TokenUsage(
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            total_tokens=row["input_tokens"] + row["output_tokens"],
        ),
        sequence=row["sequence"],
        create_time=_time(row["create_time"]),
        schedule_time=_time(row["schedule_time"]),
        start_time=_time(row["start_time"]),
        end_time=_time(row["end_time"]),
        update_time=_time(row["update_time"]),
    )
    for part in _json(whole["parts"]):
        json_format.ParseDict(part, job.parts.add())
    progress = _json(row["progress"])
    if progress:
        job.progress.CopyFrom(
            job_pb2.Progress(
                percent=float(progress.get("percent", 0.0)),
                stage=str(progress.get("stage", "")),
                message=str(progress.get("message", "")),
                update_time=_time(progress.get("time")),
            )
        )
    result = _json(row["result"])
    if result is not None:
        job.result.CopyFrom(json_to_struct(result))
    error = _json(row["error"])
    if error:
        job.error.CopyFrom(error_status(error))
    interrupt = _json(row["interrupt"])
    if interrupt:
        json_format.ParseDict(interrupt, job.interrupt)
    return job
