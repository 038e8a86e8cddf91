"""Conversations as a web client holds them: JSON over HTTP through the real Envoy, to
the devstack's Conductor, which records the turns in Memory and runs the agents on the
Agent service (both reached through Envoy's internal listener).

A turn is `POST /v1/sessions/{id}:converse`, streamed as newline-delimited JSON by
default or as server-sent events with `accept: text/event-stream` (docs/adr/0023); a
client that lost its stream resumes with `GET /v1/sessions/{id}:watch?afterSequence=N`.
Errors found before the first event are HTTP codes with a JSON `google.rpc.Status`
body, as the transcoder maps them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agentmesh.core.auth import mint_token
from agentmesh.devstack.stack import DevStack

SSE: dict[str, str] = {"accept": "text/event-stream"}
STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)
"""Bound of the gap between two events of a stream (a loaded 2-core box), not of the test."""

Json = dict[str, Any]
EVENT_KINDS = ("routing", "agentEvent", "jobCreated", "jobEvent", "interrupt", "final", "error")


def new_session() -> str:
    return f"chat-{uuid.uuid4().hex[:12]}"


def events_of(response: httpx.Response, *, sse: bool) -> Iterator[Json]:
    """ConverseEvents as they arrive: one JSON object per line, or one per `data:` frame."""
    assert response.status_code == 200, response.read()
    content_type = response.headers["content-type"]
    if not sse:
        assert content_type.startswith("application/json")
        for line in response.iter_lines():
            if line:
                yield json.loads(line)
        return
    assert content_type.startswith("text/event-stream")
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                yield json.loads("\n".join(data))
                data = []
            continue
        field, _, value = line.partition(":")
        assert field == "data", f"unexpected SSE line {line!r}"
        data.append(value.removeprefix(" "))
    assert not data, "the stream ended inside an event"


def converse(http: httpx.Client, session: str, body: Json, *, sse: bool = False) -> list[Json]:
    """Every event of one turn (the stream ends with the turn)."""
    with http.stream(
        "POST",
        f"/v1/sessions/{session}:converse",
        json=body,
        headers=SSE if sse else {},
        timeout=STREAM_TIMEOUT,
    ) as response:
        return list(events_of(response, sse=sse))


def kind(event: Json) -> str:
    (found,) = [k for k in EVENT_KINDS if k in event]
    return found


def kinds(events: list[Json]) -> list[str]:
    return [kind(e) for e in events]


def sequences(events: list[Json]) -> list[int]:
    return [int(e["sequence"]) for e in events]  # int64 is a JSON string


def assert_one_turn(events: list[Json], session: str, end: str = "final") -> None:
    """Routing first, the agent's events, one closing event; one turn id, one session."""
    assert kinds(events)[0] == "routing"
    assert kinds(events)[-1] == end
    assert end not in kinds(events)[:-1]
    assert {e["session"] for e in events} == {f"sessions/{session}"}
    assert len({e["turnId"] for e in events}) == 1


def status_of(response: httpx.Response, http_code: int, grpc_code: int) -> Json:
    """An error as the transcoder maps it: the HTTP code, the gRPC code in a header and
    a JSON `google.rpc.Status` body."""
    assert response.status_code == http_code, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["grpc-status"] == str(grpc_code)
    status: Json = response.json()
    assert status["code"] == grpc_code
    return status


def detail(status: Json, kind_: str) -> Json:
    found = [d for d in status["details"] if d["@type"].endswith(f"google.rpc.{kind_}")]
    assert len(found) == 1, status
    result: Json = found[0]
    return result


