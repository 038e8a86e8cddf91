"""The rules of a background turn: which turns run as a Job, when the job's stream
ends the turn, and the answer a finished job gives."""

from __future__ import annotations

from typing import Final

from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from agentmesh.v1 import common_pb2, job_pb2

JOB_ENDS: Final = frozenset(
    {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)
"""The job states that end a background turn."""


def runs_in_background(asked: bool, long_running: bool) -> bool:
    """A turn runs as a Job when the client asks, or the chosen agent's card says its
    runs are long."""
    return asked or long_running


def job_request_id(turn_id: str) -> str:
    """The CreateJob ``request_id`` of a turn: one job per turn, however often it is
    retried."""
    return f"{turn_id}-job"


def answer_parts(result: struct_pb2.Struct) -> list[common_pb2.Part]:
    """The answer of a job that succeeded: its result's ``text`` when it has one (an
    agent that answers in text), else the whole result as a data part."""
    text = result.fields.get("text")
    if text is not None and text.WhichOneof("kind") == "string_value":
        return [common_pb2.Part(text=text.string_value)] if text.string_value else []
    if not result.fields:
        return []
    data = struct_pb2.Struct()
    data.CopyFrom(result)
    return [common_pb2.Part(data=data)]


def job_failure(job: job_pb2.Job) -> status_pb2.Status | None:
    """The error a job that ended gives its turn (None: it succeeded)."""
    if job.state == job_pb2.JOB_STATE_SUCCEEDED:
        return None
    if job.state == job_pb2.JOB_STATE_CANCELLED:
        return status_pb2.Status(code=code_pb2.CANCELLED, message=f"{job.name} was cancelled")
    if job.HasField("error") and job.error.code != code_pb2.OK:
        return job.error
    return status_pb2.Status(code=code_pb2.UNKNOWN, message=f"{job.name} failed")
