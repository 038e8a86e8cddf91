"""The agents jobs may run, as the Agent service lists them: CreateJob checks the
agent exists and the input fits its schema before it stores anything.

Cards are kept ``AGENTMESH_JOB_AGENT_CARD_TTL_S`` (a deployment's agents change with
its releases, not per request); an unknown agent is asked again every time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf import json_format

from agentmesh.core.context import current_authorization
from agentmesh.core.errors import NotFound, Unavailable
from agentmesh.core.json_schema import compile_schema
from agentmesh.core.names import AGENTS
from agentmesh.v1 import agent_pb2, agent_pb2_grpc


@dataclass(frozen=True)
class _Known:
    validator: Any
    expires: float


class AgentCatalog:
    """Input-schema validators of the Agent service's agents, cached."""

    def __init__(self, channel: grpc.aio.Channel, *, ttl_s: float, timeout_s: float) -> None:
        self._stub = cast(
            "agent_pb2_grpc.AgentServiceAsyncStub", agent_pb2_grpc.AgentServiceStub(channel)
        )
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._known: dict[str, _Known] = {}

    async def validator(self, agent_id: str) -> Any:
        """The agent's input validator (None: no schema); NOT_FOUND for an agent the
        Agent service does not serve, UNAVAILABLE when it cannot be asked."""
        known = self._known.get(agent_id)
        if known is not None and known.expires > time.monotonic():
            return known.validator
        authorization = current_authorization() or ""
        try:
            agent = await self._stub.GetAgent(
                agent_pb2.GetAgentRequest(name=AGENTS.format(agent_id)),
                metadata=(("authorization", authorization),),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(AGENTS.resource_type, AGENTS.format(agent_id)) from None
            raise Unavailable(
                f"the Agent service cannot say whether {AGENTS.format(agent_id)} exists:"
                f" {exc.code().name}",
                reason="AGENT_SERVICE_UNAVAILABLE",
            ) from None
        validator = compile_schema(json_format.MessageToDict(agent.input_schema))
        self._known[agent_id] = _Known(validator, time.monotonic() + self._ttl_s)
        return validator
