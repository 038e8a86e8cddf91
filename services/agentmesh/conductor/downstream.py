"""The Conductor's calls to Memory (sessions, messages, decisions) and to the Agent
service (cards, runs), as the caller: the channels forward the authorization and
request id of the RPC being served (``core/channels.py``), also from the task that
runs a turn, which inherits the RPC's context.

Errors of these calls before a turn starts become the Conductor's own (NOT_FOUND of a
session or agent; UNAVAILABLE when a service cannot answer); during a turn the turn
runner turns them into its error event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import grpc
from google.protobuf import json_format

from agentmesh.core.errors import NotFound, Unavailable
from agentmesh.core.json_schema import compile_schema
from agentmesh.core.names import AGENTS, SESSIONS
from agentmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    job_pb2,
    job_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)

_MEMORY: Final = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"]
_AGENT: Final = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
MEMORY_RETRIES: Final = tuple(
    (_MEMORY.full_name, name)
    for name in ("GetSession", "ListMessages", "ListDecisions", "EmbedTexts")
)
"""Memory methods the channel may retry on UNAVAILABLE (reads). Creates and appends
carry request ids or message ids, so the turn retries nothing behind their back."""
AGENT_RETRIES: Final = ((_AGENT.full_name, "GetAgent"), (_AGENT.full_name, "ListAgents"))
"""Agent methods the channel may retry on UNAVAILABLE."""
_JOB: Final = job_pb2.DESCRIPTOR.services_by_name["JobService"]
JOB_RETRIES: Final = ((_JOB.full_name, "CreateJob"), (_JOB.full_name, "GetJob"))
"""Job methods the channel may retry on UNAVAILABLE (CreateJob always carries the
turn's request id)."""
CARDS_PAGE_SIZE: Final = 100


@dataclass(frozen=True)
class _Card:
    validator: Any
    long_running: bool
    expires: float


def _unavailable(service: str, exc: grpc.aio.AioRpcError) -> Unavailable:
    return Unavailable(
        f"the {service} service did not answer: {exc.code().name}",
        reason=f"{service.upper()}_SERVICE_UNAVAILABLE",
    )


class Downstream:
    """Stubs of Memory and Agent, and the agents' input validators, cached."""

    def __init__(
        self,
        memory: grpc.aio.Channel,
        agent: grpc.aio.Channel,
        *,
        card_ttl_s: float,
        job: grpc.aio.Channel | None = None,
    ) -> None:
        # mypy-protobuf types the runtime stubs as the AsyncStubs on aio channels.
        self.memory = cast(
            "memory_pb2_grpc.MemoryServiceAsyncStub", memory_pb2_grpc.MemoryServiceStub(memory)
        )
        self.agents = cast(
            "agent_pb2_grpc.AgentServiceAsyncStub", agent_pb2_grpc.AgentServiceStub(agent)
        )
        self.jobs = (
            cast("job_pb2_grpc.JobServiceAsyncStub", job_pb2_grpc.JobServiceStub(job))
            if job is not None
            else None
        )
        """The Job service (background turns); None: not configured."""
        self._card_ttl_s = card_ttl_s
        self._cards: dict[str, _Card] = {}

    async def ensure_session(self, session_id: str, *, create: bool) -> None:
        """NOT_FOUND unless the caller's tenant has the session; with ``create``, a
        missing session is created (a concurrent create of the same id is fine). One
        Memory call either way: with ``create`` the create comes first (ALREADY_EXISTS:
        the session is there), so a new session costs no lookup before it."""
        name = SESSIONS.format(session_id)
        if create:
            try:
                await self.memory.CreateSession(
                    memory_pb2.CreateSessionRequest(
                        session=memory_pb2.Session(), session_id=session_id
                    )
                )
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return  # there already (or deleted and not purged: the append says)
                refused = exc
        try:
            await self.memory.GetSession(memory_pb2.GetSessionRequest(name=name))
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise _unavailable("memory", exc) from None
        if create:  # the create failed otherwise (a quota), and the session is not there
            raise _unavailable("memory", refused) from None
        raise NotFound(SESSIONS.resource_type, name)

    async def validator(self, agent_id: str) -> Any:
        """The agent's input validator (None: no schema); NOT_FOUND for an agent the
        Agent service does not serve."""
        return (await self._card(agent_id)).validator

    async def long_running(self, agent_id: str) -> bool:
        """Whether the agent's card says its runs are long (they run as Jobs)."""
        return (await self._card(agent_id)).long_running

    async def _card(self, agent_id: str) -> _Card:
        card = self._cards.get(agent_id)
        if card is not None and card.expires > time.monotonic():
            return card
        try:
            agent = await self.agents.GetAgent(
                agent_pb2.GetAgentRequest(name=AGENTS.format(agent_id))
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(AGENTS.resource_type, AGENTS.format(agent_id)) from None
            raise _unavailable("agent", exc) from None
        validator = compile_schema(json_format.MessageToDict(agent.input_schema))
        card = _Card(validator, agent.long_running, time.monotonic() + self._card_ttl_s)
        self._cards[agent_id] = card
        return card

    async def append_message(
        self,
        session_id: str,
        message_id: str,
        role: common_pb2.Role.ValueType,
        parts: Sequence[common_pb2.Part],
        *,
        agent: str = "",
    ) -> memory_pb2.Message:
        """Appends one message to the session; the same ``message_id`` again returns the
        stored one (a retried turn appends nothing twice)."""
        response = await self.memory.AppendMessages(
            memory_pb2.AppendMessagesRequest(
                parent=SESSIONS.format(session_id),
                messages=[
                    memory_pb2.Message(message_id=message_id, role=role, parts=parts, agent=agent)
                ],
            )
        )
        return response.messages[0]

    async def record_decision(
        self, decision: memory_pb2.Decision, decision_id: str
    ) -> memory_pb2.Decision:
        """Appends ``decision`` to Memory's audit trail as ``decisions/{decision_id}``,
        once (the id is the write's request id too, so a retry answers the first)."""
        return await self.memory.CreateDecision(
            memory_pb2.CreateDecisionRequest(
                decision=decision, decision_id=decision_id, request_id=decision_id
            )
        )

    async def list_cards(self, limit: int) -> list[agent_pb2.Agent]:
        """The cards of the agents the Agent service serves the caller, at most
        ``limit`` (the first pages of ListAgents)."""
        cards: list[agent_pb2.Agent] = []
        token = ""
        try:
            while len(cards) < limit:
                page = await self.agents.ListAgents(
                    agent_pb2.ListAgentsRequest(
                        page_size=min(CARDS_PAGE_SIZE, limit - len(cards)), page_token=token
                    )
                )
                cards += page.agents
                token = page.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as exc:
            raise _unavailable("agent", exc) from None
        return cards[:limit]

    async def embed(self, texts: Sequence[str]) -> memory_pb2.EmbedTextsResponse:
        """Vectors of ``texts`` (at most 64) from Memory's embedder, the one memory
        search uses."""
        try:
            return await self.memory.EmbedTexts(memory_pb2.EmbedTextsRequest(texts=texts))
        except grpc.aio.AioRpcError as exc:
            raise _unavailable("memory", exc) from None
