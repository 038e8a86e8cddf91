"""`chat` follows a turn across dropped streams: before the first event it repeats
Converse (same request id, so the Conductor replays), after it watches the conversation
from the last sequence seen; no event is shown twice, other turns are left out, and it
gives up only on errors that say so or after bounded failed reconnections. A streamed
answer is written token by token and not printed again by the turn's final event."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc
import pytest

from agentmesh.cli.chat import Printer, answer_value
from agentmesh.cli.errors import CliError
from agentmesh.cli.output import Output
from agentmesh.cli.turn import follow_turn
from agentmesh.v1 import agent_pb2, common_pb2, conductor_pb2

Item = conductor_pb2.ConverseEvent | grpc.StatusCode


class StreamError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a failed gRPC stream raises: an RpcError that is also a Call."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "dropped"


def routing(sequence: int, turn: str = "t1") -> conductor_pb2.ConverseEvent:
    return conductor_pb2.ConverseEvent(
        sequence=sequence,
        turn_id=turn,
        routing=conductor_pb2.RoutingDecision(agent="agents/echo"),
    )


def delta(sequence: int, text: str, turn: str = "t1") -> conductor_pb2.ConverseEvent:
    return conductor_pb2.ConverseEvent(
        sequence=sequence,
        turn_id=turn,
        agent_event=agent_pb2.AgentEvent(
            agent="agents/echo", message_delta=agent_pb2.MessageDelta(text=text)
        ),
    )


def final(sequence: int, turn: str = "t1") -> conductor_pb2.ConverseEvent:
    return conductor_pb2.ConverseEvent(
        sequence=sequence,
        turn_id=turn,
        final=conductor_pb2.FinalMessage(agent="agents/echo"),
    )


def play(script: list[Item]) -> Iterator[conductor_pb2.ConverseEvent]:
    for item in script:
        if isinstance(item, grpc.StatusCode):
            raise StreamError(item)
        yield item


class Opened:
    """Scripted streams, in the order they are opened, and what was opened."""

    def __init__(self, *scripts: list[Item]) -> None:
        self.scripts = list(scripts)
        self.calls: list[str] = []

    def converse(self) -> Iterable[conductor_pb2.ConverseEvent]:
        self.calls.append("converse")
        return play(self.scripts.pop(0))

    def watch(self, after_sequence: int) -> Iterable[conductor_pb2.ConverseEvent]:
        self.calls.append(f"watch {after_sequence}")
        return play(self.scripts.pop(0))


def run(
    opened: Opened, max_failed_resumes: int = 8
) -> tuple[conductor_pb2.ConverseEvent, list[int], list[str]]:
    seen: list[int] = []
    resumes: list[str] = []
    last = follow_turn(
        opened.converse,
        opened.watch,
        lambda e: seen.append(e.sequence),
        lambda after, why: resumes.append(f"{after}:{why}"),
        sleep=lambda _s: None,
        max_failed_resumes=max_failed_resumes,
    )
    return last, seen, resumes


def test_a_stream_dropped_mid_turn_resumes_by_watching_after_the_last_event_seen() -> None:
    opened = Opened(
        [routing(5), delta(6, "hel"), grpc.StatusCode.UNAVAILABLE],
        [delta(6, "hel"), delta(7, "lo"), final(8)],
    )
    last, seen, resumes = run(opened)
    assert opened.calls == ["converse", "watch 6"]
    assert seen == [5, 6, 7, 8]  # the overlap (6) is not shown twice
    assert resumes == ["6:UNAVAILABLE"]
    assert last.WhichOneof("event") == "final"


def test_a_drop_before_the_first_event_repeats_converse_which_replays_the_turn() -> None:
    opened = Opened([grpc.StatusCode.UNAVAILABLE], [routing(1), final(2)])
    last, seen, resumes = run(opened)
    assert opened.calls == ["converse", "converse"]
    assert seen == [1, 2]
    assert resumes == ["0:UNAVAILABLE"]
    assert last.sequence == 2


def test_events_of_other_turns_in_the_watch_are_left_out() -> None:
    opened = Opened(
        [routing(3)],  # ended cleanly before the turn did
        [delta(4, "a"), routing(5, turn="t2"), final(6, turn="t2"), final(7)],
    )
    last, seen, resumes = run(opened)
    assert seen == [3, 4, 7]
    assert resumes == ["3:the stream ended before the turn did"]
    assert last.turn_id == "t1"


def test_a_refused_turn_is_raised_at_once() -> None:
    opened = Opened([grpc.StatusCode.FAILED_PRECONDITION])
    with pytest.raises(grpc.RpcError) as caught:
        run(opened)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert opened.calls == ["converse"]


def test_reconnections_that_bring_nothing_are_bounded() -> None:
    unavailable: list[Item] = [grpc.StatusCode.UNAVAILABLE]
    opened = Opened([routing(1)], *([unavailable] * 3))
    with pytest.raises(grpc.RpcError):
        run(opened, max_failed_resumes=2)
    assert opened.calls == ["converse", "watch 1", "watch 1", "watch 1"]


def test_clean_ends_without_events_also_give_up() -> None:
    opened = Opened([], [], [])
    with pytest.raises(CliError, match="ended before the turn did"):
        run(opened, max_failed_resumes=2)


def test_an_answer_is_json_when_it_parses_and_text_otherwise() -> None:
    assert answer_value("yes").string_value == "yes"
    assert answer_value("true").bool_value is True
    assert answer_value('{"approved": false}').struct_value["approved"] is False
    assert common_pb2.ResumeInput(answer=answer_value("42")).answer.number_value == 42


def test_a_streamed_answer_is_written_as_it_comes_and_not_repeated_at_the_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    printer = Printer(Output(json_lines=False), verbose=False)
    for event in (routing(1), delta(2, "hel"), delta(3, "lo"), final(4)):
        printer.event(event)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["→ agents/echo (UNSPECIFIED)", "agents/echo: hello"]
