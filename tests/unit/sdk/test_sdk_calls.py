"""The SDK's pure parts: what it exports, what every call carries, which creates it keys."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

import agentmesh.sdkgen.agentmesh.v1 as generated
from agentmesh import sdk
from agentmesh.cli.mesh import DEFAULT_ADDRESS as CLI_DEFAULT_ADDRESS
from agentmesh.core.retries import idempotent_methods, keyed_methods, route
from agentmesh.sdk._async import _deadline
from agentmesh.sdk._calls import (
    KEYED_ROUTES,
    RETRIED_ROUTES,
    CallOptions,
    call_metadata,
    resolve_address,
    resolve_token,
    split_address,
    with_request_id,
)
from agentmesh.sdk._sync import _CallDetails, _Calls

CREATE_SESSION = "/agentmesh.v1.MemoryService/CreateSession"
UPDATE_SESSION = "/agentmesh.v1.MemoryService/UpdateSession"


def test_every_generated_message_enum_and_stub_is_exported_as_itself() -> None:
    public = set(generated.__all__)
    assert {"MemoryServiceStub", "MemoryServiceAsyncStub", "CreateSessionRequest"} <= public
    assert public <= set(sdk.__all__)
    for name in public:
        assert getattr(sdk, name) is getattr(generated, name), name


def test_every_exported_name_exists() -> None:
    for name in sdk.__all__:
        assert hasattr(sdk, name), name
    assert len(set(sdk.__all__)) == len(sdk.__all__)


def test_a_call_carries_the_token_and_a_fresh_request_id() -> None:
    options = CallOptions(token="t0k")
    first, second = dict(call_metadata(options)), dict(call_metadata(options))
    assert first["authorization"] == "Bearer t0k"
    assert uuid.UUID(first["x-request-id"]).version == 4
    assert first["x-request-id"] != second["x-request-id"]


def test_a_request_id_given_by_the_call_or_the_client_is_kept() -> None:
    options = CallOptions(token="t0k", request_id="client-id")
    assert dict(call_metadata(options))["x-request-id"] == "client-id"
    pairs = call_metadata(options, [("X-Request-Id", "call-id")])
    assert [value for key, value in pairs if key == "x-request-id"] == ["call-id"]


def test_the_calls_metadata_replaces_the_clients_for_the_same_key() -> None:
    options = CallOptions(token="t0k", metadata=(("x-tag", "client"),))
    given: dict[str, str | bytes] = {"authorization": "Bearer other", "x-tag": b"call"}
    pairs = call_metadata(options, given)
    assert [value for key, value in pairs if key == "authorization"] == ["Bearer other"]
    assert [value for key, value in pairs if key == "x-tag"] == ["call"]


def test_no_token_sends_no_authorization() -> None:
    assert "authorization" not in dict(call_metadata(CallOptions(token=None)))
    assert "authorization" not in dict(call_metadata(CallOptions(token="")))


def test_options_change_only_what_is_given() -> None:
    options = CallOptions(token="t0k", timeout=5.0, metadata=(("a", "1"),))
    changed = options.replace(stream_timeout=2.0, metadata=[("b", "2")])
    assert changed == CallOptions(
        token="t0k", timeout=5.0, stream_timeout=2.0, metadata=(("a", "1"), ("b", "2"))
    )
    assert options.replace(timeout=None).timeout is None
    assert changed.timeout_for(streaming=True) == 2.0
    assert changed.timeout_for(streaming=False) == 5.0


def test_a_keyed_create_gets_a_request_id_on_a_copy() -> None:
    request = sdk.CreateSessionRequest(session=sdk.Session(display_name="x"))
    keyed = with_request_id(CREATE_SESSION, request, new_id=lambda: "rid-1")
    assert keyed.request_id == "rid-1"
    assert request.request_id == ""  # sending it again is another create
    assert keyed.session is request.session


def test_a_request_id_the_caller_set_is_kept_and_other_methods_are_untouched() -> None:
    request = sdk.CreateSessionRequest(request_id="mine")
    assert with_request_id(CREATE_SESSION, request) is request
    update = sdk.UpdateSessionRequest()
    assert with_request_id(UPDATE_SESSION, update) is update


def test_retried_routes_are_the_contracts_idempotent_methods_and_keyed_creates() -> None:
    assert {route(m) for m in idempotent_methods()} | KEYED_ROUTES == RETRIED_ROUTES
    assert {route(m) for m in keyed_methods()} == KEYED_ROUTES
    assert CREATE_SESSION in RETRIED_ROUTES
    assert UPDATE_SESSION not in RETRIED_ROUTES


def test_address_and_token_come_from_the_clis_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENTMESH_ADDRESS", raising=False)
    monkeypatch.delenv("AGENTMESH_TOKEN", raising=False)
    assert resolve_address(None) == CLI_DEFAULT_ADDRESS == sdk.DEFAULT_ADDRESS
    assert resolve_token(None) is None
    monkeypatch.setenv("AGENTMESH_ADDRESS", "mesh.example:443")
    monkeypatch.setenv("AGENTMESH_TOKEN", "from-env")
    assert resolve_address(None) == "mesh.example:443"
    assert resolve_address("other:1") == "other:1"
    assert resolve_token(None) == "from-env"
    assert resolve_token("given") == "given"
    assert resolve_token("") is None  # explicitly none


def test_addresses_split_into_host_and_port() -> None:
    assert split_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_address("[::1]:50051") == ("::1", 50051)
    with pytest.raises(ValueError, match="host:port"):
        split_address("localhost")


def test_importing_the_sdk_loads_no_service_runtime() -> None:
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", "import sys, agentmesh.sdk; print(' '.join(sys.modules))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    )
    assert {"agentmesh.sdkgen.agentmesh.v1", "grpc", "grpclib"} <= loaded
    heavy = {m for m in loaded if m.split(".")[0] in {"redis", "opentelemetry", "asyncpg"}}
    runtime = {m for m in loaded if m.startswith("agentmesh.core.")} - {"agentmesh.core.retries"}
    assert not heavy
    assert not runtime


def test_the_sync_channel_gives_each_call_its_deadline_and_metadata() -> None:
    calls = _Calls(CallOptions(token="t0k", timeout=7.0, stream_timeout=None))
    unset = _CallDetails("/agentmesh.v1.AgentService/ListAgents", None, None, None, None, None)
    unary = calls._details(unset, streaming=False)
    assert unary.timeout == 7.0
    assert dict(unary.metadata or ())["authorization"] == "Bearer t0k"
    assert calls._details(unset, streaming=True).timeout is None
    assert calls._details(unset._replace(timeout=0.5), streaming=False).timeout == 0.5


def test_the_async_stubs_deadline_is_the_calls_else_the_clients() -> None:
    options = CallOptions(timeout=7.0, stream_timeout=None)
    unary = _deadline(options, None, None, streaming=False)
    assert unary is not None
    assert 6.0 < unary.time_remaining() <= 7.0
    assert _deadline(options, None, None, streaming=True) is None
    given = _deadline(options, 0.5, None, streaming=True)
    assert given is not None
    assert given.time_remaining() <= 0.5
