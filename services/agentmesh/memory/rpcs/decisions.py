"""MemoryService RPCs: The decision audit trail: append, get, list.

Decisions are append-only: there is no update or delete RPC. A decision names its
session and job by reference only, without requiring them to exist, so the trail
accepts records about a session that was deleted meanwhile (or is deleted later)
and keeps them for audit.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.context import current_trace_id
from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import AlreadyExists, NotFound
from agentmesh.core.filtering import (
    EQUALITY,
    TIME_RANGE,
    FieldRule,
    Term,
    parse_filter,
    timestamp_value,
)
from agentmesh.core.names import (
    AGENTS,
    DECISIONS,
    ID_PATTERN,
    JOBS,
    SESSIONS,
    ResourcePattern,
    new_id,
    validate_id,
)
from agentmesh.core.offload import convert_sized
from agentmesh.core.paging import Keyset, page_size
from agentmesh.core.sql import item_bytes
from agentmesh.core.validation import Violations, validate_request_id
from agentmesh.memory.convert import json_to_struct, optional_ref, struct_to_jsonb, timestamp
from agentmesh.memory.rpc import RpcGroup, listing
from agentmesh.memory.stores.decisions import (
    DecisionFilter,
    NewDecision,
    get_decision,
    insert_decision,
    list_decisions,
)
from agentmesh.v1 import common_pb2, memory_pb2

DEFAULT_PAGE_SIZE: Final = 50
CONDUCTOR: Final = "conductor"
"""The `agent` of routing decisions the Conductor makes itself."""

MAX_INPUT_SUMMARY_BYTES: Final = 4 * 1024
MAX_REASONING_BYTES: Final = 16 * 1024
MAX_METADATA_BYTES: Final = 16 * 1024
# Bounds the contract leaves open. Generous for any real decision, they keep one
# audit row (and the list pages made of them) small.
MAX_SHORT_TEXT_BYTES: Final = 1024  # chosen_action, a candidate's name, a tool
MAX_OUTCOME_BYTES: Final = 4 * 1024
MAX_CANDIDATE_REASON_BYTES: Final = 1024
MAX_CANDIDATES: Final = 100
MAX_TOOLS: Final = 100
_MAX_BIGINT: Final = 2**63 - 1
"""Latency (as nanoseconds, ~292 years) and token counts are PostgreSQL bigints."""

_TRACE_ID: Final = re.compile(r"^[0-9a-f]{32}$")

PAGE: Final = Keyset(datetime, str)
"""ListDecisions pages: newest first by (create_time, id)."""


# ------------------------------------------------------------------ validation
# Each check records what is wrong in `violations` and returns the value to store.


def _agent(agent: str, violations: Violations) -> str:
    field = "decision.agent"
    if not agent:
        violations.add(field, f"required: agents/{{agent}} or {CONDUCTOR!r}")
    elif agent != CONDUCTOR:
        violations.check(lambda: AGENTS.parse(agent, field=field))
    return agent


def _trace_id(trace_id: str, violations: Violations) -> str:
    """A W3C trace id (32 lower-case hex digits, not all zero); empty means the
    caller's own trace, so the trail joins the traces without the client's help."""
    if not trace_id:
        return current_trace_id() or ""
    if not _TRACE_ID.fullmatch(trace_id) or trace_id == "0" * 32:
        violations.add("decision.trace_id", "must be a W3C trace id: 32 lower-case hex")
    return trace_id


def _candidates_json(
    candidates: Sequence[common_pb2.ScoredCandidate], violations: Violations
) -> str:
    if len(candidates) > MAX_CANDIDATES:
        violations.add("decision.candidates", f"at most {MAX_CANDIDATES} candidates")
        return "[]"
    rows = []
    for index, candidate in enumerate(candidates):
        field = f"decision.candidates[{index}]"
        if not math.isfinite(candidate.score) or not 0.0 <= candidate.score <= 1.0:
            violations.add(f"{field}.score", "must be in [0, 1]")
        name = violations.text_bytes(
            candidate.name, f"{field}.name", max_bytes=MAX_SHORT_TEXT_BYTES
        )
        reason = violations.text_bytes(
            candidate.reason, f"{field}.reason", max_bytes=MAX_CANDIDATE_REASON_BYTES
        )
        rows.append({"name": name, "score": candidate.score, "reason": reason})
    return json.dumps(rows, separators=(",", ":"))


def _tools(tools: Sequence[str], violations: Violations) -> list[str]:
    if len(tools) > MAX_TOOLS:
        violations.add("decision.tools", f"at most {MAX_TOOLS} tools")
        return []
    return [
        violations.text_bytes(tool, f"decision.tools[{index}]", max_bytes=MAX_SHORT_TEXT_BYTES)
        for index, tool in enumerate(tools)
    ]


def _latency_ns(decision: memory_pb2.Decision, violations: Violations) -> int | None:
    if not decision.HasField("latency"):
        return None
    latency = decision.latency
    if latency.seconds < 0 or latency.nanos < 0 or latency.nanos >= 1_000_000_000:
        violations.add("decision.latency", "must be a non-negative duration")
        return None
    nanos = latency.seconds * 1_000_000_000 + latency.nanos
    if nanos > _MAX_BIGINT:
        violations.add("decision.latency", "too long")
    return nanos


def _usage(
    decision: memory_pb2.Decision, violations: Violations
) -> tuple[int | None, int | None, int | None]:
    """Token counts (all None: not reported); `total_tokens` is filled in when the
    client left it 0."""
    if not decision.HasField("usage"):
        return None, None, None
    usage = decision.usage
    if min(usage.input_tokens, usage.output_tokens, usage.total_tokens) < 0:
        violations.add("decision.usage", "token counts must not be negative")
        return None, None, None
    total = usage.total_tokens or usage.input_tokens + usage.output_tokens
    if total > _MAX_BIGINT:
        violations.add("decision.usage", "token counts too large")
    return usage.input_tokens, usage.output_tokens, total


def _chosen_action(chosen: str, violations: Violations) -> str:
    if not chosen:
        violations.add("decision.chosen_action", "required, e.g. agents/billing")
        return chosen
    return violations.text_bytes(chosen, "decision.chosen_action", max_bytes=MAX_SHORT_TEXT_BYTES)


def _new_decision(request: memory_pb2.CreateDecisionRequest) -> NewDecision:
    """The decision to append; INVALID_ARGUMENT naming every bad field."""
    decision = request.decision
    violations = Violations()
    agent = _agent(decision.agent, violations)
    session_id = violations.check(
        lambda: optional_ref(decision.session, SESSIONS, field="decision.session")
    )
    job_id = violations.check(lambda: optional_ref(decision.job, JOBS, field="decision.job"))
    input_summary = violations.text_bytes(
        decision.input_summary, "decision.input_summary", max_bytes=MAX_INPUT_SUMMARY_BYTES
    )
    reasoning = violations.text_bytes(
        decision.reasoning, "decision.reasoning", max_bytes=MAX_REASONING_BYTES
    )
    candidates = _candidates_json(decision.candidates, violations)
    chosen_action = _chosen_action(decision.chosen_action, violations)
    tools = _tools(decision.tools, violations)
    outcome = violations.text_bytes(
        decision.outcome, "decision.outcome", max_bytes=MAX_OUTCOME_BYTES
    )
    latency_ns = _latency_ns(decision, violations)
    input_tokens, output_tokens, total_tokens = _usage(decision, violations)
    trace_id = _trace_id(decision.trace_id, violations)
    metadata = violations.check(
        lambda: struct_to_jsonb(
            decision.metadata, field="decision.metadata", max_bytes=MAX_METADATA_BYTES
        )
    )
    violations.check(lambda: validate_request_id(request.request_id))
    if request.decision_id:
        violations.check(lambda: validate_id(request.decision_id, field="decision_id"))
    violations.raise_if_any()
    assert metadata is not None
    return NewDecision(
        agent=agent,
        session_id=session_id,
        job_id=job_id,
        input_summary=input_summary,
        reasoning=reasoning,
        candidates=candidates,
        chosen_action=chosen_action,
        tools=tools,
        outcome=outcome,
        latency_ns=latency_ns,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        trace_id=trace_id,
        metadata=metadata,
    )


# -------------------------------------------------------------------- to proto


def _to_proto(row: Mapping[str, Any]) -> memory_pb2.Decision:
    decision = memory_pb2.Decision(
        name=DECISIONS.format(row["id"]),
        agent=row["agent"],
        session=SESSIONS.format(row["session_id"]) if row["session_id"] else "",
        job=JOBS.format(row["job_id"]) if row["job_id"] else "",
        input_summary=row["input_summary"],
        reasoning=row["reasoning"],
        candidates=[common_pb2.ScoredCandidate(**item) for item in json.loads(row["candidates"])],
        chosen_action=row["chosen_action"],
        tools=row["tools"],
        outcome=row["outcome"],
        trace_id=row["trace_id"],
        metadata=json_to_struct(row["metadata"]),
        create_time=timestamp(row["create_time"]),
    )
    if row["latency_ns"] is not None:
        decision.latency.FromNanoseconds(row["latency_ns"])
    if row["input_tokens"] is not None:
        decision.usage.CopyFrom(
            common_pb2.TokenUsage(
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                total_tokens=row["total_tokens"],
            )
        )
    return decision


# --------------------------------------------------------------------- listing


def _check_reference(value: str, pattern: ResourcePattern) -> None:
    """A filter value naming a `collection/{id}`; ValueError (→ INVALID_ARGUMENT) if not."""
    prefix = pattern.collection + "/"
    if not value.startswith(prefix) or not ID_PATTERN.fullmatch(value[len(prefix) :]):
        raise ValueError(f"expected {prefix}{{id}}")


def _reference(pattern: ResourcePattern) -> FieldRule:
    """An equality filter on a `collection/{id}` reference, checked when parsed."""
    return FieldRule(EQUALITY, lambda value: _check_reference(value, pattern))


def _agent_value(value: str) -> None:
    if value != CONDUCTOR:
        _check_reference(value, AGENTS)


_FILTER_RULES: Final = {
    "agent": FieldRule(EQUALITY, _agent_value),
    "session": _reference(SESSIONS),
    "job": _reference(JOBS),
    "create_time": TIME_RANGE,
}


def _decision_filter(terms: Sequence[Term]) -> DecisionFilter:
    """The parsed (and checked) filter terms as the store's conditions."""
    agents: list[str] = []
    session_ids: list[str] = []
    job_ids: list[str] = []
    create_time: list[tuple[str, datetime]] = []
    for term in terms:
        if term.field == "agent":
            agents.append(term.value)
        elif term.field == "session":
            session_ids.append(term.value.split("/", 1)[1])
        elif term.field == "job":
            job_ids.append(term.value.split("/", 1)[1])
        else:  # create_time; the operator comes from TIME_RANGE's fixed set
            create_time.append((term.op, timestamp_value(term.value)))
    return DecisionFilter(agents, session_ids, job_ids, create_time)


