"""Background turns: which run as a Job, one job per turn, and what an ended job
answers."""

from __future__ import annotations

from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from agentmesh.conductor.domain.background import (
    JOB_ENDS,
    answer_parts,
    job_failure,
    job_request_id,
    runs_in_background,
)
from agentmesh.v1 import job_pb2


def _struct(**values: str | int) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def test_a_turn_runs_as_a_job_when_asked_or_when_the_agent_is_long_running() -> None:
    assert runs_in_background(True, False)
    assert runs_in_background(False, True)
    assert not runs_in_background(False, False)


def test_one_job_per_turn() -> None:
    assert job_request_id("t1") == job_request_id("t1")
    assert job_request_id("t1") != job_request_id("t2")


def test_only_terminal_states_end_the_turn() -> None:
    assert job_pb2.JOB_STATE_SUCCEEDED in JOB_ENDS
    assert job_pb2.JOB_STATE_INPUT_REQUIRED not in JOB_ENDS
    assert job_pb2.JOB_STATE_CANCELLING not in JOB_ENDS


def test_a_text_result_answers_in_text_and_any_other_as_data() -> None:
    assert [p.text for p in answer_parts(_struct(text="hi"))] == ["hi"]
    assert [p.text for p in answer_parts(_struct(text="hi", turns=2))] == ["hi"]
    assert answer_parts(_struct(text="")) == []
    assert answer_parts(struct_pb2.Struct()) == []
    (data,) = answer_parts(_struct(city="Lagos", population=1))
    assert data.data["city"] == "Lagos"


def test_a_failed_or_cancelled_job_fails_the_turn() -> None:
    assert job_failure(job_pb2.Job(name="jobs/j", state=job_pb2.JOB_STATE_SUCCEEDED)) is None
    cancelled = job_failure(job_pb2.Job(name="jobs/j", state=job_pb2.JOB_STATE_CANCELLED))
    assert cancelled is not None
    assert cancelled.code == code_pb2.CANCELLED
    error = status_pb2.Status(code=code_pb2.INTERNAL, message="boom")
    assert job_failure(job_pb2.Job(state=job_pb2.JOB_STATE_FAILED, error=error)) == error
    bare = job_failure(job_pb2.Job(name="jobs/j", state=job_pb2.JOB_STATE_FAILED))
    assert bare is not None
    assert bare.code == code_pb2.UNKNOWN
