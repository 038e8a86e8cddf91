"""ConductorService adapter: validate, start or find the turn, stream its stored events.

Rules of turns are in ``domain/turns.py``, their SQL in ``stores/conversations.py``,
running one in ``turns.py``, reading events as a stream in ``watch.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Final

from google.protobuf import json_format

from agentmesh.conductor.deps import ConductorDeps
from agentmesh.conductor.domain.background import runs_in_background
from agentmesh.conductor.domain.turns import BusyPolicy
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.conductor.stores.conversations import last_sequence
from agentmesh.conductor.turn_model import TurnRequest
from agentmesh.conductor.watch import follow
from agentmesh.core.context import current_tenant
from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import FailedPrecondition, OutOfRange
from agentmesh.core.idempotency import fingerprint
from agentmesh.core.json_schema import schema_violations, whole_numbers
from agentmesh.core.names import AGENTS, SESSIONS
from agentmesh.core.run_input import parts_text
from agentmesh.core.storage import check_json_value, struct_to_jsonb
from agentmesh.core.validation import Violations, validate_request_id
from agentmesh.v1 import common_pb2, conductor_pb2, conductor_pb2_grpc

MAX_INTERRUPT_ID_CHARS: Final = 128
_NOT_WITH_RESUME: Final = "not with `resume`: a resume continues the paused turn as it was"


def _turn_request(
    request: conductor_pb2.ConverseRequest, settings: ConductorSettings
) -> TurnRequest:
    """The turn ``request`` asks for, or INVALID_ARGUMENT naming every bad field."""
    violations = Violations()
    session_id = violations.check(lambda: SESSIONS.parse(request.session, field="session"))
    agent_id = None
    if request.agent:
        agent_id = violations.check(lambda: AGENTS.parse(request.agent, field="agent"))
    if request.request_id:
        violations.check(lambda: validate_request_id(request.request_id))
    if request.busy_policy not in conductor_pb2.BusyPolicy.values():
        violations.add("busy_policy", "not a BusyPolicy")
    resume: common_pb2.ResumeInput | None = None
    text = ""
    if request.HasField("resume"):
        resume = request.resume
        _check_resume(request, settings, violations)
    else:
        text = _check_message(request, settings, violations)
    violations.raise_if_any()
    assert session_id is not None
    return TurnRequest(
        session_id=session_id,
        parts=tuple(request.parts),
        text=text,
        agent_id=agent_id,
        input=request.input,
        resume=resume,
        request_id=request.request_id or None,
        fingerprint=fingerprint(request),
        background=request.background,
        busy_policy=BusyPolicy(request.busy_policy or conductor_pb2.BUSY_POLICY_REJECT),
    )


def _check_resume(
    request: conductor_pb2.ConverseRequest, settings: ConductorSettings, violations: Violations
) -> None:
    """Every bad field of a resume a violation."""
    resume = request.resume
    for given, name in (
        (bool(request.parts), "parts"),
        (bool(request.agent), "agent"),
        (request.HasField("input"), "input"),
        (request.background, "background"),
    ):
        if given:
            violations.add(name, _NOT_WITH_RESUME)
    violations.text(
        resume.interrupt_id, "resume.interrupt_id", required=True, max_chars=MAX_INTERRUPT_ID_CHARS
    )
    if not resume.HasField("answer"):
        violations.add("resume.answer", "required (any JSON value)")
    elif resume.answer.ByteSize() > settings.max_input_bytes:
        violations.add("resume.answer", f"at most {settings.max_input_bytes} bytes")
    else:
        answer = json_format.MessageToDict(resume.answer)
        violations.check(lambda: check_json_value(answer, field="resume.answer"))


def _check_message(
    request: conductor_pb2.ConverseRequest, settings: ConductorSettings, violations: Violations
) -> str:
    """The user's message as text; every bad field a violation."""
    size = request.input.ByteSize() + sum(part.ByteSize() for part in request.parts)
    if size > settings.max_input_bytes:
        violations.add("parts", f"{size} bytes with the input; at most {settings.max_input_bytes}")
        violations.raise_if_any()
    text = parts_text(request.parts, violations, field="parts")
    if not text:
        violations.add("parts", "required: the user's message (or `resume`)")
    violations.check(
        lambda: struct_to_jsonb(request.input, field="input", max_bytes=settings.max_input_bytes)
    )
    return text


class ConductorServicer(conductor_pb2_grpc.ConductorServiceServicer):
    """Every ConductorService RPC over the shared ``ConductorDeps``."""

    def __init__(self, deps: ConductorDeps) -> None:
        self.deps = deps

    async def Converse(
        self, request: conductor_pb2.ConverseRequest, context: ServicerContext
    ) -> AsyncIterator[conductor_pb2.ConverseEvent]:
        deps = self.deps
        turn = _turn_request(request, deps.settings)
        tenant = current_tenant()
        with deps.watches.hold(tenant):
            await deps.downstream.ensure_session(turn.session_id, create=request.create_session)
            started = await deps.turns.replay(tenant, turn)
            route = None
            if started is None and turn.resume is None:
                route = await deps.router.route(tenant, turn.agent_id, turn.text, turn.input)
                validator = await deps.downstream.validator(route.agent_id)
                violations = Violations()
                structured = whole_numbers(json_format.MessageToDict(turn.input))
                schema_violations(structured, validator, violations, field="input")
                violations.raise_if_any()
                long_running = await deps.downstream.long_running(route.agent_id)
                if runs_in_background(turn.background, long_running):
                    if deps.downstream.jobs is None:
                        raise FailedPrecondition(
                            "NO_JOB_SERVICE",
                            "this turn runs as a Job and the Conductor has no Job service"
                            " (AGENTMESH_JOB_ADDR)",
                            [("BACKGROUND", request.session, "send it without `background`")],
                        )
                    turn = dataclasses.replace(turn, background=True)
            if started is None:
                started = await deps.turns.start(tenant, turn, route)
            async for event in follow(
                deps.pool,
                deps.changes,
                tenant,
                turn.session_id,
                after=0,
                poll_s=deps.settings.watch_poll_s,
                turn_id=started.turn_id,
                runner=started.task,
            ):
                yield event

    async def WatchConversation(
        self, request: conductor_pb2.WatchConversationRequest, context: ServicerContext
    ) -> AsyncIterator[conductor_pb2.ConverseEvent]:
        deps = self.deps
        violations = Violations()
        session_id = violations.check(lambda: SESSIONS.parse(request.session, field="session"))
        if request.after_sequence < 0:
            violations.add("after_sequence", "must be 0 or more")
        violations.raise_if_any()
        assert session_id is not None
        tenant = current_tenant()
        with deps.watches.hold(tenant):
            await deps.downstream.ensure_session(session_id, create=False)
            latest = await last_sequence(deps.pool, tenant, session_id)
            if request.after_sequence > latest:
                raise OutOfRange(
                    "after_sequence",
                    f"{request.session} has {latest} events; resume after a sequence you received",
                )
            # The call is accepted: say so now (HTTP status and headers through Envoy),
            # not with the next event, which may be a while away.
            await context.send_initial_metadata(())
            async for event in follow(
                deps.pool,
                deps.changes,
                tenant,
                session_id,
                after=request.after_sequence,
                poll_s=deps.settings.watch_poll_s,
            ):
                yield event
