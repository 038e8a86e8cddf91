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

Idempotent runs: a run (or resume) carrying a ``request_id`` writes it into the
metadata of every checkpoint it leaves, as it does the agent and run id. When the
thread's latest checkpoint carries the request's id, the request repeats that run: a
run that completed or stopped at an interrupt is answered again from the thread's
state (``Replay``: the reply and output the run's checkpoints added, the pending
interrupt) without running the graph, spending budget or recording a decision; a run
that stopped early continues from its last checkpoint with no input.

The check and the run it admits share one ``run_scope()``: the checkpoint the check
read is the one LangGraph starts from, without reading it again (the Memory-backed
saver's ``read_through``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Final, cast

import structlog
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
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
    message_text,
    to_struct,
    to_value,
    token_event,
    update_events,
)
from agentmesh.agent.runtime.inputs import MODEL_KEY, ResumeRequest, RunInput, input_validator
from agentmesh.agent.runtime.record import RUNS, RunRecord, RunRecorder
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
from agentmesh.llm.usage import UsageCallback
from agentmesh.v1 import agent_pb2, common_pb2

AGENT_METADATA_KEY: Final = "agentmesh_agent"
"""Checkpoint metadata naming the agent whose thread it is."""
REQUEST_METADATA_KEY: Final = "agentmesh_request_id"
"""Checkpoint metadata carrying the idempotency key of the run that wrote it."""
REPLAYED: Final = "replayed"
"""The ``outcome`` of a repeated request answered from the thread's state."""
_log = structlog.get_logger("agentmesh.agent")


@dataclass(frozen=True)
class _ThreadState:
    exists: bool
    owner: str
    interrupts: list[common_pb2.Interrupt]
    unfinished: bool
    request_id: str = ""
    """The idempotency key of the run that wrote the latest checkpoint ("" for none)."""
    run_id: str = ""
    """The id of the run that wrote the latest checkpoint."""
    seen: frozenset[str] = frozenset()
    """Ids of the messages the thread holds."""


@dataclass(frozen=True)
class Replay:
    """A repeated request (same ``request_id`` as the thread's latest run, which ended
    or stopped at an interrupt): that run's result, answered again without running."""

    agent_id: str
    thread_id: str
    result: agent_pb2.RunResult


