"""What a turn is made of as the Conductor's modules pass it around: the validated
request, the route chosen for it, and the outcome of its runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from agentmesh.conductor.domain.turns import BusyPolicy
from agentmesh.core.context import current_request_id
from agentmesh.core.errors import DomainError, to_status_proto
from agentmesh.v1 import agent_pb2, common_pb2, conductor_pb2


@dataclass(frozen=True)
class TurnRequest:
    """A validated Converse request."""

    session_id: str
    parts: tuple[common_pb2.Part, ...]
    text: str
    """The user's message as text (for the decision's summary)."""
    agent_id: str | None
    """The agent named; None: the Conductor decides."""
    input: struct_pb2.Struct
    resume: common_pb2.ResumeInput | None
    request_id: str | None
    fingerprint: bytes
    background: bool = False
    """The turn runs as a Job (asked, or the agent is long-running)."""
    busy_policy: BusyPolicy = BusyPolicy.REJECT
    """What the message does while the session is busy."""


@dataclass(frozen=True)
class Route:
    """Who takes a new turn and why."""

    agent_id: str
    strategy: conductor_pb2.RoutingStrategy.ValueType
    reason: str
    candidates: tuple[common_pb2.ScoredCandidate, ...] = ()
    """The agents considered with their scores, best first (none when named)."""
    latency_s: float = 0.0
    """How long choosing took when a model was asked (0: no model)."""
    usage: common_pb2.TokenUsage | None = None
    """The supervisor model's tokens for this choice (None: no model asked)."""


@dataclass
class Outcome:
    """How a turn's runs ended: an interrupt, an error, or a result; and who ran."""

    agent_id: str
    """The agent that ran last (the one a resume continues)."""
    thread: str
    """Its thread."""
    interrupt: common_pb2.Interrupt | None = None
    result: agent_pb2.RunResult | None = None
    error: status_pb2.Status | None = None
    usage: common_pb2.TokenUsage = field(default_factory=common_pb2.TokenUsage)
    """The tokens of the run that ran last, as streamed."""
    agents: list[str] = field(default_factory=list)
    """Every agent that ran, in order (ids)."""
    answers: list[list[common_pb2.Part]] = field(default_factory=list)
    """The answers of the runs before the last (hand-offs)."""
    earlier_usage: list[common_pb2.TokenUsage] = field(default_factory=list)
    """The tokens of the runs before the last."""

    @property
    def run_usage(self) -> common_pb2.TokenUsage:
        """The tokens of the last run: its result's, else as streamed."""
        if self.result is not None and self.result.HasField("usage"):
            return self.result.usage
        return self.usage


def status_of(exc: BaseException) -> status_pb2.Status:
    """The google.rpc.Status an error of the turn is told as."""
    request_id = current_request_id() or ""
    if isinstance(exc, DomainError):
        return to_status_proto(exc, request_id)
    if isinstance(exc, grpc.aio.AioRpcError):
        status: status_pb2.Status | None = rpc_status.from_call(exc)  # type: ignore[arg-type]
        if status is not None:
            return status
        return status_pb2.Status(code=exc.code().value[0], message=exc.details() or "")
    if isinstance(exc, TimeoutError):
        return status_pb2.Status(
            code=code_pb2.DEADLINE_EXCEEDED, message="the turn ran longer than the Conductor allows"
        )
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
