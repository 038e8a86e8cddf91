"""The Job API as a web client uses it: JSON over HTTP through the real Envoy, jobs run
by the devstack's own Dramatiq worker (the one `make dev` starts).

A job is created with `POST /v1/jobs`, run by the worker (which calls the Agent service
through Envoy's internal listener as the job's tenant, with a token it signs itself),
and watched with `GET /v1/jobs/{id}:watch`, newline-delimited JSON by default or
server-sent events with `accept: text/event-stream`. Errors are HTTP codes with a JSON
`google.rpc.Status` body, as the transcoder maps them.
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
"""A watch is quiet while the job waits for the worker: bound the gap between events
generously (a loaded 2-core box), not the test."""

Json = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create(http: httpx.Client, job_id: str, job: Json) -> Json:
    response = http.post("/v1/jobs", params={"jobId": job_id}, json=job)
    assert response.status_code == 200, response.text
    created: Json = response.json()
    assert created["name"] == f"jobs/{job_id}"
    return created


def events_of(response: httpx.Response, *, sse: bool) -> Iterator[Json]:
    """JobEvents as they arrive: one JSON object per line, or one per `data:` frame."""
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


def watch(http: httpx.Client, job_id: str, *, after: int = 0, sse: bool = False) -> list[Json]:
    """Every event of a watch, which ends by itself when the job ends."""
    params = {"afterSequence": str(after)} if after else {}
    with http.stream(
        "GET",
        f"/v1/jobs/{job_id}:watch",
        params=params,
        headers=SSE if sse else {},
        timeout=STREAM_TIMEOUT,
    ) as response:
        return list(events_of(response, sse=sse))


def watch_until(http: httpx.Client, job_id: str, state: str) -> Json:
    """Reads a watch up to the first event in ``state`` and hangs up (the job need not
    end: a job waiting for input keeps its watch open)."""
    seen: list[str] = []
    with http.stream("GET", f"/v1/jobs/{job_id}:watch", timeout=STREAM_TIMEOUT) as response:
        for event in events_of(response, sse=False):
            seen.append(event["job"]["state"])
            if event["job"]["state"] == state:
                return event
    raise AssertionError(f"the watch of {job_id} ended without {state}: {seen}")


def assert_ordered(events: list[Json]) -> None:
    """Sequences increase; each event carries the job as of that change."""
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == sorted(set(sequences)), sequences
    assert all(e["job"]["sequence"] == e["sequence"] for e in events)


def status_of(response: httpx.Response, http_code: int, grpc_code: int) -> Json:
    """An error as the transcoder maps it: the HTTP code, the gRPC code in a header and
    a JSON `google.rpc.Status` body."""
    assert response.status_code == http_code, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["grpc-status"] == str(grpc_code)
    status: Json = response.json()
    assert status["code"] == grpc_code
    return status


def detail(status: Json, kind: str) -> Json:
    found: list[Json] = [d for d in status["details"] if d["@type"].endswith(f"google.rpc.{kind}")]
    assert len(found) == 1, status
    return found[0]


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
def test_a_job_runs_on_the_worker_and_is_watched_to_succeeded(
    http: httpx.Client, sse: bool
) -> None:
    job_id = new_id("report")
    created = create(
        http,
        job_id,
        {"agent": "agents/echo", "parts": [{"text": "summarise the quarter"}]},
    )
    assert created["state"] == "JOB_STATE_PENDING"
    assert created["attempt"] == 1
    assert created["sequence"] == "1"  # int64 is a JSON string

    events = watch(http, job_id, sse=sse)
    assert_ordered(events)
    final = events[-1]["job"]
    assert final["state"] == "JOB_STATE_SUCCEEDED"
    assert final["result"]["text"] == "summarise the quarter"
    assert final["progress"]["percent"] == 100
    # Only the last event is terminal: the watch ends with the job.
    assert all(e["job"]["state"] != "JOB_STATE_SUCCEEDED" for e in events[:-1])

    # Resuming after the first change replays the rest of the history, in order.
    replayed = watch(http, job_id, after=1, sse=sse)
    assert_ordered(replayed)
    assert [int(e["sequence"]) for e in replayed] == list(range(2, int(final["sequence"]) + 1))
    assert replayed[0]["job"]["state"] == "JOB_STATE_RUNNING"
    assert replayed[-1] == events[-1]

    got = http.get(f"/v1/jobs/{job_id}")
    assert got.status_code == 200, got.text
    assert got.json() == final


def test_list_filters_by_label_and_state(http: httpx.Client) -> None:
    batch = uuid.uuid4().hex[:12]
    ids = [new_id("batch") for _ in range(2)]
    for job_id in ids:
        create(
            http,
            job_id,
            {"agent": "agents/echo", "parts": [{"text": job_id}], "labels": {"batch": batch}},
        )
    for job_id in ids:
        assert watch(http, job_id)[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"

    def names(filter_: str, **params: str) -> tuple[list[str], str]:
        response = http.get("/v1/jobs", params={"filter": filter_, **params})
        assert response.status_code == 200, response.text
        body = response.json()
        return [j["name"] for j in body.get("jobs", [])], str(body.get("nextPageToken", ""))

    done = f'labels.batch = "{batch}" AND state = SUCCEEDED'
    listed, token = names(done)
    assert sorted(listed) == sorted(f"jobs/{i}" for i in ids)
    assert token == ""
    # The dead-letter view: jobs that failed their last attempt. None of these did.
    assert names(f'labels.batch = "{batch}" AND state = FAILED') == ([], "")
    # Newest first by default; one page at a time with the same filter.
    first, token = names(done, pageSize="1")
    assert first == [f"jobs/{ids[1]}"]
    assert token
    assert names(done, pageSize="1", pageToken=token) == ([f"jobs/{ids[0]}"], "")


def test_cancelling_a_finished_job_is_a_400_failed_precondition(http: httpx.Client) -> None:
    job_id = new_id("done")
    create(http, job_id, {"agent": "agents/echo", "parts": [{"text": "quick"}]})
    assert watch(http, job_id)[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"

    response = http.post(f"/v1/jobs/{job_id}:cancel", json={"reason": "too late"})
    status = status_of(response, 400, 9)  # Envoy maps FAILED_PRECONDITION to 400
    assert detail(status, "ErrorInfo")["reason"] == "JOB_SUCCEEDED"
    (violation,) = detail(status, "PreconditionFailure")["violations"]
    assert violation["type"] == "STATE"
    assert violation["subject"] == f"jobs/{job_id}"
    # Nothing changed.
    assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "JOB_STATE_SUCCEEDED"


def test_a_delayed_job_cancels_at_once_and_a_retry_runs_it(http: httpx.Client) -> None:
    job_id = new_id("later")
    created = create(
        http,
        job_id,
        {"agent": "agents/echo", "parts": [{"text": "later"}], "startDelay": "3600s"},
    )
    assert created["state"] == "JOB_STATE_PENDING"
    assert created["scheduleTime"] > created["createTime"]

    cancelled = http.post(f"/v1/jobs/{job_id}:cancel", json={"reason": "not needed"})
    assert cancelled.status_code == 200, cancelled.text
    job = cancelled.json()
    # No worker held it, so it is CANCELLED at once (never CANCELLING).
    assert job["state"] == "JOB_STATE_CANCELLED"
    assert "not needed" in job["error"]["message"]
    again = http.post(f"/v1/jobs/{job_id}:cancel", json={})
    assert again.status_code == 200, again.text
    assert again.json() == job  # idempotent: unchanged

    retried = http.post(f"/v1/jobs/{job_id}:retry", json={})
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] == "JOB_STATE_PENDING"
    assert retried.json()["attempt"] == 2
    final = watch(http, job_id)[-1]["job"]
    assert final["state"] == "JOB_STATE_SUCCEEDED"
    assert final["attempt"] == 2


def test_another_tenants_job_is_404(
    stack: DevStack, http: httpx.Client, anonymous_http: httpx.Client
) -> None:
    job_id = new_id("private")
    create(http, job_id, {"agent": "agents/echo", "parts": [{"text": "mine"}]})
    other = {"authorization": f"Bearer {mint_token(stack.secret, 'globex')}"}

    got = anonymous_http.get(f"/v1/jobs/{job_id}", headers=other)
    status = status_of(got, 404, 5)
    assert detail(status, "ResourceInfo")["resourceName"] == f"jobs/{job_id}"
    cancel = anonymous_http.post(f"/v1/jobs/{job_id}:cancel", json={}, headers=other)
    status_of(cancel, 404, 5)
    with anonymous_http.stream("GET", f"/v1/jobs/{job_id}:watch", headers=other) as response:
        response.read()
    status_of(response, 404, 5)
    listed = anonymous_http.get(
        "/v1/jobs", params={"filter": 'agent = "agents/echo"'}, headers=other
    )
    assert listed.status_code == 200, listed.text
    assert f"jobs/{job_id}" not in [j["name"] for j in listed.json().get("jobs", [])]


@pytest.mark.parametrize(
    "filter_",
    ["state = DONE", 'owner = "me"', 'labels.team = "a" OR state = RUNNING'],
    ids=["bad-state", "unknown-field", "or"],
)
def test_a_bad_filter_is_400_with_a_field_violation(http: httpx.Client, filter_: str) -> None:
    response = http.get("/v1/jobs", params={"filter": filter_})
    status = status_of(response, 400, 3)
    violations = detail(status, "BadRequest")["fieldViolations"]
    assert [v["field"] for v in violations] == ["filter"]
    assert violations[0]["description"]


def test_an_approval_job_waits_for_input_and_is_resumed_as_json(http: httpx.Client) -> None:
    job_id = new_id("refund")
    create(
        http,
        job_id,
        {
            "agent": "agents/approval",
            "input": {"action": "refund order 7"},
            "priority": "JOB_PRIORITY_HIGH",
        },
    )
    waiting = watch_until(http, job_id, "JOB_STATE_INPUT_REQUIRED")
    interrupt = waiting["job"]["interrupt"]
    assert interrupt["value"]["answers"] == ["yes", "no"]
    assert interrupt["agent"] == "agents/approval"

    wrong = http.post(
        f"/v1/jobs/{job_id}:resume",
        json={"resume": {"interruptId": "not-the-pending-one", "answer": "yes"}},
    )
    assert detail(status_of(wrong, 400, 9), "ErrorInfo")["reason"] == "INTERRUPT_MISMATCH"
    missing = http.post(f"/v1/jobs/{job_id}:resume", json={})
    assert detail(status_of(missing, 400, 3), "BadRequest")["fieldViolations"]

    resumed = http.post(
        f"/v1/jobs/{job_id}:resume",
        json={"resume": {"interruptId": interrupt["id"], "answer": "yes"}},
    )
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["state"] == "JOB_STATE_RUNNING"

    # Watching again from the interrupt misses none of the changes after it.
    events = watch(http, job_id, after=int(waiting["sequence"]), sse=True)
    assert_ordered(events)
    assert int(events[0]["sequence"]) == int(waiting["sequence"]) + 1
    final = events[-1]["job"]
    assert final["state"] == "JOB_STATE_SUCCEEDED"
    assert final["result"] == {"action": "refund order 7", "approved": True}
    assert final["priority"] == "JOB_PRIORITY_HIGH"
