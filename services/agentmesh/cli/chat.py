"""``agentmesh chat``: a session's conversation through the Conductor's Converse stream.

Interactive at a prompt, or one turn for a script (``--message``). Each turn shows the
routing decision (which agent answers and why), the answer as it streams, tool calls,
and the turn's end; an interrupt is answered at the prompt and sent as ``resume``.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Final

import grpc
import typer
from google.protobuf import json_format, struct_pb2

from agentmesh.cli.common import JsonFlag, enum_label, mesh_of, part_text, resource_name
from agentmesh.cli.errors import EXIT_FAILED, code_name, describe
from agentmesh.cli.mesh import Mesh
from agentmesh.cli.output import Output, value_json
from agentmesh.cli.turn import follow_turn
from agentmesh.v1 import agent_pb2, common_pb2, conductor_pb2

STREAM_DEADLINE_S: Final = 300.0
"""Deadline of one Converse or WatchConversation stream; a longer turn resumes after it."""
EXIT_COMMANDS: Final = frozenset({"/exit", "/quit"})
HELP: Final = (
    "Type a message and press Enter. /agent NAME talks to one agent (/agent alone lets the"
    " Conductor route again); /input JSON sends structured input with the next message;"
    " /exit or end of input (Ctrl-D) leaves."
)


def new_session_id() -> str:
    """A fresh session id (a letter, then lower-case hex: a valid resource id)."""
    return f"chat-{uuid.uuid4().hex[:12]}"


def answer_value(text: str) -> struct_pb2.Value:
    """A typed answer as the JSON value sent in ``resume``: JSON when it parses
    (``true``, ``{"approved": false}``), else the text itself (``yes``)."""
    value = struct_pb2.Value()
    try:
        json_format.Parse(text, value)
    except json_format.ParseError:
        value.string_value = text
    return value


def parse_input(text: str, param_hint: str) -> struct_pb2.Struct:
    """``--input`` / ``/input``: a JSON object."""
    data = struct_pb2.Struct()
    try:
        json_format.Parse(text, data)
    except json_format.ParseError as exc:
        raise typer.BadParameter(f"expected a JSON object: {exc}", param_hint=param_hint) from exc
    return data


def question_of(interrupt: common_pb2.Interrupt) -> str:
    """What an interrupt asks: its ``question`` when it has one, else its payload."""
    value = interrupt.value
    if value.WhichOneof("kind") == "string_value":
        return value.string_value
    question = value.struct_value.fields.get("question")
    if question is not None and question.WhichOneof("kind") == "string_value":
        return question.string_value
    return value_json(value)


@dataclass
class Printer:
    """Shows a turn's events as a person reads them (or as JSON lines)."""

    out: Output
    verbose: bool
    midline: bool = False
    """True while a streamed answer is being written (no line end yet)."""
    streamed: set[str] = field(default_factory=set)
    """Turns whose answer arrived as deltas: their final text is not printed again."""

    def end_line(self) -> None:
        if self.midline:
            self.out.write("\n")
            self.midline = False

    def event(self, event: conductor_pb2.ConverseEvent) -> None:
        if self.out.json_lines:
            self.out.message(event)
            return
        kind = event.WhichOneof("event")
        if kind == "routing":
            self._routing(event.routing)
        elif kind == "agent_event":
            self._agent_event(event.turn_id, event.agent_event)
        elif kind == "final":
            self._final(event.turn_id, event.final)
        elif kind == "interrupt":
            self.end_line()
            interrupt = event.interrupt
            asks = question_of(interrupt)
            self.out.line(f"{interrupt.agent or 'the agent'} asks: {asks}", style="magenta")
            if interrupt.value.WhichOneof("kind") == "struct_value":
                self.out.line(f"  {value_json(interrupt.value)}", style="dim")
        elif kind == "error":
            self.end_line()
            message = f"{code_name(event.error.code)}: {event.error.message}"
            self.out.line(f"error: {message}", style="red")
        elif kind is not None:
            self.end_line()
            self.out.line(f"{kind}: {json.dumps(json_format.MessageToDict(event))}")

    def _routing(self, routing: conductor_pb2.RoutingDecision) -> None:
        self.end_line()
        strategy = enum_label(
            conductor_pb2.RoutingStrategy.Name(routing.strategy), "ROUTING_STRATEGY_"
        )
        line = f"→ {routing.agent} ({strategy})"
        if routing.reason:
            line += f": {routing.reason}"
        self.out.line(line, style="cyan")
        if self.verbose:
            for candidate in routing.candidates:
                reason = f"  {candidate.reason}" if candidate.reason else ""
                self.out.line(f"  {candidate.score:.3f}  {candidate.name}{reason}", style="dim")

    def _agent_event(self, turn_id: str, event: agent_pb2.AgentEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "message_delta":
            if not self.midline:
                self.out.write(f"{event.agent}: ", style="bold")
                self.midline = True
            self.out.write(event.message_delta.text)
            self.streamed.add(turn_id)
        elif kind == "tool_call":
            self.end_line()
            arguments = value_json(event.tool_call.arguments)
            self.out.line(f"  tool {event.tool_call.tool} {arguments}", style="dim")
        elif kind == "tool_result":
            self.end_line()
            result = " ".join(part_text(p) for p in event.tool_result.parts)
            if event.tool_result.HasField("error"):
                result = f"error: {event.tool_result.error.message}"
            self.out.line(f"  {event.tool_result.tool} → {result}", style="dim")
        elif kind == "handoff":
            self.end_line()
            handoff = event.handoff
            self.out.line(
                f"→ {handoff.to_agent} (HANDOFF from {handoff.from_agent}): {handoff.reason}",
                style="cyan",
            )
        elif kind == "final" and self.verbose and event.final.output.fields:
            self.end_line()
            self.out.line(f"  output: {value_json(event.final.output)}", style="dim")
        # The run's own interrupt, final and error come again as the turn's events.

    def _final(self, turn_id: str, final: conductor_pb2.FinalMessage) -> None:
        text = " ".join(part_text(p) for p in final.parts)
        if turn_id in self.streamed:
            self.end_line()
        else:
            self.out.line(f"{final.agent}: {text}")
        if self.verbose and final.usage.total_tokens:
            usage = final.usage
            self.out.line(
                f"  tokens: {usage.input_tokens} in, {usage.output_tokens} out", style="dim"
            )


@dataclass
class Conversation:
    """One session's conversation as this invocation holds it."""

    mesh: Mesh
    session: str
    printer: Printer
    stream_deadline_s: float
    create: bool
    """Ask to create the session with the next turn (true until one turn was sent)."""

    def turn(self, request: conductor_pb2.ConverseRequest) -> conductor_pb2.ConverseEvent:
        """Sends one turn and follows it to its end; returns its last event."""
        request.session = self.session
        request.request_id = str(uuid.uuid4())
        if self.create and not request.HasField("resume"):
            request.create_session = True
        mesh = self.mesh
        out = mesh.output

        def open_converse() -> Iterable[conductor_pb2.ConverseEvent]:
            return mesh.conductor.Converse(
                request, metadata=mesh.metadata, timeout=self.stream_deadline_s
            )

        def open_watch(after_sequence: int) -> Iterable[conductor_pb2.ConverseEvent]:
            return mesh.conductor.WatchConversation(
                conductor_pb2.WatchConversationRequest(
                    session=self.session, after_sequence=after_sequence
                ),
                metadata=mesh.metadata,
                timeout=self.stream_deadline_s,
            )

        def on_resume(after_sequence: int, why: str) -> None:
            self.printer.end_line()
            out.note(
                f"agentmesh: conversation stream ended ({why}); resuming after event"
                f" {after_sequence}"
            )

        last = follow_turn(open_converse, open_watch, self.printer.event, on_resume)
        self.create = False
        return last


def _read(prompt: str) -> str | None:
    """One line typed at ``prompt``; None at end of input or Ctrl-C."""
    try:
        return input(prompt)
    except (EOFError, KeyboardInterrupt):
        print(flush=True)
        return None


@dataclass
class Prompt:
    """What the next line typed means: a message (to ``agent``, with ``pending_input``)
    or, while ``interrupt`` is set, the answer to it."""

    out: Output
    agent: str
    pending_input: struct_pb2.Struct | None
    interrupt: common_pb2.Interrupt | None = None

    def command(self, line: str) -> None:
        """A ``/command`` line."""
        command, _, argument = line.partition(" ")
        argument = argument.strip()
        if command == "/agent":
            self.agent = resource_name("agents", argument) if argument else ""
            self.out.note(
                f"talking to {self.agent}" if self.agent else "the Conductor routes each message"
            )
        elif command == "/input":
            try:
                self.pending_input = parse_input(argument, "/input")
            except typer.BadParameter as exc:
                self.out.note(f"agentmesh: {exc.format_message()}")
        else:
            self.out.note(HELP)

    def request(self, line: str) -> conductor_pb2.ConverseRequest:
        """The turn a typed line asks for."""
        if self.interrupt is not None:
            resume = common_pb2.ResumeInput(
                interrupt_id=self.interrupt.id, answer=answer_value(line)
            )
            return conductor_pb2.ConverseRequest(resume=resume)
        request = conductor_pb2.ConverseRequest(
            parts=[common_pb2.Part(text=line)], agent=self.agent
        )
        if self.pending_input is not None:
            request.input.CopyFrom(self.pending_input)
        return request

    def ended(self, last: conductor_pb2.ConverseEvent) -> None:
        """A turn ended with ``last``: the next line answers its interrupt, if any."""
        self.pending_input = None
        self.interrupt = last.interrupt if last.WhichOneof("event") == "interrupt" else None


def _interactive(conversation: Conversation, prompt: Prompt) -> None:
    conversation.mesh.output.note(HELP)
    while True:
        line = _read("answer> " if prompt.interrupt is not None else "you> ")
        if line is None:
            return
        line = line.strip()
        if line in EXIT_COMMANDS:
            return
        if not line:
            continue
        if prompt.interrupt is None and line.startswith("/"):
            prompt.command(line)
            continue
        try:
            last = conversation.turn(prompt.request(line))
        except grpc.RpcError as error:
            # The turn was refused or lost; the conversation goes on.
            conversation.printer.end_line()
            print(f"agentmesh: {describe(error)}", file=sys.stderr, flush=True)
            continue
        prompt.ended(last)


def chat(
    ctx: typer.Context,
    session: Annotated[
        str,
        typer.Option(
            "--session",
            help="`ID` or `sessions/ID`; created on first use. Without it, a new session.",
        ),
    ] = "",
    agent: Annotated[
        str,
        typer.Option(
            "--agent", help="Talk to this agent (`echo` or `agents/echo`) instead of routing."
        ),
    ] = "",
    message: Annotated[
        str,
        typer.Option("--message", "-m", help="Send this one message, print the turn, exit."),
    ] = "",
    input_: Annotated[
        str,
        typer.Option("--input", help="Structured input with the (first) message: a JSON object."),
    ] = "",
    interrupt: Annotated[
        str,
        typer.Option(
            "--interrupt",
            help="Answer this pending interrupt (its id): with --answer, or at the prompt.",
        ),
    ] = "",
    answer: Annotated[
        str,
        typer.Option(
            "--answer", help="With --interrupt: this answer (JSON, or text), one turn, exit."
        ),
    ] = "",
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show routing scores and token usage.")
    ] = False,
    stream_deadline_s: Annotated[
        float,
        typer.Option(
            "--stream-deadline-s",
            min=0.1,
            help="Renew a turn's stream after this long (it resumes where it was).",
        ),
    ] = STREAM_DEADLINE_S,
    json_lines: JsonFlag = False,
) -> None:
    """Talk with the agents: each message is routed to an agent (or --agent) and the
    answer streams back. Interactive unless --message (or --answer) is given."""
    if answer and not interrupt:
        raise typer.BadParameter("needs --interrupt, the id of the interrupt it answers")
    if interrupt and not session:
        raise typer.BadParameter("needs --session, the session whose turn waits")
    if interrupt and (message or agent or input_):
        raise typer.BadParameter(
            "not with --message, --agent or --input: an answer continues the paused turn",
            param_hint="--interrupt",
        )
    mesh = mesh_of(ctx, json_lines)
    out = mesh.output
    structured = parse_input(input_, "--input") if input_ else None
    if not session:
        session = new_session_id()
        out.note(f"session: sessions/{session} (new)")
    conversation = Conversation(
        mesh=mesh,
        session=resource_name("sessions", session),
        printer=Printer(out, verbose),
        stream_deadline_s=stream_deadline_s,
        create=True,
    )
    target = resource_name("agents", agent) if agent else ""
    prompt = Prompt(out, target, structured)
    if interrupt:
        prompt.interrupt = common_pb2.Interrupt(id=interrupt)
    if not (message or answer):
        _interactive(conversation, prompt)
        return
    last = conversation.turn(prompt.request(answer or message))
    if last.WhichOneof("event") == "interrupt" and not out.json_lines:
        out.note(
            f"the turn waits for an answer: agentmesh chat --session {session}"
            f" --interrupt {last.interrupt.id} [--answer ANSWER]"
        )
    if last.WhichOneof("event") == "error":
        raise typer.Exit(EXIT_FAILED)
