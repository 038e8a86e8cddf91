"""Runs agents: the compiled graphs of one process, and one run as a stream of events.

Each agent's graph is compiled twice at start: with the Memory-backed checkpointer and
store (runs on a thread: any replica continues them) and without a checkpointer
(stateless runs: nothing is written). The process keeps no run state of its own.

A run streams LangGraph's ``updates`` (and ``messages`` when tokens are asked for),
converted by ``runtime.events``; it ends with a ``final`` event carrying the
RunResult. Before a threaded run starts, the thread's state is read: a thread that
waits on an interrupt takes a resume, not a new input (FAILED_PRECONDITION); a thread
another agent started is refused; a thread whose last run stopped before its end (its
process died) continues from its last checkpoint when invoked with no input, and
completed steps do not run again. Client cancellation cancels the task that
iterates the graph, which stops it; a run also stops at its deadline.

The check and the run it admits share one ``run_scope()``: the checkpoint the check
read is the one LangGraph starts from, without reading it again (the Memory-backed
saver's ``read_through``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import GraphRecursionError
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from langgraph.store.base import BaseStore
from langgraph.types import Command, StreamMode
from opentelemetry import trace as otel_trace

from agentmesh.agent.definition import AgentDefinition
from agentmesh.agent.registry import AgentCard
from agentmesh.agent.runtime.budgets import TenantBudgets
from agentmesh.agent.runtime.events import (
    INTERRUPT_KEY,
    RunTrace,
    interrupt_events,
    to_struct,
    token_event,
    update_events,
)
from agentmesh.agent.runtime.inputs import MODEL_KEY, ResumeRequest, RunInput, input_validator
from agentmesh.agent.runtime.record import RunRecord, RunRecorder
from agentmesh.core.context import current_tenant, current_trace_id
from agentmesh.core.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from agentmesh.core.names import AGENTS
from agentmesh.langgraph import AgentmeshSaver
from agentmesh.llm.errors import domain_error as provider_error
from agentmesh.v1 import agent_pb2, common_pb2

AGENT_METADATA_KEY: Final = "agentmesh_agent"
"""Checkpoint metadata naming the agent whose thread it is."""


@dataclass(frozen=True)
class _ThreadState:
    exists: bool
    owner: str
    interrupts: list[common_pb2.Interrupt]
    unfinished: bool


@dataclass(frozen=True)
class _Compiled:
    card: AgentCard
    needs: frozenset[str]
    validator: Any
    threaded: Pregel[Any, Any, Any, Any] | None
    stateless: Pregel[Any, Any, Any, Any]


def _compile(
    graph: Any, checkpointer: BaseCheckpointSaver[Any] | None, store: BaseStore | None
) -> Pregel[Any, Any, Any, Any]:
    if isinstance(graph, StateGraph):
        compiled: Pregel[Any, Any, Any, Any] = graph.compile(checkpointer=checkpointer, store=store)
        return compiled
    copied: Pregel[Any, Any, Any, Any] = graph.copy(
        update={"checkpointer": checkpointer, "store": store}
    )
    return copied


class Runner:
    """The agents of this process, compiled, and their runs."""

    def __init__(
        self,
        definitions: Iterable[AgentDefinition],
        *,
        checkpointer: BaseCheckpointSaver[Any] | None,
        store: BaseStore | None,
        default_model: str = "",
        recorder: RunRecorder | None = None,
        budgets: TenantBudgets | None = None,
    ) -> None:
        self._budgets = budgets
        self._default_model = default_model
        self._recorder = recorder or RunRecorder(None)
        self._memory = checkpointer is not None
        self._saver = checkpointer if isinstance(checkpointer, AgentmeshSaver) else None
        self._agents: dict[str, _Compiled] = {}
        for definition in definitions:
            card = definition.card
            self._agents[card.agent_id] = _Compiled(
                card=card,
                needs=definition.needs,
                validator=input_validator(card.input_schema),
                threaded=(
                    _compile(definition.graph, checkpointer, store)
                    if checkpointer is not None
                    else None
                ),
                stateless=_compile(definition.graph, None, store),
            )

    def card(self, agent_id: str) -> AgentCard | None:
        """The card of a runnable agent, or None."""
        compiled = self._agents.get(agent_id)
        return compiled.card if compiled is not None else None

    def validator(self, agent_id: str) -> Any:
        """The agent's input validator (None: no schema)."""
        return self._agents[agent_id].validator

    def model_for(self, agent_id: str, requested: str) -> str:
        """The model a run uses: the request's, the agent's default, or the deployment's."""
        return requested or self._agents[agent_id].card.default_model or self._default_model

    def check_needs(self, agent_id: str, model: str) -> None:
        """FAILED_PRECONDITION naming the setting when the agent needs what this
        deployment lacks."""
        needs = self._agents[agent_id].needs
        if "model" in needs and not self.model_for(agent_id, model):
            raise FailedPrecondition(
                "LLM_NOT_CONFIGURED",
                f"{AGENTS.format(agent_id)} needs a model and none is configured: set"
                " AGENTMESH_LLM_DEFAULT_MODEL (e.g. openai:gpt-4.1-mini, or with"
                " AGENTMESH_LLM_OPENAI_BASE_URL a local Ollama or vLLM model) or give"
                " options.model",
                [("SETTING", "AGENTMESH_LLM_DEFAULT_MODEL", "no model configured")],
            )
        if "memory" in needs and not self._memory:
            raise FailedPrecondition(
                "NO_MEMORY",
                f"{AGENTS.format(agent_id)} needs the Memory service: set AGENTMESH_MEMORY_ADDR",
            )

    @asynccontextmanager
    async def run_scope(self) -> AsyncIterator[None]:
        """Around one run's check (``prepare_run``/``prepare_resume``) and the run
        (``stream``): the thread's checkpoint is read from Memory once for both."""
        if self._saver is None:
            yield
            return
        async with self._saver.read_through():
            yield

    async def _admit(self) -> None:
        """The tenant's run and token budgets (RESOURCE_EXHAUSTED past them)."""
        if self._budgets is not None:
            await self._budgets.admit_run(current_tenant())

    def _graph(self, agent_id: str, thread_id: str) -> Pregel[Any, Any, Any, Any]:
        compiled = self._agents[agent_id]
        if not thread_id:
            return compiled.stateless
        if compiled.threaded is None:
            raise FailedPrecondition(
                "NO_MEMORY",
                "runs on a thread need the Memory service: set AGENTMESH_MEMORY_ADDR"
                " (runs without thread_id work without it)",
            )
        return compiled.threaded

    async def _pending(self, agent_id: str, thread_id: str) -> _ThreadState:
        """What the thread's latest checkpoint says: whether it exists, its agent, its
        pending interrupts, and whether a run stopped before its end (a crash)."""
        graph = self._graph(agent_id, thread_id)
        state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
        exists = state.created_at is not None
        return _ThreadState(
            exists=exists,
            owner=str((state.metadata or {}).get(AGENT_METADATA_KEY, "")) if exists else "",
            interrupts=[
                common_pb2.Interrupt(id=str(i.id), thread_id=thread_id) for i in state.interrupts
            ],
            unfinished=bool(state.next) and not state.interrupts,
        )

    async def prepare_run(self, run: RunInput) -> None:
        """Refuses a threaded run whose thread waits on an interrupt or belongs to
        another agent."""
        self.check_needs(run.agent_id, run.model)
        await self._admit()
        if not run.thread_id:
            self._graph(run.agent_id, "")
            return
        thread = await self._pending(run.agent_id, run.thread_id)
        _check_owner(run.agent_id, run.thread_id, thread.owner, thread.exists)
        if thread.interrupts:
            raise FailedPrecondition(
                "THREAD_INTERRUPTED",
                f"thread {run.thread_id!r} waits on interrupt {thread.interrupts[0].id!r}:"
                " answer it with ResumeAgent",
                [("INTERRUPT", run.thread_id, "a pending interrupt")],
            )
        if thread.unfinished and run.graph_input is not None:
            raise FailedPrecondition(
                "UNFINISHED_RUN",
                f"thread {run.thread_id!r} has a run that stopped before its end (its"
                " process died): invoke it with no input to continue it from its last"
                " checkpoint",
            )
        if not thread.unfinished and run.graph_input is None:
            raise InvalidArgument(
                "parts",
                "give the run something: parts (a message) or input"
                " (a thread continues without input only after a run stopped early)",
            )

    async def prepare_resume(self, resume: ResumeRequest) -> None:
        """Refuses a resume of a thread that does not exist (NOT_FOUND), waits on
        nothing, or waits on another interrupt (FAILED_PRECONDITION)."""
        self.check_needs(resume.agent_id, resume.model)
        await self._admit()
        thread = await self._pending(resume.agent_id, resume.thread_id)
        if not thread.exists:
            raise NotFound("thread", resume.thread_id)
        _check_owner(resume.agent_id, resume.thread_id, thread.owner, thread.exists)
        if not thread.interrupts:
            raise FailedPrecondition(
                "NO_PENDING_INTERRUPT", f"thread {resume.thread_id!r} waits on no interrupt"
            )
        if resume.interrupt_id not in {i.id for i in thread.interrupts}:
            raise FailedPrecondition(
                "INTERRUPT_MISMATCH",
                f"thread {resume.thread_id!r} waits on interrupt"
                f" {thread.interrupts[0].id!r}, not {resume.interrupt_id!r}",
            )

    async def stream(
        self,
        run: RunInput | ResumeRequest,
        *,
        timeout_s: float,
    ) -> AsyncIterator[agent_pb2.AgentEvent]:
        """The run's events, numbered from 1, ending with ``final``; raises the run's
        error (DeadlineExceeded past ``timeout_s``) after the events it produced. The
        run is recorded (decision, metrics) however it ends."""
        run_id = str(uuid.uuid4())
        model = self.model_for(run.agent_id, run.model)
        configurable: dict[str, Any] = {MODEL_KEY: model}
        if run.thread_id:
            configurable["thread_id"] = run.thread_id
        config: RunnableConfig = {
            "recursion_limit": run.max_steps,
            "run_id": uuid.UUID(run_id),
            "metadata": {AGENT_METADATA_KEY: run.agent_id, "run_id": run_id},
            "configurable": configurable,
        }
        numbered = _Numbering(run_id, run.thread_id, AGENTS.format(run.agent_id))
        trace = RunTrace()
        started = time.monotonic()
        outcome = "error: cancelled"
        # The call's span and every log line of the run name the run and its thread.
        span = otel_trace.get_current_span()
        span.set_attribute("agentmesh.agent", run.agent_id)
        span.set_attribute("agentmesh.run_id", run_id)
        span.set_attribute("agentmesh.thread_id", run.thread_id)
        bound = structlog.contextvars.bind_contextvars(
            agent=run.agent_id, run_id=run_id, thread_id=run.thread_id
        )
        try:
            async for event in self._graph_events(run, config, trace, timeout_s):
                yield numbered(event)
            usage = trace.usage()
            if usage.total_tokens:
                yield numbered(agent_pb2.AgentEvent(usage=usage))
            outcome = "interrupted" if trace.interrupts else "completed"
            yield numbered(agent_pb2.AgentEvent(final=_result(run_id, run.thread_id, trace)))
        except DomainError as exc:
            outcome = f"error: {exc.reason.lower()}"
            raise
        except Exception:
            outcome = "error: internal"
            raise
        finally:
            structlog.contextvars.reset_contextvars(**bound)
            self._recorder.record(
                RunRecord(
                    agent_id=run.agent_id,
                    run_id=run_id,
                    thread_id=run.thread_id,
                    model=model,
                    session=run.session,
                    job=run.job,
                    input_summary=run.summary,
                    tools=tuple(trace.tools),
                    outcome=outcome,
                    seconds=time.monotonic() - started,
                    usage=trace.usage(),
                    trace_id=current_trace_id() or "",
                )
            )

    async def _graph_events(
        self,
        run: RunInput | ResumeRequest,
        config: RunnableConfig,
        trace: RunTrace,
        timeout_s: float,
    ) -> AsyncIterator[agent_pb2.AgentEvent]:
        """The graph's stream as events (not numbered yet); LangGraph's and the model
        providers' errors as the contract's."""
        graph = self._graph(run.agent_id, run.thread_id)
        agent_name = AGENTS.format(run.agent_id)
        inputs: Any = (
            Command(resume={run.interrupt_id: run.answer})
            if isinstance(run, ResumeRequest)
            else run.graph_input
        )
        modes: list[StreamMode] = ["updates", "messages"] if run.stream_tokens else ["updates"]
        try:
            async with asyncio.timeout(timeout_s):
                async for mode, chunk in graph.astream(inputs, config, stream_mode=modes):
                    if mode == "messages":
                        token = token_event(chunk)
                        if token is not None:
                            yield token
                        continue
                    for node, update in _items(chunk):
                        if node == INTERRUPT_KEY:
                            events = interrupt_events(
                                update, trace, agent=agent_name, thread_id=run.thread_id
                            )
                        else:
                            events = update_events(
                                node, update, trace, whole_messages=not run.stream_tokens
                            )
                        for event in events:
                            yield event
        except TimeoutError:
            raise DeadlineExceeded(
                f"the run took longer than {timeout_s:g} s", reason="RUN_DEADLINE"
            ) from None
        except GraphRecursionError:
            raise FailedPrecondition(
                "MAX_STEPS",
                f"the run took more than {run.max_steps} steps; raise options.max_steps"
                " or check the graph for a loop",
            ) from None
        except Exception as exc:
            mapped = provider_error(exc)  # a model provider's refusal or outage
            if mapped is None:
                raise
            raise mapped from exc


