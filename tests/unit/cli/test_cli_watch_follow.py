"""`jobs watch` follows a job across dropped streams: it reopens WatchJob after the last
change it saw, shows no change twice, and gives up only on errors that say so."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc
import pytest

from agentmesh.cli.errors import CliError
from agentmesh.cli.watch import follow
from agentmesh.v1 import job_pb2


class StreamError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a failed gRPC stream raises: an RpcError that is also a Call."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "dropped"


def event(
    sequence: int, state: job_pb2.JobState.ValueType = job_pb2.JOB_STATE_RUNNING
) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(
        sequence=sequence,
        job=job_pb2.Job(name="jobs/j", state=state, progress=job_pb2.Progress(percent=sequence)),
    )


class Streams:
    """Scripted WatchJob streams: each opening plays the next script."""

    def __init__(self, *scripts: list[job_pb2.JobEvent | grpc.StatusCode]) -> None:
        self.scripts = list(scripts)
        self.opened_after: list[int] = []

    def __call__(self, after_sequence: int) -> Iterable[job_pb2.JobEvent]:
        self.opened_after.append(after_sequence)
        script = self.scripts.pop(0)

        def play() -> Iterator[job_pb2.JobEvent]:
            for item in script:
                if isinstance(item, grpc.StatusCode):
                    raise StreamError(item)
                yield item

        return play()


def run(streams: Streams, max_failed_resumes: int = 8) -> tuple[job_pb2.Job, list[int], list[str]]:
    seen: list[int] = []
    resumes: list[str] = []
    final = follow(
        streams,
        lambda e: seen.append(e.sequence),
        lambda after, why: resumes.append(f"{after}:{why}"),
        sleep=lambda _s: None,
        max_failed_resumes=max_failed_resumes,
    )
    return final, seen, resumes


def test_a_dropped_stream_is_reopened_after_the_last_change_seen() -> None:
    streams = Streams(
        [event(1), event(2), grpc.StatusCode.UNAVAILABLE],
        [event(3), event(4, job_pb2.JOB_STATE_SUCCEEDED)],
    )
    final, seen, resumes = run(streams)
    assert streams.opened_after == [0, 2]
    assert seen == [1, 2, 3, 4]
    assert resumes == ["2:UNAVAILABLE"]
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED


def test_a_replay_that_overlaps_shows_no_change_twice() -> None:
    streams = Streams(
        [event(1), event(2)],  # ended cleanly before the job did
        [event(2), event(3, job_pb2.JOB_STATE_CANCELLED)],
    )
    final, seen, resumes = run(streams)
    assert seen == [1, 2, 3]
    assert resumes == ["2:the stream ended before the job did"]
    assert final.state == job_pb2.JOB_STATE_CANCELLED


def test_a_stream_past_its_deadline_is_renewed_without_counting_as_a_failure() -> None:
    deadlines: list[job_pb2.JobEvent | grpc.StatusCode] = [grpc.StatusCode.DEADLINE_EXCEEDED]
    streams = Streams(
        [event(1), grpc.StatusCode.DEADLINE_EXCEEDED],
        *([deadlines] * 5),
        [event(2, job_pb2.JOB_STATE_FAILED)],
    )
    final, seen, _ = run(streams, max_failed_resumes=1)
    assert streams.opened_after == [0, 1, 1, 1, 1, 1, 1]
    assert seen == [1, 2]
    assert final.state == job_pb2.JOB_STATE_FAILED


def test_an_error_about_the_request_is_not_retried() -> None:
    streams = Streams([grpc.StatusCode.NOT_FOUND])
    with pytest.raises(grpc.RpcError) as caught:
        run(streams)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert streams.opened_after == [0]


def test_the_watch_gives_up_after_resumes_that_bring_nothing() -> None:
    unavailable: list[job_pb2.JobEvent | grpc.StatusCode] = [grpc.StatusCode.UNAVAILABLE]
    streams = Streams([event(1)], *([unavailable] * 3))
    with pytest.raises(grpc.RpcError):
        run(streams, max_failed_resumes=2)
    assert streams.opened_after == [0, 1, 1, 1]


def test_clean_ends_without_changes_also_give_up() -> None:
    streams = Streams([], [], [])
    with pytest.raises(CliError, match="ended before the job did"):
        run(streams, max_failed_resumes=2)
