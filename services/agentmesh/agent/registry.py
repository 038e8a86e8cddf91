"""The agent registry: the cards of the agents this deployment offers.

Cards are declared in code next to the graphs that implement them, so a card can
never describe an agent that is not deployed. The registry is immutable once
built; every replica builds the same one, so any replica answers for any agent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from google.protobuf import json_format, struct_pb2

from agentmesh.core.names import AGENTS
from agentmesh.v1 import agent_pb2


@dataclass(frozen=True, slots=True)
class Skill:
    """One advertised skill of an agent."""

    id: str
    """Stable identifier, e.g. ``refunds``."""
    display_name: str
    """Human-readable name."""
    description: str
    """What the skill does; read by the router."""
    examples: tuple[str, ...] = ()
    """Example requests it handles; used for routing by similarity."""
    tags: tuple[str, ...] = ()
    """Free tags."""


@dataclass(frozen=True, slots=True)
class AgentCard:
    """What the registry knows about one agent."""

    agent_id: str
    """The id in ``agents/{agent_id}``."""
    display_name: str
    """Human-readable name."""
    description: str
    """What the agent does."""
    version: str
    """Version of the graph; bump it when behaviour changes."""
    skills: tuple[Skill, ...] = ()
    """Advertised skills."""
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    """JSON Schema of the structured input."""
    output_schema: Mapping[str, Any] = field(default_factory=dict)
    """JSON Schema of the structured output."""
    default_model: str = ""
    """Model used unless a run overrides it; empty when no model is called."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Labels for filtering."""
    long_running: bool = False
    """Runs usually belong in a Job."""
    interrupts: bool = False
    """May pause for a human answer."""

    @property
    def name(self) -> str:
        """The resource name, ``agents/{agent_id}``."""
        return AGENTS.format(self.agent_id)

    def to_proto(self) -> agent_pb2.Agent:
        """The card as the wire message."""
        return agent_pb2.Agent(
            name=self.name,
            display_name=self.display_name,
            description=self.description,
            skills=[
                agent_pb2.AgentSkill(
                    id=s.id,
                    display_name=s.display_name,
                    description=s.description,
                    examples=s.examples,
                    tags=s.tags,
                )
                for s in self.skills
            ],
            input_schema=_struct(self.input_schema),
            output_schema=_struct(self.output_schema),
            default_model=self.default_model,
            version=self.version,
            labels=dict(self.labels),
            long_running=self.long_running,
            interrupts=self.interrupts,
        )


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    json_format.ParseDict(dict(value), message)
    return message


class Registry:
    """An immutable, name-ordered set of agent cards."""

    def __init__(self, cards: Iterable[AgentCard]) -> None:
        by_id: dict[str, AgentCard] = {}
        for card in cards:
            if card.agent_id in by_id:
                raise ValueError(f"agent {card.agent_id!r} is registered twice")
            AGENTS.parse(card.name)  # a card with a bad id is a programming error
            by_id[card.agent_id] = card
        self._by_id = MappingProxyType(dict(sorted(by_id.items())))
        # Wire messages are built once: cards never change while the process runs.
        self._protos = MappingProxyType({k: c.to_proto() for k, c in self._by_id.items()})

    def get(self, agent_id: str) -> AgentCard | None:
        """The card of ``agent_id``, or None."""
        return self._by_id.get(agent_id)

    def proto(self, agent_id: str) -> agent_pb2.Agent | None:
        """The prebuilt wire message of ``agent_id``, or None."""
        return self._protos.get(agent_id)

    def cards(self) -> tuple[AgentCard, ...]:
        """All cards, ordered by id."""
        return tuple(self._by_id.values())


ECHO = AgentCard(
    agent_id="echo",
    display_name="Echo",
    description=(
        "Repeats the user's message back. Calls no model, so it works offline; "
        "use it to check that the mesh is wired end to end."
    ),
    version="1",
    skills=(
        Skill(
            id="echo",
            display_name="Echo",
            description="Returns the text it was given.",
            examples=("say hello back", "repeat after me: ping"),
            tags=("diagnostics",),
        ),
    ),
    input_schema={
        "type": "object",
        "properties": {
            "text": {"type": "string", "maxLength": 65536, "description": "Text to echo."}
        },
        "additionalProperties": False,
    },
    output_schema={
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "turns": {"type": "integer", "description": "User turns in the thread so far."},
        },
    },
    labels={"team": "platform", "offline": "true"},
)


def builtin_registry() -> Registry:
    """The agents every deployment ships with."""
    return Registry([ECHO])
