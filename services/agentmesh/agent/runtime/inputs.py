"""A run request, checked before anything runs: every field bounded, the structured
input valid against the agent's input schema (each schema error a field violation),
the parts turned into the user's message."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import json_format, struct_pb2

from agentmesh.agent.settings import AgentSettings
from agentmesh.core.json_schema import compile_schema, schema_violations
from agentmesh.core.json_schema import whole_numbers as _integral
from agentmesh.core.names import JOBS, SESSIONS
from agentmesh.core.run_input import parts_text
from agentmesh.core.validation import NUL, NUL_RULE, Violations
from agentmesh.v1 import agent_pb2, common_pb2

THREAD_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A thread id as clients choose it (e.g. a UUID): 1-128 letters, digits and ``._-``."""
MODEL_KEY: Final = "agentmesh_model"
"""``configurable`` key of the model a run uses: graphs that call a model read it."""
MAX_MODEL_CHARS: Final = 256
REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""A run's idempotency key on its thread: 1-128 characters of ``[A-Za-z0-9._:-]``."""


input_validator = compile_schema
"""The validator of an agent's input schema (None: the agent declares none)."""


@dataclass(frozen=True)
class RunInput:
    """A validated run: what goes into the graph and how it runs."""

    agent_id: str
    thread_id: str
    """Empty: a stateless run (nothing is written)."""
    graph_input: dict[str, Any] | None
    """None: no new input, continue the thread's unfinished run."""
    max_steps: int
    stream_tokens: bool
    model: str
    session: str = ""
    job: str = ""
    summary: str = ""
    """A short text of the input, for the run's decision record."""
    request_id: str = ""
    """The run's idempotency key on its thread; empty: none."""
    seen_messages: frozenset[str] = frozenset()
    """Ids of the messages the thread held before this run: a subgraph's update repeats
    its whole history, and what earlier runs said is not said again."""


@dataclass(frozen=True)
class ResumeRequest:
    """A validated resume: the thread, the interrupt answered and the answer."""

    agent_id: str
    thread_id: str
    interrupt_id: str
    answer: Any
    max_steps: int
    stream_tokens: bool
    model: str
    session: str = ""
    job: str = ""
    summary: str = ""
    request_id: str = ""
    """The resume's idempotency key on its thread; empty: none."""
    seen_messages: frozenset[str] = frozenset()
    """Ids of the messages the thread held before this run: a subgraph's update repeats
    its whole history, and what earlier runs said is not said again."""

    def continued(self) -> RunInput:
        """The run that continues the thread with no input: what a repeat of this
        resume becomes once its interrupt was consumed and its run stopped early."""
        return RunInput(
            agent_id=self.agent_id,
            thread_id=self.thread_id,
            graph_input=None,
            max_steps=self.max_steps,
            stream_tokens=self.stream_tokens,
            model=self.model,
            session=self.session,
            job=self.job,
            summary=self.summary,
            request_id=self.request_id,
            seen_messages=self.seen_messages,
        )


def check_thread_id(thread_id: str, violations: Violations, *, required: bool) -> None:
    if not thread_id:
        if required:
            violations.add("thread_id", "required")
        return
    if not THREAD_ID.fullmatch(thread_id):
        violations.add("thread_id", "1-128 letters, digits and ._- (e.g. a UUID)")


def check_options(
    options: agent_pb2.RunOptions,
    settings: AgentSettings,
    violations: Violations,
    *,
    thread_id: str,
) -> int:
    """The run's step limit; every option checked (``request_id`` needs ``thread_id``)."""
    if not 0 <= options.max_steps <= settings.max_steps:
        violations.add(
            "options.max_steps",
            f"must be 0 (default {settings.default_max_steps}) to {settings.max_steps}",
        )
    if options.session:
        violations.check(lambda: SESSIONS.parse(options.session, field="options.session"))
    if options.job:
        violations.check(lambda: JOBS.parse(options.job, field="options.job"))
    if len(options.model) > MAX_MODEL_CHARS or NUL in options.model:
        violations.add("options.model", f"at most {MAX_MODEL_CHARS} characters, {NUL_RULE}")
    if options.request_id:
        if not REQUEST_ID.fullmatch(options.request_id):
            violations.add("options.request_id", "1-128 characters of A-Z a-z 0-9 . _ : -")
        elif not thread_id:
            violations.add(
                "options.request_id",
                "needs a thread_id: a run without a thread keeps nothing to answer a repeat from",
            )
    return options.max_steps or settings.default_max_steps


def _input_size(input_: struct_pb2.Struct, parts: Sequence[common_pb2.Part]) -> int:
    return input_.ByteSize() + sum(part.ByteSize() for part in parts)


def validate_run(
    agent_id: str,
    request: agent_pb2.InvokeAgentRequest | agent_pb2.StreamAgentRequest,
    validator: Any,
    settings: AgentSettings,
) -> RunInput:
    """The run ``request`` asks for, or INVALID_ARGUMENT naming every bad field;
    ``validator`` is the agent's (:func:`input_validator`)."""
    violations = Violations()
    check_thread_id(request.thread_id, violations, required=False)
    steps = check_options(request.options, settings, violations, thread_id=request.thread_id)
    size = _input_size(request.input, request.parts)
    if size > settings.max_input_bytes:
        violations.add("input", f"{size} bytes with the parts; at most {settings.max_input_bytes}")
        violations.raise_if_any()
    structured = _integral(json_format.MessageToDict(request.input))
    schema_violations(structured, validator, violations, field="input")
    text = parts_text(request.parts, violations)
    if not structured and not text and not request.thread_id:
        violations.add("parts", "give the run something: parts (a message) or input")
    violations.raise_if_any()
    graph_input: dict[str, Any] | None = dict(structured)
    if text:
        graph_input = {**structured, "messages": [{"role": "user", "content": text}]}
    if not structured and not text:
        graph_input = None  # on a thread: continue its unfinished run
    return RunInput(
        agent_id=agent_id,
        thread_id=request.thread_id,
        graph_input=graph_input,
        max_steps=steps,
        stream_tokens=request.options.stream_tokens,
        model=request.options.model,
        session=request.options.session,
        job=request.options.job,
        summary=(text or json.dumps(structured, sort_keys=True) if structured or text else "")[
            :512
        ],
        request_id=request.options.request_id,
    )


def validate_resume(
    agent_id: str, request: agent_pb2.ResumeAgentRequest, settings: AgentSettings
) -> ResumeRequest:
    """The resume ``request`` asks for, or INVALID_ARGUMENT naming every bad field."""
    violations = Violations()
    check_thread_id(request.thread_id, violations, required=True)
    steps = check_options(request.options, settings, violations, thread_id=request.thread_id)
    resume = request.resume
    if not request.HasField("resume"):
        violations.add("resume", "required: the interrupt id and the answer")
    else:
        violations.text(resume.interrupt_id, "resume.interrupt_id", required=True, max_chars=128)
        if not resume.HasField("answer"):
            violations.add("resume.answer", "required (any JSON value)")
        elif resume.answer.ByteSize() > settings.max_input_bytes:
            violations.add("resume.answer", f"at most {settings.max_input_bytes} bytes")
    violations.raise_if_any()
    return ResumeRequest(
        agent_id=agent_id,
        thread_id=request.thread_id,
        interrupt_id=resume.interrupt_id,
        answer=_integral(json_format.MessageToDict(resume.answer)),
        max_steps=steps,
        stream_tokens=request.options.stream_tokens,
        model=request.options.model,
        session=request.options.session,
        job=request.options.job,
        summary=f"resume {resume.interrupt_id}",
        request_id=request.options.request_id,
    )
