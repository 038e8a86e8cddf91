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

from google.protobuf import struct_pb2

from agentmesh.core.context import current_trace_id
from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import InvalidArgument, NotFound
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
)
from agentmesh.core.paging import decode_page_token, encode_page_token, page_size
from agentmesh.memory import idempotency
from agentmesh.memory.convert import json_to_struct, struct_to_json, timestamp
from agentmesh.memory.rpc import RpcGroup
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
_COLUMNS: Final = """
    id, agent, session_id, job_id, input_summary, reasoning, candidates, chosen_action,
    tools, outcome, latency_ns, input_tokens, output_tokens, total_tokens, trace_id,
    metadata, create_time
"""


# ------------------------------------------------------------- shared checks
# Used by artifacts.py too; they belong in convert.py, which is not ours to edit.


def check_text(value: str, *, field: str, max_bytes: int) -> str:
    """A text column value: bounded in UTF-8 bytes and free of NUL, which PostgreSQL
    `text` cannot hold (it would fail in the database, as INTERNAL)."""
    if len(value.encode()) > max_bytes:
        raise InvalidArgument(field, f"larger than {max_bytes} bytes")
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def metadata_json(value: struct_pb2.Struct, *, field: str, max_bytes: int) -> str:
    """A Struct as `jsonb` text, size-checked, refusing what `jsonb` would reject:
    NaN/Infinity (not JSON) and NUL in strings (`\\u0000` is not storable)."""
    try:
        text = struct_to_json(value, field=field, max_bytes=max_bytes)
    except ValueError as exc:  # json_format: "Fail to serialize NaN ..."
        raise InvalidArgument(field, f"not representable as JSON: {exc}") from None
    if _has_nul(json.loads(text)):
        raise InvalidArgument(field, "must not contain NUL characters")
    return text


def optional_ref(name: str, pattern: ResourcePattern, *, field: str) -> str | None:
    """The id of an optional reference such as `sessions/{id}`; empty means none."""
    return pattern.parse(name, field=field) if name else None


# ------------------------------------------------------------------ validation


def _check_agent(agent: str) -> str:
    field = "decision.agent"
    if not agent:
        raise InvalidArgument(field, f"required: agents/{{agent}} or {CONDUCTOR!r}")
    if agent != CONDUCTOR:
        AGENTS.parse(agent, field=field)
    return agent


def _check_trace_id(trace_id: str) -> str:
    """A W3C trace id (32 lower-case hex digits, not all zero); empty means the
    caller's own trace, so the trail joins the traces without the client's help."""
    if not trace_id:
        return current_trace_id() or ""
    if not _TRACE_ID.match(trace_id) or trace_id == "0" * 32:
        raise InvalidArgument("decision.trace_id", "must be a W3C trace id: 32 lower-case hex")
    return trace_id


def _candidates_json(candidates: Sequence[common_pb2.ScoredCandidate]) -> str:
    if len(candidates) > MAX_CANDIDATES:
        raise InvalidArgument("decision.candidates", f"at most {MAX_CANDIDATES} candidates")
    rows = []
    for index, candidate in enumerate(candidates):
        field = f"decision.candidates[{index}]"
        if not math.isfinite(candidate.score) or not 0.0 <= candidate.score <= 1.0:
            raise InvalidArgument(f"{field}.score", "must be in [0, 1]")
        rows.append(
            {
                "name": check_text(
                    candidate.name, field=f"{field}.name", max_bytes=MAX_SHORT_TEXT_BYTES
                ),
                "score": candidate.score,
                "reason": check_text(
                    candidate.reason, field=f"{field}.reason", max_bytes=MAX_CANDIDATE_REASON_BYTES
                ),
            }
        )
    return json.dumps(rows, separators=(",", ":"))


def _check_tools(tools: Sequence[str]) -> list[str]:
    if len(tools) > MAX_TOOLS:
        raise InvalidArgument("decision.tools", f"at most {MAX_TOOLS} tools")
    return [
        check_text(tool, field=f"decision.tools[{index}]", max_bytes=MAX_SHORT_TEXT_BYTES)
        for index, tool in enumerate(tools)
    ]


def _latency_ns(decision: memory_pb2.Decision) -> int | None:
    if not decision.HasField("latency"):
        return None
    latency = decision.latency
    if latency.seconds < 0 or latency.nanos < 0 or latency.nanos >= 1_000_000_000:
        raise InvalidArgument("decision.latency", "must be a non-negative duration")
    nanos = latency.seconds * 1_000_000_000 + latency.nanos
    if nanos > _MAX_BIGINT:
        raise InvalidArgument("decision.latency", "too long")
    return nanos


def _usage(decision: memory_pb2.Decision) -> tuple[int | None, int | None, int | None]:
    """Token counts (all None: not reported); `total_tokens` is filled in when the
    client left it 0."""
    if not decision.HasField("usage"):
        return None, None, None
    usage = decision.usage
    if min(usage.input_tokens, usage.output_tokens, usage.total_tokens) < 0:
        raise InvalidArgument("decision.usage", "token counts must not be negative")
    total = usage.total_tokens or usage.input_tokens + usage.output_tokens
    if total > _MAX_BIGINT:
        raise InvalidArgument("decision.usage", "token counts too large")
    return usage.input_tokens, usage.output_tokens, total


def _check_chosen_action(chosen: str) -> str:
    if not chosen:
        raise InvalidArgument("decision.chosen_action", "required, e.g. agents/billing")
    return check_text(chosen, field="decision.chosen_action", max_bytes=MAX_SHORT_TEXT_BYTES)