class DecisionRpcs(RpcGroup):
    """The decision audit trail: append, get, list."""

    async def CreateDecision(
        self, request: memory_pb2.CreateDecisionRequest, context: ServicerContext
    ) -> memory_pb2.Decision:
        tenant = self.tenant()
        new = _new_decision(request)
        async with self.deps.pool.acquire() as conn, conn.transaction():

            async def write() -> memory_pb2.Decision:
                decision_id = request.decision_id or new_id()
                try:
                    row = await insert_decision(conn, tenant, decision_id, new)
                except asyncpg.UniqueViolationError:
                    # Raising rolls the request_id claim back with the transaction.
                    raise AlreadyExists(
                        DECISIONS.resource_type, DECISIONS.format(decision_id)
                    ) from None
                return _to_proto(row)

            return await self.deps.request_ids.once(
                conn, tenant, "CreateDecision", request, memory_pb2.Decision, write
            )

    async def GetDecision(
        self, request: memory_pb2.GetDecisionRequest, context: ServicerContext
    ) -> memory_pb2.Decision:
        decision_id = DECISIONS.parse(request.name)
        row = await get_decision(self.deps.pool, self.tenant(), decision_id)
        if row is None:
            raise NotFound(DECISIONS.resource_type, request.name)
        return _to_proto(row)

    @listing
    async def ListDecisions(
        self, request: memory_pb2.ListDecisionsRequest, context: ServicerContext
    ) -> memory_pb2.ListDecisionsResponse:
        query = {"filter": request.filter}
        violations = Violations()
        size = violations.check(lambda: page_size(request.page_size, default=DEFAULT_PAGE_SIZE))
        terms = violations.check(lambda: parse_filter(request.filter, _FILTER_RULES))
        before = violations.check(lambda: PAGE.decode(request.page_token, query))
        violations.raise_if_any()
        assert size is not None
        assert terms is not None
        budget = self.deps.process.page_max_bytes
        rows = await list_decisions(
            self.deps.pool,
            self.tenant(),
            _decision_filter(terms),
            before=before,
            limit=size + 1,
            budget=budget,
        )
        page, next_token = PAGE.page(
            rows,
            size,
            query,
            key=lambda row: (row["create_time"], row["id"]),
            budget=budget,
            item_bytes=item_bytes,
        )
        decisions = await convert_sized(
            lambda: [_to_proto(row) for row in page], sum(map(item_bytes, page))
        )
        return memory_pb2.ListDecisionsResponse(decisions=decisions, next_page_token=next_token)
