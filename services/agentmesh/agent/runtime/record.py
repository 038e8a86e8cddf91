"""What every run leaves behind: a decision in Memory and the metrics.

The decision (agent, model, tools used, tokens, latency, outcome, trace id, run and
thread) is written to Memory as the caller's tenant after the run ends, in a
background task so the caller does not wait for it; the tasks still running at
shutdown are awaited (``drain``). A decision that cannot be written is logged and
counted, never fails the run. Metrics: runs by agent and outcome, run duration, LLM
tokens by tenant, agent and model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

import structlog
from prometheus_client import Counter, Histogram

from agentmesh.agent.runtime.budgets import TenantBudgets
from agentmesh.core.context import current_tenant
from agentmesh.core.names import AGENTS
from agentmesh.langgraph._client import MemoryClient
from agentmesh.v1 import common_pb2, memory_pb2

RUNS: Final = Counter(
    "agentmesh_agent_runs_total", "Agent runs by agent and outcome.", ("agent", "outcome")
)
RUN_SECONDS: Final = Histogram(
    "agentmesh_agent_run_duration_seconds",
    "Duration of agent runs.",
    ("agent",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
TOKENS: Final = Counter(
    "agentmesh_llm_tokens_total",
    "LLM tokens used by agent runs.",
    ("tenant", "agent", "model", "direction"),
)
DECISIONS_LOST: Final = Counter(
    "agentmesh_agent_decisions_not_recorded_total",
    "Run decisions that could not be written to Memory.",
)
MAX_SUMMARY_CHARS: Final = 512
MAX_PENDING: Final = 1000
"""Decisions being written at once; past it new ones are dropped (and counted)."""

_log = structlog.get_logger("agentmesh.agent")


@dataclass(frozen=True)
class RunRecord:
    """One finished run, as recorded."""

    agent_id: str
    run_id: str
    thread_id: str
    model: str
    session: str
    job: str
    input_summary: str
    tools: tuple[str, ...]
    outcome: str
    seconds: float
    usage: common_pb2.TokenUsage
    trace_id: str


class RunRecorder:
    """Writes decisions in the background and counts runs."""

    def __init__(self, memory: MemoryClient | None, budgets: TenantBudgets | None = None) -> None:
        self._memory = memory
        self._budgets = budgets
        self._pending: set[asyncio.Task[None]] = set()

    def record(self, run: RunRecord) -> None:
        """Counts ``run`` and starts writing its decision (when Memory is configured)."""
        RUNS.labels(run.agent_id, run.outcome).inc()
        RUN_SECONDS.labels(run.agent_id).observe(run.seconds)
        if run.usage.total_tokens:
            tenant = current_tenant()
            model = run.model or "none"
            TOKENS.labels(tenant, run.agent_id, model, "input").inc(run.usage.input_tokens)
            TOKENS.labels(tenant, run.agent_id, model, "output").inc(run.usage.output_tokens)
            if self._budgets is not None:
                self._start(self._budgets.spend_tokens(tenant, run.usage.total_tokens))
        if self._memory is None:
            return
        if len(self._pending) >= MAX_PENDING:
            DECISIONS_LOST.inc()
            return
        self._start(self._write(run))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, run: RunRecord) -> None:
        assert self._memory is not None
        decision = memory_pb2.Decision(
            agent=AGENTS.format(run.agent_id),
            session=run.session,
            job=run.job,
            input_summary=run.input_summary[:MAX_SUMMARY_CHARS],
            chosen_action=AGENTS.format(run.agent_id),
            tools=sorted(set(run.tools))[:100],
            outcome=run.outcome,
            usage=run.usage,
            trace_id=run.trace_id,
        )
        decision.latency.FromNanoseconds(int(run.seconds * 1e9))
        decision.metadata.update(
            {"run_id": run.run_id, "thread_id": run.thread_id, "model": run.model}
        )
        try:
            await self._memory.call(
                self._memory.stub.CreateDecision,
                memory_pb2.CreateDecisionRequest(decision=decision),
            )
        except Exception as exc:  # never fails the run: logged and counted
            DECISIONS_LOST.inc()
            _log.warning("run decision not recorded", run_id=run.run_id, error=repr(exc))

    async def drain(self) -> None:
        """Waits for the decisions being written (at shutdown)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
