"""Memory through Envoy as JSON: what a web client sees."""

from __future__ import annotations

import uuid

import httpx

from agentmesh.core.auth import mint_token
from agentmesh.devstack.stack import DevStack


def test_session_and_messages_round_trip_as_json(http: httpx.Client) -> None:
    session_id = f"s-{uuid.uuid4().hex[:12]}"
    created = http.post(
        "/v1/sessions",
        params={"sessionId": session_id},
        json={"displayName": "Trip planning", "labels": {"channel": "web"}},
    )
    assert created.status_code == 200, created.text
    session = created.json()
    assert session["name"] == f"sessions/{session_id}"
    assert session["labels"] == {"channel": "web"}

    appended = http.post(
        f"/v1/sessions/{session_id}/messages:append",
        json={"messages": [{"role": "ROLE_USER", "parts": [{"text": "hello"}]}]},
    )
    assert appended.status_code == 200, appended.text
    assert appended.json()["messages"][0]["sequence"] == "1"  # int64 is a JSON string

    listed = http.get(f"/v1/sessions/{session_id}/messages")
    assert [m["parts"][0]["text"] for m in listed.json()["messages"]] == ["hello"]


def test_another_tenant_gets_404_not_403(
    stack: DevStack, http: httpx.Client, anonymous_http: httpx.Client
) -> None:
    session_id = f"s-{uuid.uuid4().hex[:12]}"
    assert http.post("/v1/sessions", params={"sessionId": session_id}, json={}).status_code == 200
    other = mint_token(stack.secret, "globex")
    response = anonymous_http.get(
        f"/v1/sessions/{session_id}", headers={"authorization": f"Bearer {other}"}
    )
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")


def test_bad_session_name_is_400_with_field_violation(http: httpx.Client) -> None:
    response = http.get("/v1/sessions/Not_Valid")
    assert response.status_code == 400
    details = response.json()["details"]
    fields = [
        v["field"]
        for d in details
        if d["@type"].endswith("google.rpc.BadRequest")
        for v in d["fieldViolations"]
    ]
    assert fields == ["name"]