class _Numbering:
    """Stamps a run's events: sequence from 1, run, thread, agent, time."""

    def __init__(self, run_id: str, thread_id: str, agent: str) -> None:
        self._run_id = run_id
        self._thread_id = thread_id
        self._agent = agent
        self._sequence = 0

    def __call__(self, event: agent_pb2.AgentEvent) -> agent_pb2.AgentEvent:
        self._sequence += 1
        event.sequence = self._sequence
        event.run_id = self._run_id
        event.thread_id = self._thread_id
        event.agent = self._agent
        event.time.GetCurrentTime()
        return event


def _items(chunk: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(chunk, Mapping):
        return chunk.items()
    return ()


def _check_owner(agent_id: str, thread_id: str, owner: str, exists: bool) -> None:
    if exists and owner and owner != agent_id:
        raise FailedPrecondition(
            "THREAD_OF_ANOTHER_AGENT",
            f"thread {thread_id!r} belongs to {AGENTS.format(owner)}; use a new thread id",
        )


def _result(run_id: str, thread_id: str, trace: RunTrace) -> agent_pb2.RunResult:
    result = agent_pb2.RunResult(
        run_id=run_id,
        thread_id=thread_id,
        status=(
            agent_pb2.RUN_STATUS_INTERRUPTED if trace.interrupts else agent_pb2.RUN_STATUS_COMPLETED
        ),
        parts=[common_pb2.Part(text=trace.reply)] if trace.reply else [],
        usage=trace.usage(),
    )
    if trace.output is not None:
        result.output.CopyFrom(to_struct(trace.output))
    if trace.interrupts:
        result.interrupt.CopyFrom(trace.interrupts[0])
    return result
