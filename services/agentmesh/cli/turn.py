"""Following one conversation turn to its end, across dropped streams.

A turn starts with Converse and ends with its ``final``, ``interrupt`` or ``error``
event. When the stream drops before that (Envoy or the Conductor restarts, the network
drops, the stream's deadline passes), the turn goes on without us: every event is
stored with the session's next sequence number. So the follower reopens:

- before any event arrived, Converse again with the same ``request_id``: the Conductor
  replays the turn (or follows it live) instead of running it twice;
- after that, WatchConversation after the last sequence seen, keeping only the events
  of this turn.

No event is shown twice or lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

import grpc

from agentmesh.cli.errors import CliError, code_of
from agentmesh.cli.watch import MAX_FAILED_RESUMES, RESUMABLE_CODES, backoff_s
from agentmesh.v1 import conductor_pb2

ENDINGS: Final = frozenset({"final", "interrupt", "error"})
"""The kinds of ConverseEvent that end a turn."""


def follow_turn(
    open_converse: Callable[[], Iterable[conductor_pb2.ConverseEvent]],
    open_watch: Callable[[int], Iterable[conductor_pb2.ConverseEvent]],
    on_event: Callable[[conductor_pb2.ConverseEvent], None],
    on_resume: Callable[[int, str], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_failed_resumes: int = MAX_FAILED_RESUMES,
) -> conductor_pb2.ConverseEvent:
    """Streams a turn's events to ``on_event``; returns the event that ended it.

    ``open_converse()`` sends the turn's Converse (always with the same request id);
    ``open_watch(after_sequence)`` opens WatchConversation. A stream that fails with a
    code in RESUMABLE_CODES, or ends before the turn did, is reopened with
    ``on_resume(after_sequence, why)`` told first, after a growing pause. Any other
    error is raised (before the first event that is how the Conductor refuses a turn);
    so is the last one after ``max_failed_resumes`` reopenings in a row brought
    nothing (a stream that reached its own deadline is renewed and not counted).
    """
    after = 0
    turn_id = ""
    failures = 0
    while True:
        brought_events = False
        renewal = False
        try:
            stream = open_watch(after) if turn_id else open_converse()
            for event in stream:
                if event.sequence <= after:
                    continue  # already shown
                if turn_id and event.turn_id != turn_id:
                    after = event.sequence  # another turn of the session (another client)
                    continue
                turn_id = event.turn_id
                after = event.sequence
                brought_events = True
                on_event(event)
                if event.WhichOneof("event") in ENDINGS:
                    return event
            why = "the stream ended before the turn did"
            last_error: Exception = CliError(f"conversation stopped: {why}")
        except grpc.RpcError as error:
            if code_of(error) not in RESUMABLE_CODES:
                raise
            why = code_of(error).name
            last_error = error
            renewal = code_of(error) == grpc.StatusCode.DEADLINE_EXCEEDED
        if brought_events:
            failures = 0
        elif not renewal:
            failures += 1
        if failures > max_failed_resumes:
            raise last_error
        on_resume(after, why)
        sleep(backoff_s(failures))