Prepared = RunInput | ResumeRequest | Replay
"""What a checked request runs: a run, a resume, or the replay of a finished run."""


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
        self._checkpointer = checkpointer
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
        metadata = (state.metadata or {}) if exists else {}
        return _ThreadState(
            exists=exists,
            owner=str(metadata.get(AGENT_METADATA_KEY, "")),
            interrupts=[
                common_pb2.Interrupt(
                    id=str(i.id),
                    value=to_value(i.value),
                    agent=AGENTS.format(agent_id),
                    thread_id=thread_id,
                )
                for i in state.interrupts
            ],
            unfinished=bool(state.next) and not state.interrupts,
            request_id=str(metadata.get(REQUEST_METADATA_KEY, "")),
            run_id=str(metadata.get("run_id", "")),
            seen=_message_ids(state.values),
        )

    async def _replay(self, agent_id: str, thread_id: str, thread: _ThreadState) -> Replay:
        """The result of the thread's latest run (which ended or stopped at an
        interrupt), from its checkpoints: the reply and output written by the runs
        that carried its request id, compared with the checkpoint before them."""
        assert self._checkpointer is not None  # a thread exists, so Memory does
        latest: CheckpointTuple | None = None
        before: CheckpointTuple | None = None
        # Newest first, the root graph's only; closed once the run's are read.
        listed = cast(
            "AsyncGenerator[CheckpointTuple]",
            self._checkpointer.alist(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
            ),
        )
        async with aclosing(listed) as checkpoints:
            async for found in checkpoints:
                if found.metadata.get(REQUEST_METADATA_KEY) != thread.request_id:
                    before = found
                    break
                latest = latest or found
        result = replayed_result(thread.run_id, thread_id, latest, before)
        if thread.interrupts:
            result.status = agent_pb2.RUN_STATUS_INTERRUPTED
            result.interrupt.CopyFrom(thread.interrupts[0])
        return Replay(agent_id=agent_id, thread_id=thread_id, result=result)

    async def _repeat(
        self, agent_id: str, thread_id: str, request_id: str, thread: _ThreadState
    ) -> Replay | None:
        """The replay of the run ``request_id`` repeats when it ended or stopped at an
        interrupt; None when the request runs (after the tenant's budget admits it)."""
        if request_id and request_id == thread.request_id and not thread.unfinished:
            return await self._replay(agent_id, thread_id, thread)
        if request_id:
            await self._admit()  # a request without a key was admitted before the read
        return None

    async def prepare_run(self, run: RunInput) -> RunInput | Replay:
        """What the run does: refused when its thread waits on an interrupt or belongs
        to another agent; with the request id of the thread's latest run, that run's
        replay, or its continuation (no input) when it stopped early."""
        self.check_needs(run.agent_id, run.model)
        if not run.thread_id:
            await self._admit()
            self._graph(run.agent_id, "")
            return run
        if not run.request_id:
            await self._admit()
        thread = await self._pending(run.agent_id, run.thread_id)
        _check_owner(run.agent_id, run.thread_id, thread.owner, thread.exists)
        replay = await self._repeat(run.agent_id, run.thread_id, run.request_id, thread)
        if replay is not None:
            return replay
        if run.request_id and run.request_id == thread.request_id:
            # Continues the run it repeats.
            return replace(run, graph_input=None, seen_messages=thread.seen)
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
        return replace(run, seen_messages=thread.seen)

    async def prepare_resume(self, resume: ResumeRequest) -> ResumeRequest | RunInput | Replay:
        """What the resume does: refused when its thread does not exist (NOT_FOUND),
        waits on nothing, or waits on another interrupt (FAILED_PRECONDITION); with
        the request id of the thread's latest run (the resume already consumed its
        interrupt), that run's replay, or its continuation when it stopped early."""
        self.check_needs(resume.agent_id, resume.model)
        if not resume.request_id:
            await self._admit()
        thread = await self._pending(resume.agent_id, resume.thread_id)
        if not thread.exists:
            raise NotFound("thread", resume.thread_id)
        _check_owner(resume.agent_id, resume.thread_id, thread.owner, thread.exists)
        replay = await self._repeat(resume.agent_id, resume.thread_id, resume.request_id, thread)
        if replay is not None:
            return replay
        if resume.request_id and resume.request_id == thread.request_id:
            return replace(resume.continued(), seen_messages=thread.seen)
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
        return replace(resume, seen_messages=thread.seen)

    async def stream(
        self,
        run: Prepared,
        *,
        timeout_s: float,
    ) -> AsyncIterator[agent_pb2.AgentEvent]:
        """The run's events, numbered from 1, ending with ``final``; raises the run's
        error (DeadlineExceeded past ``timeout_s``) after the events it produced. The
        run is recorded (decision, metrics) however it ends; a replay is only counted
        (outcome ``replayed``): its run was recorded when it ran."""
        if isinstance(run, Replay):
            for event in _replay_events(run):
                yield event
            return
        run_id = str(uuid.uuid4())
        model = self.model_for(run.agent_id, run.model)
        configurable: dict[str, Any] = {MODEL_KEY: model}
        if run.thread_id:
            configurable["thread_id"] = run.thread_id
        metadata: dict[str, Any] = {AGENT_METADATA_KEY: run.agent_id, "run_id": run_id}
        if run.request_id:  # LangGraph copies it into each checkpoint's metadata
            metadata[REQUEST_METADATA_KEY] = run.request_id
        calls = UsageCallback()  # every model call's tokens, failed attempts too
        config: RunnableConfig = {
            "recursion_limit": run.max_steps,
            "run_id": uuid.UUID(run_id),
            "metadata": metadata,
            "configurable": configurable,
            "callbacks": [calls],
        }
        numbered = _Numbering(run_id, run.thread_id, AGENTS.format(run.agent_id))
        trace = RunTrace(seen_messages=set(run.seen_messages), agent_id=run.agent_id)
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
            # The graph has ended: that is the run's outcome even if the client leaves
            # before the last events reach it (a repeat of the run replays them).
            outcome = "interrupted" if trace.interrupts else "completed"
            trace.count_calls(calls.meter)
            usage = trace.usage()
            if usage.total_tokens:
                yield numbered(agent_pb2.AgentEvent(usage=usage))
            yield numbered(agent_pb2.AgentEvent(final=_result(run_id, run.thread_id, trace)))
        except DomainError as exc:
            outcome = f"error: {exc.reason.lower()}"
            raise
        except Exception:
            outcome = "error: internal"
            raise
        finally:
            structlog.contextvars.reset_contextvars(**bound)
            trace.count_calls(calls.meter)  # a failed run's tokens count against budgets
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