def say(text: str, **extra: Any) -> Json:
    return {"agent": "agents/echo", "parts": [{"text": text}], **extra}


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
def test_a_multi_turn_conversation_is_streamed_numbered_and_recorded_in_memory(
    http: httpx.Client, sse: bool
) -> None:
    session = new_session()
    first = converse(http, session, say("hello", createSession=True), sse=sse)
    second = converse(http, session, say("and again"), sse=sse)

    assert_one_turn(first, session)
    assert_one_turn(second, session)
    assert first[0]["turnId"] != second[0]["turnId"]
    # One sequence across turns: 1, 2, ... without gaps.
    assert sequences(first + second) == list(range(1, len(first) + len(second) + 1))
    routing = first[0]["routing"]
    assert routing["strategy"] == "ROUTING_STRATEGY_EXPLICIT"
    assert routing["agent"] == "agents/echo"
    # The agent's own run is relayed, its final included; the turn's final follows.
    assert "agentEvent" in kinds(first)
    agent_finals = [e["agentEvent"]["final"] for e in second if "final" in e.get("agentEvent", {})]
    assert [f["output"]["turns"] for f in agent_finals] == [2]  # the thread went on
    finals = [first[-1]["final"], second[-1]["final"]]
    assert [f["parts"][0]["text"] for f in finals] == ["hello", "and again"]
    assert {f["agent"] for f in finals} == {"agents/echo"}

    # Memory holds every message of both turns, in order, read through Envoy.
    listed = http.get(f"/v1/sessions/{session}/messages")
    assert listed.status_code == 200, listed.text
    messages = listed.json()["messages"]
    assert [(m["role"], m["parts"][0]["text"]) for m in messages] == [
        ("ROLE_USER", "hello"),
        ("ROLE_ASSISTANT", "hello"),
        ("ROLE_USER", "and again"),
        ("ROLE_ASSISTANT", "and again"),
    ]
    assert [m["name"] for m in messages[1::2]] == [f["message"] for f in finals]
    # ... and the routing decision, in the audit trail.
    decision = http.get(f"/v1/{routing['decision']}")
    assert decision.status_code == 200, decision.text
    recorded = decision.json()
    assert recorded["session"] == f"sessions/{session}"
    assert recorded["chosenAction"] == "agents/echo"
    assert recorded["metadata"]["by"] == "conductor"
    assert recorded["metadata"]["turn_id"] == first[0]["turnId"]


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
def test_a_dropped_stream_resumes_with_watch_and_misses_nothing(
    http: httpx.Client, sse: bool
) -> None:
    session = new_session()
    converse(http, session, say("warm up", createSession=True))
    # The client reads the routing decision, then its connection drops.
    with http.stream(
        "POST", f"/v1/sessions/{session}:converse", json=say("dropped"), timeout=STREAM_TIMEOUT
    ) as response:
        seen = next(events_of(response, sse=False))
    assert kind(seen) == "routing"
    last_seen = int(seen["sequence"])

    # The turn ran to its end without the client: the watch after the last sequence
    # seen replays the rest of it, numbered on from there, and stays open for more.
    missed: list[Json] = []
    with http.stream(
        "GET",
        f"/v1/sessions/{session}:watch",
        params={"afterSequence": str(last_seen)},
        headers=SSE if sse else {},
        timeout=STREAM_TIMEOUT,
    ) as watch:
        events = events_of(watch, sse=sse)
        for event in events:
            missed.append(event)
            if kind(event) == "final":
                break
        # A turn taken while the watch is open arrives on it live, in order.
        live_turn = converse(http, session, say("live"))
        live = [next(events) for _ in live_turn]

    assert sequences(missed) == list(range(last_seen + 1, last_seen + 1 + len(missed)))
    assert {e["turnId"] for e in missed} == {seen["turnId"]}
    assert missed[-1]["final"]["parts"][0]["text"] == "dropped"
    assert live == live_turn
    assert sequences(live)[0] == sequences(missed)[-1] + 1
    # The whole history from the start: the same events, the same sequences.
    with http.stream("GET", f"/v1/sessions/{session}:watch", timeout=STREAM_TIMEOUT) as replay:
        history = events_of(replay, sse=False)
        everything = [next(history) for _ in range(sequences(live)[-1])]
    assert sequences(everything) == list(range(1, sequences(live)[-1] + 1))
    assert everything[last_seen - 1] == seen
    assert everything[last_seen:] == missed + live


