"""Bad input at the edge: clear JSON errors with the right HTTP code, never text/plain."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import jwt
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.core.auth import mint_token
from agentmesh.devstack.stack import DevStack
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


def _json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("code"), int)
    assert body.get("message")
    return body


def test_bad_field_is_400_with_bad_request_violation(http: httpx.Client) -> None:
    body = _json_error(http.get("/v1/agents/Not_A_Valid_Id"), 400)
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_requests = [d for d in body["details"] if d["@type"] == BAD_REQUEST]
    assert bad_requests, body
    violations = bad_requests[0]["fieldViolations"]
    assert violations[0]["field"] == "name"
    assert "Not_A_Valid_Id" in violations[0]["description"]


def test_unknown_agent_is_404_with_resource_info(http: httpx.Client) -> None:
    body = _json_error(http.get("/v1/agents/no-such-agent"), 404)
    types = {d["@type"] for d in body["details"]}
    assert "type.googleapis.com/google.rpc.ResourceInfo" in types


def test_malformed_json_is_400_json(http: httpx.Client) -> None:
    response = http.post(
        "/v1/agents/echo:invoke",
        content=b'{"input": {',
        headers={"content-type": "application/json"},
    )
    _json_error(response, 400)


def test_wrongly_typed_field_is_400_json(http: httpx.Client) -> None:
    response = http.post("/v1/agents/echo:invoke", json={"threadId": {"not": "a string"}})
    _json_error(response, 400)


def test_unknown_query_parameter_is_400_json(http: httpx.Client) -> None:
    _json_error(http.get("/v1/agents", params={"bogus": "1"}), 400)


def test_unknown_json_field_is_ignored_as_documented(http: httpx.Client) -> None:
    """Envoy's transcoder drops unknown JSON fields (docs/adr); the call reaches the
    service, which runs it as if the field were not there."""
    response = http.post(
        "/v1/agents/echo:invoke", json={"noSuchField": 1, "parts": [{"text": "still here"}]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"]["parts"] == [{"text": "still here", "mediaType": ""}]


def test_unknown_path_is_404_json(http: httpx.Client) -> None:
    _json_error(http.get("/v1/no-such-collection"), 404)


def test_no_token_is_401_json(anonymous_http: httpx.Client) -> None:
    body = _json_error(anonymous_http.get("/v1/agents"), 401)
    assert body["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]


def test_no_token_is_unauthenticated_over_grpc(envoy_channel: grpc.Channel) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(envoy_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListAgents(agent_pb2.ListAgentsRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_wrong_signature_is_refused(
    stack: DevStack, anonymous_http: httpx.Client, envoy_channel: grpc.Channel
) -> None:
    forged = mint_token("another-secret-that-is-long-enough-32b", "acme")
    response = anonymous_http.get("/v1/agents", headers={"authorization": f"Bearer {forged}"})
    _json_error(response, 401)
    stub = agent_pb2_grpc.AgentServiceStub(envoy_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListAgents(
            agent_pb2.ListAgentsRequest(),
            metadata=(("authorization", f"Bearer {forged}"),),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_without_tenant_is_refused(stack: DevStack, anonymous_http: httpx.Client) -> None:
    claims = {"iss": "agentmesh", "aud": "agentmesh", "sub": "x", "exp": 4102444800}
    no_tenant = jwt.encode(claims, stack.secret, algorithm="HS256")
    response = anonymous_http.get("/v1/agents", headers={"authorization": f"Bearer {no_tenant}"})
    _json_error(response, 401)


def test_grpc_error_carries_rich_details(
    envoy_channel: grpc.Channel, auth_metadata: tuple[tuple[str, str], ...]
) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(envoy_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetAgent(agent_pb2.GetAgentRequest(name="agents/"), metadata=auth_metadata, timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in status.details)
    assert bad_request.field_violations[0].field == "name"


@pytest.mark.parametrize(
    "body",
    [
        b'{"displayName": "\\ud800"}',  # a lone surrogate escape: not Unicode text
        b'{"displayName": "ok", "metadata": {"k": "\\udc00"}}',
        b'{"displayName": "\xed\xa0\x80"}',  # the same, UTF-8-encoded: not UTF-8
    ],
)
def test_text_that_is_not_unicode_is_400_json(http: httpx.Client, body: bytes) -> None:
    """Whether Envoy's transcoder or the service refuses it, the client gets a JSON 400,
    never a 500."""
    response = http.post("/v1/sessions", content=body, headers={"content-type": "application/json"})
    assert _json_error(response, 400)["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
