"""The Agent service's streams through the real Envoy, as a browser or curl reads them.

One REST path, two framings chosen by the client (docs/adr/0023):

- default: newline-delimited JSON, one `AgentEvent` per line;
- `accept: text/event-stream`: server-sent events, `data: {AgentEvent}` and a blank
  line per event (what EventSource and a fetch() reader of a POST stream parse).

An error found before the first event is the HTTP status with a JSON
`google.rpc.Status` body in both framings. Tokens from a model: an Agent process of
its own, with the two settings that point the assistant at an OpenAI-compatible server
(here the scripted one speaking the chat-completions wire protocol), behind an Envoy
rendered from the same template as dev and Kubernetes.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmesh.devstack._proc import ChildProcess, wait_until
from agentmesh.devstack.envoy_config import (
    HEALTH_ROUTE_HEADER,
    SERVICE_NAMES,
    dev_values,
    render_envoy_config,
)
from agentmesh.devstack.envoy_process import EnvoyProxy
from agentmesh.devstack.stack import DevStack, StackPorts, check_health
from providers import openai_wire
from providers.server import ScriptedServer, serving

SSE: dict[str, str] = {"accept": "text/event-stream"}
AGENT = SERVICE_NAMES["agent"]
READY_TIMEOUT_S = 60.0
"""Bound of the waits for the model-backed Agent and its Envoy (a loaded 2-core box)."""

Event = dict[str, Any]


def ndjson_events(response: httpx.Response) -> list[Event]:
    """Each line is one complete JSON object (no array, no separators)."""
    assert response.headers["content-type"].startswith("application/json")
    return [json.loads(line) for line in response.iter_lines() if line]


def sse_events(response: httpx.Response) -> list[Event]:
    """Server-sent events as EventSource parses them: `data:` lines up to a blank line."""
    assert response.headers["content-type"].startswith("text/event-stream")
    events: list[Event] = []
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                events.append(json.loads("\n".join(data)))
                data = []
            continue
        field, _, value = line.partition(":")
        assert field == "data", f"unexpected SSE line {line!r}"
        data.append(value.removeprefix(" "))
    assert not data, "the stream ended inside an event"
    return events


def stream(
    http: httpx.Client, path: str, body: dict[str, Any], *, sse: bool = False
) -> list[Event]:
    """POSTs a stream request and reads every event in the asked-for framing."""
    with http.stream("POST", path, json=body, headers=SSE if sse else {}) as response:
        assert response.status_code == 200, response.read()
        return sse_events(response) if sse else ndjson_events(response)


def kinds(events: list[Event]) -> list[str]:
    """The `event` oneof of each AgentEvent, by its JSON name."""
    common = {"sequence", "runId", "threadId", "agent", "time"}
    return [next(k for k in e if k not in common) for e in events]


def assert_one_run(events: list[Event], agent: str) -> None:
    """Numbered from 1, one run, one agent, ending with exactly one `final`."""
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert {e["runId"] for e in events} == {events[0]["runId"]}
    assert {e["agent"] for e in events} == {agent}
    assert kinds(events).count("final") == 1
    assert kinds(events)[-1] == "final"


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
def test_stream_agent_events_one_by_one(http: httpx.Client, sse: bool) -> None:
    thread = f"t-{uuid.uuid4().hex[:12]}"
    body = {"threadId": thread, "parts": [{"text": "stream me"}]}
    events = stream(http, "/v1/agents/echo:stream", body, sse=sse)

    assert_one_run(events, "agents/echo")
    assert {e["threadId"] for e in events} == {thread}
    assert events[0]["messageDelta"]["text"] == "stream me"
    final = events[-1]["final"]
    assert final["status"] == "RUN_STATUS_COMPLETED"
    assert final["parts"][0]["text"] == "stream me"


def test_sse_framing_leaves_unary_methods_plain_json(http: httpx.Client) -> None:
    response = http.post("/v1/agents/echo:invoke", json={"parts": [{"text": "hello"}]}, headers=SSE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["result"]["parts"][0]["text"] == "hello"


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
def test_a_stream_refused_before_its_first_event_is_an_http_error(
    http: httpx.Client, sse: bool
) -> None:
    with http.stream(
        "POST",
        "/v1/agents/nobody:stream",
        json={"parts": [{"text": "hi"}]},
        headers=SSE if sse else {},
    ) as response:
        response.read()
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["grpc-status"] == "5"
    status = response.json()
    assert status["code"] == 5
    (info,) = [d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["reason"] == "RESOURCE_NOT_FOUND"
    assert info["metadata"]["resource_name"] == "agents/nobody"


def test_an_interrupt_answered_by_a_streamed_resume(http: httpx.Client) -> None:
    thread = f"refund-{uuid.uuid4().hex[:12]}"
    paused = http.post(
        "/v1/agents/approval:invoke",
        json={"threadId": thread, "input": {"action": "refund order 7"}},
    )
    assert paused.status_code == 200, paused.text
    result = paused.json()["result"]
    assert result["status"] == "RUN_STATUS_INTERRUPTED"
    interrupt = result["interrupt"]
    assert interrupt["value"]["answers"] == ["yes", "no"]

    body = {"threadId": thread, "resume": {"interruptId": interrupt["id"], "answer": "yes"}}
    events = stream(http, "/v1/agents/approval:resume", body, sse=True)
    assert_one_run(events, "agents/approval")
    final = events[-1]["final"]
    assert final["status"] == "RUN_STATUS_COMPLETED"
    assert final["output"] == {"action": "refund order 7", "approved": True}


# -- tokens from a model ------------------------------------------------------------


@dataclass
class ModelMesh:
    """An Agent with a model (the scripted provider) behind an Envoy of its own."""

    provider: ScriptedServer
    http: httpx.Client


@pytest.fixture(scope="module")
def model_mesh(stack: DevStack, token: str) -> Iterator[ModelMesh]:
    """A second Agent process configured as a developer would point it at Ollama or
    vLLM, and an Envoy whose `agent` cluster is that process; Memory and the other
    services are the session's stack."""
    root = Path(tempfile.mkdtemp(prefix="agentmesh-e2e-model-"))
    ports = StackPorts.free()
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        provider = cleanup.enter_context(serving())
        env = {
            **stack.child_env("agent"),
            "AGENTMESH_GRPC_PORT": str(ports.agent),
            "AGENTMESH_METRICS_PORT": "0",
            # The two settings of docs/api/agent.md; no API key: a local server needs none.
            "AGENTMESH_LLM_DEFAULT_MODEL": f"openai:{openai_wire.MODEL}",
            "AGENTMESH_LLM_OPENAI_BASE_URL": f"{provider.url}/v1",
        }
        agent = ChildProcess(
            "agent-with-model",
            [sys.executable, "-m", "agentmesh.agent"],
            log_path=root / "agent.log",
            env=env,
        )
        cleanup.callback(agent.stop)
        address = f"127.0.0.1:{ports.agent}"

        def agent_serving() -> bool:
            if agent.returncode() is not None:
                raise AssertionError(f"agent exited {agent.returncode()}:\n{agent.log_tail()}")
            return check_health(address, AGENT, timeout_s=0.5) == "SERVING"

        wait_until(agent_serving, timeout_s=READY_TIMEOUT_S, what=f"agent {address} SERVING")

        values = dev_values(
            ports={**{s: stack.ports.grpc_port(s) for s in SERVICE_NAMES}, "agent": ports.agent},
            descriptor_path=stack.descriptor_set,
            external_port=ports.envoy_external,
            internal_port=ports.envoy_internal,
            admin_port=ports.envoy_admin,
        )
        config = root / "envoy.yaml"
        config.write_text(render_envoy_config(values))
        envoy = EnvoyProxy(config, ports.envoy_admin, log_path=root / "envoy.log")
        cleanup.callback(envoy.stop)
        envoy.start()
        internal = f"127.0.0.1:{ports.envoy_internal}"
        wait_until(
            lambda: check_health(internal, AGENT, metadata=((HEALTH_ROUTE_HEADER, "agent"),))
            == "SERVING",
            timeout_s=READY_TIMEOUT_S,
            what="the model-backed agent SERVING through its Envoy",
        )
        http = cleanup.enter_context(
            httpx.Client(
                base_url=f"http://127.0.0.1:{ports.envoy_external}",
                headers={"authorization": f"Bearer {token}"},
                timeout=30.0,
            )
        )
        yield ModelMesh(provider=provider, http=http)


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
def test_a_models_tokens_arrive_as_separate_events(model_mesh: ModelMesh, sse: bool) -> None:
    pieces = ["Hel", "lo", " from", " the", " model."]
    model_mesh.provider.script(openai_wire.stream(pieces))
    body = {"parts": [{"text": "say hello"}], "options": {"streamTokens": True}}
    events = stream(model_mesh.http, "/v1/agents/assistant:stream", body, sse=sse)

    assert_one_run(events, "agents/assistant")
    deltas = [e["messageDelta"] for e in events if "messageDelta" in e]
    # One event (one line, or one `data:` frame) per token the provider streamed.
    assert [d["text"] for d in deltas] == pieces
    assert len({d["messageId"] for d in deltas}) == 1
    final = events[-1]["final"]
    assert final["parts"][0]["text"] == "Hello from the model."
    assert final["usage"]["totalTokens"] == "18"
    # The assistant asked the provider for a stream, with the configured model.
    request = model_mesh.provider.requests[-1].json()
    assert request["stream"] is True
    assert request["model"] == openai_wire.MODEL