def test_a_watch_with_nothing_to_send_yet_is_answered_at_once(http: httpx.Client) -> None:
    """The status line and headers come before the first event, so a client knows it
    is connected (no event comes here: the session is idle)."""
    session = new_session()
    latest = sequences(converse(http, session, say("only turn", createSession=True)))[-1]
    headers_timeout = httpx.Timeout(10.0, read=15.0)
    with http.stream(
        "GET",
        f"/v1/sessions/{session}:watch",
        params={"afterSequence": str(latest)},
        timeout=headers_timeout,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/")


def test_watching_beyond_the_latest_event_is_a_400_out_of_range(http: httpx.Client) -> None:
    session = new_session()
    events = converse(http, session, say("one", createSession=True))
    latest = sequences(events)[-1]

    response = http.get(f"/v1/sessions/{session}:watch", params={"afterSequence": latest + 1})
    status = status_of(response, 400, 11)  # Envoy maps OUT_OF_RANGE to 400
    assert detail(status, "ErrorInfo")["reason"] == "OUT_OF_RANGE"
    (violation,) = detail(status, "BadRequest")["fieldViolations"]
    assert violation["field"] == "after_sequence"
    assert str(latest) in status["message"]
    # Its SSE form is the same HTTP error, not an event.
    response = http.get(
        f"/v1/sessions/{session}:watch", params={"afterSequence": latest + 1}, headers=SSE
    )
    status_of(response, 400, 11)


def test_an_interrupt_pauses_the_turn_and_the_next_converse_resumes_it(
    http: httpx.Client,
) -> None:
    session = new_session()
    paused = converse(
        http,
        session,
        {
            "createSession": True,
            "agent": "agents/approval",
            "parts": [{"text": "please refund order 7"}],
            "input": {"action": "refund order 7"},
        },
        sse=True,
    )
    assert_one_turn(paused, session, end="interrupt")
    interrupt = paused[-1]["interrupt"]
    assert interrupt["value"]["answers"] == ["yes", "no"]

    # Another message while the turn waits: 400 FAILED_PRECONDITION, nothing runs.
    refused = http.post(f"/v1/sessions/{session}:converse", json=say("hello?"))
    assert detail(status_of(refused, 400, 9), "ErrorInfo")["reason"] == "TURN_PAUSED"

    resume = {"resume": {"interruptId": interrupt["id"], "answer": "yes"}}
    resumed = converse(http, session, resume, sse=True)
    assert_one_turn(resumed, session)
    assert resumed[0]["turnId"] != paused[0]["turnId"]
    assert sequences(paused + resumed) == list(range(1, len(paused) + len(resumed) + 1))
    assert resumed[0]["routing"]["agent"] == "agents/approval"
    final = resumed[-1]["final"]
    assert final["agent"] == "agents/approval"
    assert final["parts"][0]["text"] == "Approved: refund order 7. Done."
    messages = http.get(f"/v1/sessions/{session}/messages").json()["messages"]
    assert [m["role"] for m in messages] == ["ROLE_USER", "ROLE_ASSISTANT"]
    assert messages[1]["name"] == final["message"]

    # Answered: the same resume again has no paused turn to continue.
    again = http.post(f"/v1/sessions/{session}:converse", json=resume)
    assert detail(status_of(again, 400, 9), "ErrorInfo")["reason"] == "NO_PAUSED_TURN"


def test_another_tenants_session_is_a_404(http: httpx.Client, stack: DevStack) -> None:
    session = new_session()
    converse(http, session, say("mine", createSession=True))
    other = {"authorization": f"Bearer {mint_token(stack.secret, 'globex')}"}

    response = http.post(f"/v1/sessions/{session}:converse", json=say("yours?"), headers=other)
    info = detail(status_of(response, 404, 5), "ErrorInfo")
    assert info["reason"] == "RESOURCE_NOT_FOUND"
    assert info["metadata"]["resource_name"] == f"sessions/{session}"
    response = http.get(f"/v1/sessions/{session}:watch", headers=other)
    status_of(response, 404, 5)
    # Its messages stay the owner's two.
    messages = http.get(f"/v1/sessions/{session}/messages").json()["messages"]
    assert [m["parts"][0]["text"] for m in messages] == ["mine", "mine"]


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
def test_a_retried_request_id_replays_the_same_events(http: httpx.Client, sse: bool) -> None:
    session = new_session()
    request = say("exactly once", createSession=True, requestId=str(uuid.uuid4()))
    first = converse(http, session, request, sse=sse)
    retried = converse(http, session, request, sse=sse)

    assert_one_turn(first, session)
    assert retried == first  # same events, same sequences, same times
    messages = http.get(f"/v1/sessions/{session}/messages").json()["messages"]
    assert len(messages) == 2  # the agent answered once
    # The next turn numbers on from the first one: the replay took no sequence.
    following = converse(http, session, say("next"))
    assert sequences(following)[0] == sequences(first)[-1] + 1
    # The same key for another message: 400, naming the field.
    reused = http.post(
        f"/v1/sessions/{session}:converse", json={**request, "parts": [{"text": "x"}]}
    )
    violations = detail(status_of(reused, 400, 3), "BadRequest")["fieldViolations"]
    assert "request_id" in [v["field"] for v in violations]


def test_the_same_session_id_in_another_tenant_is_a_conversation_of_its_own(
    http: httpx.Client, stack: DevStack
) -> None:
    session = new_session()
    mine = converse(http, session, say("mine", createSession=True))
    other = {"authorization": f"Bearer {mint_token(stack.secret, 'initech')}"}
    with http.stream(
        "POST",
        f"/v1/sessions/{session}:converse",
        json=say("theirs", createSession=True),
        headers=other,
        timeout=STREAM_TIMEOUT,
    ) as response:
        theirs = list(events_of(response, sse=False))

    # Numbered from 1 again: nothing of the first tenant's conversation shows through.
    assert sequences(theirs) == list(range(1, len(theirs) + 1))
    assert theirs[-1]["final"]["parts"][0]["text"] == "theirs"
    with http.stream(
        "GET", f"/v1/sessions/{session}:watch", headers=other, timeout=STREAM_TIMEOUT
    ) as response:
        events = events_of(response, sse=False)
        assert [next(events) for _ in theirs] == theirs
    with http.stream("GET", f"/v1/sessions/{session}:watch", timeout=STREAM_TIMEOUT) as response:
        events = events_of(response, sse=False)
        assert [next(events) for _ in mine] == mine
    messages = http.get(f"/v1/sessions/{session}/messages").json()["messages"]
    assert [m["parts"][0]["text"] for m in messages] == ["mine", "mine"]


def test_bad_requests_are_400s_naming_their_fields(http: httpx.Client) -> None:
    session = new_session()
    converse(http, session, say("hi", createSession=True))

    both = http.post(
        f"/v1/sessions/{session}:converse",
        json={**say("hi"), "resume": {"interruptId": "x", "answer": "yes"}},
    )
    fields = [v["field"] for v in detail(status_of(both, 400, 3), "BadRequest")["fieldViolations"]]
    assert {"parts", "agent"} <= set(fields)
    bad_name = http.post(f"/v1/sessions/{session}:converse", json=say("hi", agent="robots/x"))
    fields = [
        v["field"] for v in detail(status_of(bad_name, 400, 3), "BadRequest")["fieldViolations"]
    ]
    assert fields == ["agent"]
    negative = http.get(f"/v1/sessions/{session}:watch", params={"afterSequence": "-1"})
    fields = [
        v["field"] for v in detail(status_of(negative, 400, 3), "BadRequest")["fieldViolations"]
    ]
    assert fields == ["after_sequence"]
    # An agent the registry does not have: 404 naming it.
    nobody = http.post(f"/v1/sessions/{session}:converse", json=say("hi", agent="agents/nobody"))
    info = detail(status_of(nobody, 404, 5), "ErrorInfo")
    assert info["metadata"]["resource_name"] == "agents/nobody"