def _row_values(decision: memory_pb2.Decision) -> list[Any]:
    """The validated column values of a new decision, in `_INSERT` order after id."""
    return [
        _check_agent(decision.agent),
        optional_ref(decision.session, SESSIONS, field="decision.session"),
        optional_ref(decision.job, JOBS, field="decision.job"),
        check_text(
            decision.input_summary,
            field="decision.input_summary",
            max_bytes=MAX_INPUT_SUMMARY_BYTES,
        ),
        check_text(decision.reasoning, field="decision.reasoning", max_bytes=MAX_REASONING_BYTES),
        _candidates_json(decision.candidates),
        _check_chosen_action(decision.chosen_action),
        _check_tools(decision.tools),
        check_text(decision.outcome, field="decision.outcome", max_bytes=MAX_OUTCOME_BYTES),
        _latency_ns(decision),
        *_usage(decision),
        _check_trace_id(decision.trace_id),
        metadata_json(decision.metadata, field="decision.metadata", max_bytes=MAX_METADATA_BYTES),
    ]


_INSERT: Final = f"""
    INSERT INTO memory.decisions (
        tenant, id, agent, session_id, job_id, input_summary, reasoning, candidates,
        chosen_action, tools, outcome, latency_ns, input_tokens, output_tokens,
        total_tokens, trace_id, metadata
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12, $13, $14, $15, $16,
            $17::jsonb)
    RETURNING {_COLUMNS}
"""


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
    if not value.startswith(prefix) or not ID_PATTERN.match(value[len(prefix) :]):
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


class Where:  # also used by artifacts.py
    """A WHERE clause with numbered parameters, always scoped by tenant ($1), so no
    list query can forget the tenant."""

    def __init__(self, tenant: str, *, column: str = "tenant") -> None:
        self.clauses = [f"{column} = $1"]
        self.args: list[Any] = [tenant]

    def add(self, template: str, *values: Any) -> None:
        """Adds `template` with `{}` placeholders for the next parameters."""
        numbers = [f"${len(self.args) + i + 1}" for i in range(len(values))]
        self.clauses.append(template.format(*numbers))
        self.args.extend(values)

    @property
    def where(self) -> str:
        return " AND ".join(self.clauses)


def _add_term(query: Where, term: Term) -> None:
    if term.field == "agent":
        query.add("agent = {}", term.value)
    elif term.field == "session":
        query.add("session_id = {}", term.value.split("/", 1)[1])
    elif term.field == "job":
        query.add("job_id = {}", term.value.split("/", 1)[1])
    else:  # create_time; the operator comes from TIME_RANGE's fixed set, never the client
        query.add(f"create_time {term.op} {{}}", timestamp_value(term.value))


def _position(position: dict[str, Any] | None) -> tuple[datetime, str] | None:
    """The (create_time, id) a page starts after; a forged token is INVALID_ARGUMENT."""
    if position is None:
        return None
    try:
        after_time = timestamp_value(str(position["t"]))
        after_id = str(position["id"])
    except (KeyError, ValueError):
        raise InvalidArgument("page_token", "not a page token issued by this method") from None
    if not ID_PATTERN.match(after_id):
        raise InvalidArgument("page_token", "not a page token issued by this method")
    return after_time, after_id


class DecisionRpcs(RpcGroup):
    """The decision audit trail: append, get, list.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """

    async def CreateDecision(
        self, request: memory_pb2.CreateDecisionRequest, context: ServicerContext
    ) -> memory_pb2.Decision:
        tenant = self.tenant()
        values = _row_values(request.decision)
        idempotency.validate_request_id(request.request_id)
        async with self.deps.pool.acquire() as conn, conn.transaction():
            replay = await idempotency.claim(
                conn,
                tenant,
                "CreateDecision",
                request.request_id,
                memory_pb2.Decision,
                ttl_s=self.deps.settings.request_id_ttl_s,
                request=request,
            )
            if replay is not None:
                return replay
            row = await conn.fetchrow(_INSERT, tenant, new_id(), *values)
            decision = _to_proto(row)
            await idempotency.remember(conn, tenant, "CreateDecision", request.request_id, decision)
        return decision

    async def GetDecision(
        self, request: memory_pb2.GetDecisionRequest, context: ServicerContext
    ) -> memory_pb2.Decision:
        decision_id = DECISIONS.parse(request.name)
        row = await self.deps.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM memory.decisions WHERE tenant = $1 AND id = $2",
            self.tenant(),
            decision_id,
        )
        if row is None:
            raise NotFound(DECISIONS.resource_type, request.name)
        return _to_proto(row)

    async def ListDecisions(
        self, request: memory_pb2.ListDecisionsRequest, context: ServicerContext
    ) -> memory_pb2.ListDecisionsResponse:
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        terms = parse_filter(request.filter, _FILTER_RULES)
        bound_to = {"filter": request.filter}
        after = _position(decode_page_token(request.page_token, bound_to))
        query = Where(self.tenant())
        for term in terms:
            _add_term(query, term)
        if after is not None:
            query.add("(create_time, id) < ({}, {})", *after)
        rows = await self.deps.pool.fetch(
            f"SELECT {_COLUMNS} FROM memory.decisions WHERE {query.where}"
            f" ORDER BY create_time DESC, id DESC LIMIT {size + 1}",
            *query.args,
        )
        page = rows[:size]
        next_token = ""
        if len(rows) > size:
            last = page[-1]
            next_token = encode_page_token(
                {"t": last["create_time"].isoformat(), "id": last["id"]}, bound_to
            )
        return memory_pb2.ListDecisionsResponse(
            decisions=[_to_proto(row) for row in page], next_page_token=next_token
        )