def _replay_events(replay: Replay) -> Iterable[agent_pb2.AgentEvent]:
    """A replay's events: the interrupt it stopped at (if any), then ``final``."""
    result = replay.result
    RUNS.labels(replay.agent_id, REPLAYED).inc()
    span = otel_trace.get_current_span()
    span.set_attribute("agentmesh.agent", replay.agent_id)
    span.set_attribute("agentmesh.run_id", result.run_id)
    span.set_attribute("agentmesh.thread_id", replay.thread_id)
    _log.info(
        "run replayed", agent=replay.agent_id, run_id=result.run_id, thread_id=replay.thread_id
    )
    numbered = _Numbering(result.run_id, replay.thread_id, AGENTS.format(replay.agent_id))
    if result.HasField("interrupt"):
        yield numbered(agent_pb2.AgentEvent(interrupt=result.interrupt))
    yield numbered(agent_pb2.AgentEvent(final=result))


def _values(found: CheckpointTuple | None) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """A checkpoint's channel values and versions (empty for none)."""
    if found is None:
        return {}, {}
    checkpoint = found.checkpoint
    return checkpoint.get("channel_values", {}), checkpoint.get("channel_versions", {})


def _messages(values: Mapping[str, Any]) -> list[BaseMessage]:
    messages = values.get("messages")
    if isinstance(messages, list | tuple):
        return [m for m in messages if isinstance(m, BaseMessage)]
    return []


def replayed_result(
    run_id: str, thread_id: str, latest: CheckpointTuple | None, before: CheckpointTuple | None
) -> agent_pb2.RunResult:
    """The COMPLETED result a run left on its thread, as its ``final`` event said it:
    the text of the last AI message ``latest`` holds that ``before`` (the checkpoint
    before the run) did not, and the ``output`` key when the run wrote it. Usage is
    empty: the run's tokens were counted when it ran."""
    values, versions = _values(latest)
    earlier, earlier_versions = _values(before)
    known = {m.id for m in _messages(earlier) if m.id}
    reply = ""
    for message in _messages(values):
        if isinstance(message, AIMessage) and message.id not in known:
            reply = message_text(message) or reply
    result = agent_pb2.RunResult(
        run_id=run_id,
        thread_id=thread_id,
        status=agent_pb2.RUN_STATUS_COMPLETED,
        parts=[common_pb2.Part(text=reply)] if reply else [],
        usage=common_pb2.TokenUsage(),
    )
    output = values.get("output")
    if isinstance(output, Mapping) and versions.get("output") != earlier_versions.get("output"):
        result.output.CopyFrom(to_struct(output))
    return result


def _message_ids(values: Any) -> frozenset[str]:
    messages = values.get("messages") if isinstance(values, Mapping) else None
    if not isinstance(messages, list):
        return frozenset()
    return frozenset(m.id for m in messages if getattr(m, "id", None))


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
