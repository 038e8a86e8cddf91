"""AgentService adapter: proto in, registry/runtime call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import structlog
from google.rpc import status_pb2

from agentmesh.agent.registry import AgentCard, Registry
from agentmesh.agent.runtime.inputs import RunInput, validate_resume, validate_run
from agentmesh.agent.runtime.runner import Prepared, Runner
from agentmesh.agent.settings import AgentSettings
from agentmesh.core.contract import ServicerContext, fill_unimplemented
from agentmesh.core.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    NotFound,
    internal_status_proto,
    to_status_proto,
)
from agentmesh.core.filtering import BOOLEAN, EQUALITY, FieldRule, Term, parse_filter
from agentmesh.core.names import AGENTS
from agentmesh.core.offload import convert_sized
from agentmesh.core.paging import Keyset, page_size
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

DEFAULT_PAGE_SIZE: Final = 50
PAGE: Final = Keyset(str)
"""ListAgents pages by agent id."""

_FILTER_RULES: Final = {
    "labels.*": FieldRule(EQUALITY),
    "long_running": BOOLEAN,
}

_PLAN: Final = "not served by this build"
_log = structlog.get_logger("agentmesh.agent")


def _matches(card: AgentCard, terms: list[Term]) -> bool:
    for term in terms:
        if term.field == "long_running":
            if card.long_running != (term.value == "true"):
                return False
        elif card.labels.get(term.key) != term.value:
            return False
    return True


@fill_unimplemented(agent_pb2.DESCRIPTOR.services_by_name["AgentService"], {"*": _PLAN})
class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Serves the registry's cards and runs the runner's agents."""

    def __init__(
        self,
        registry: Registry,
        runner: Runner | None = None,
        settings: AgentSettings | None = None,
    ) -> None:
        self._registry = registry
        self._runner = runner
        self._settings = settings or AgentSettings()

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

    # ------------------------------------------------------------------ runs

    def _runnable(self, name: str) -> tuple[str, AgentCard]:
        agent_id = AGENTS.parse(name)
        card = self._runner.card(agent_id) if self._runner is not None else None
        if card is None:
            raise NotFound(AGENTS.resource_type, name)
        return agent_id, card

    def _timeout_s(self, context: ServicerContext) -> float:
        """The run's time: the caller's deadline when sooner than the setting."""
        remaining = context.time_remaining()
        limit = self._settings.run_timeout_s
        return min(limit, remaining) if remaining is not None else limit

    async def _checked_run(
        self, request: agent_pb2.InvokeAgentRequest | agent_pb2.StreamAgentRequest
    ) -> RunInput:
        agent_id, _card = self._runnable(request.name)
        validator = self._require_runner().validator(agent_id)
        size = request.input.ByteSize() + sum(p.ByteSize() for p in request.parts)
        return await convert_sized(
            lambda: validate_run(agent_id, request, validator, self._settings), size
        )

    async def InvokeAgent(
        self, request: agent_pb2.InvokeAgentRequest, context: ServicerContext
    ) -> agent_pb2.InvokeAgentResponse:
        run = await self._checked_run(request)
        runner = self._require_runner()
        async with runner.run_scope():
            prepared = await runner.prepare_run(run)
            result = agent_pb2.RunResult()
            try:
                async for event in runner.stream(prepared, timeout_s=self._timeout_s(context)):
                    if event.HasField("final"):
                        result = event.final
            except DeadlineExceeded:
                raise
            except DomainError as exc:
                result = _failed(exc, context)
            except Exception:
                _log.exception("agent run failed", agent=run.agent_id, thread_id=run.thread_id)
                result = agent_pb2.RunResult(
                    thread_id=run.thread_id,
                    status=agent_pb2.RUN_STATUS_FAILED,
                    error=internal_status_proto(_request_id(context)),
                )
        return agent_pb2.InvokeAgentResponse(result=result)

    async def StreamAgent(
        self, request: agent_pb2.StreamAgentRequest, context: ServicerContext
    ) -> AsyncIterator[agent_pb2.AgentEvent]:
        run = await self._checked_run(request)
        runner = self._require_runner()
        async with runner.run_scope():
            prepared = await runner.prepare_run(run)
            async for event in _ending_in_error(
                runner.stream(prepared, timeout_s=self._timeout_s(context)), prepared, context
            ):
                yield event

    async def ResumeAgent(
        self, request: agent_pb2.ResumeAgentRequest, context: ServicerContext
    ) -> AsyncIterator[agent_pb2.AgentEvent]:
        agent_id, _card = self._runnable(request.name)
        resume = validate_resume(agent_id, request, self._settings)
        runner = self._require_runner()
        async with runner.run_scope():
            prepared = await runner.prepare_resume(resume)
            async for event in _ending_in_error(
                runner.stream(prepared, timeout_s=self._timeout_s(context)), prepared, context
            ):
                yield event

    def _require_runner(self) -> Runner:
        if self._runner is None:
            raise FailedPrecondition("NO_RUNTIME", "this server serves agent cards only")
        return self._runner


def _request_id(context: ServicerContext) -> str:
    return str(getattr(context, "request_id", ""))


def _failed(exc: DomainError, context: ServicerContext) -> agent_pb2.RunResult:
    return agent_pb2.RunResult(
        status=agent_pb2.RUN_STATUS_FAILED, error=to_status_proto(exc, _request_id(context))
    )


async def _ending_in_error(
    events: AsyncIterator[agent_pb2.AgentEvent],
    run: Prepared,
    context: ServicerContext,
) -> AsyncIterator[agent_pb2.AgentEvent]:
    """The run's events; a failure mid-run is sent as an ``error`` event (JSON clients
    see it in the body) and then raised, so gRPC clients get it as the status too."""
    sequence = 0
    try:
        async for event in events:
            sequence = event.sequence
            yield event
    except DomainError as exc:
        yield _error_event(to_status_proto(exc, _request_id(context)), sequence, run)
        raise
    except Exception:
        yield _error_event(internal_status_proto(_request_id(context)), sequence, run)
        raise


def _error_event(status: status_pb2.Status, after: int, run: Prepared) -> agent_pb2.AgentEvent:
    event = agent_pb2.AgentEvent(
        sequence=after + 1, thread_id=run.thread_id, agent=AGENTS.format(run.agent_id), error=status
    )
    event.time.GetCurrentTime()
    return event
