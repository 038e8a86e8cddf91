"""AgentService adapter: proto in, registry/runtime call, proto out."""

from __future__ import annotations

from typing import Final

from agentmesh.agent.registry import AgentCard, Registry
from agentmesh.core.contract import ServicerContext, fill_unimplemented
from agentmesh.core.errors import NotFound
from agentmesh.core.filtering import BOOLEAN, EQUALITY, FieldRule, Term, parse_filter
from agentmesh.core.names import AGENTS
from agentmesh.core.paging import Keyset, page_size
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

DEFAULT_PAGE_SIZE: Final = 50
PAGE: Final = Keyset(str)
"""ListAgents pages by agent id."""

_FILTER_RULES: Final = {
    "labels.*": FieldRule(EQUALITY),
    "long_running": BOOLEAN,
}

_RUNTIME_PLAN: Final = "the LangGraph agent runtime (runs, streaming, interrupts), a later issue"


def _matches(card: AgentCard, terms: list[Term]) -> bool:
    for term in terms:
        if term.field == "long_running":
            if card.long_running != (term.value == "true"):
                return False
        elif card.labels.get(term.key) != term.value:
            return False
    return True


@fill_unimplemented(agent_pb2.DESCRIPTOR.services_by_name["AgentService"], {"*": _RUNTIME_PLAN})
class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Serves the registry; runs come with the LangGraph runtime."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def GetAgent(
        self, request: agent_pb2.GetAgentRequest, context: ServicerContext
    ) -> agent_pb2.Agent:
        agent_id = AGENTS.parse(request.name)
        card = self._registry.proto(agent_id)
        if card is None:
            raise NotFound(AGENTS.resource_type, request.name)
        return card

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: ServicerContext
    ) -> agent_pb2.ListAgentsResponse:
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        terms = parse_filter(request.filter, _FILTER_RULES)
        query = {"filter": request.filter}
        (after,) = PAGE.decode(request.page_token, query) or ("",)
        matching = [
            card
            for card in self._registry.cards()
            if card.agent_id > after and _matches(card, terms)
        ]
        page, next_token = PAGE.page(matching, size, query, lambda card: (card.agent_id,))
        return agent_pb2.ListAgentsResponse(
            agents=[self._proto(card) for card in page], next_page_token=next_token
        )

    def _proto(self, card: AgentCard) -> agent_pb2.Agent:
        message = self._registry.proto(card.agent_id)
        assert message is not None  # the card came from the same registry
        return message
