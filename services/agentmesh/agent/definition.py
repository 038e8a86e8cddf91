"""Bring your own graph: how an agent is declared and where the service finds it.

An agent is a LangGraph graph plus its card. Graph authors write ordinary LangGraph
code and declare it with :func:`define_agent`::

    builder = StateGraph(State)
    ...
    agent = define_agent(
        id="support", display_name="Support", description="...", graph=builder,
        input_schema={...},
    )

The service compiles the graph with the Memory-backed checkpointer and store (give it
the ``StateGraph`` builder, or a compiled graph, which is copied with them), so any
replica continues any thread.

The service serves the built-in agents, every ``AgentDefinition`` that an installed
package declares in the entry-point group ``agentmesh.agents``
(``[project.entry-points."agentmesh.agents"] support = "my_agents.support:agent"``),
and those ``AGENTMESH_AGENT_GRAPHS`` names as ``module:attribute`` (the way
``langgraph.json`` names graphs). Either may also name a function that takes the
deployment's :class:`~agentmesh.agent.resources.AgentResources` (its chat models, its
Memory client) and returns the definition: how an agent of your own calls the
configured LLM, e.g. with ``agentmesh.agent.agents.structured``. This is operator
configuration: code named there is the deployment's own, never a tenant's.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Final

import jsonschema  # type: ignore[import-untyped]  # ships no type hints
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

from agentmesh.agent.registry import AgentCard, Skill
from agentmesh.core.settings import ConfigError

ENTRY_POINT_GROUP: Final = "agentmesh.agents"
"""Installed packages declare their agents in this entry-point group."""

Graph = StateGraph[Any] | Pregel[Any, Any, Any, Any]
"""A graph as an author gives it: the builder, or compiled."""


NEEDS: Final = frozenset({"model", "memory"})
"""What an agent may need from the deployment: a configured LLM, the Memory service."""


@dataclass(frozen=True)
class AgentDefinition:
    """An agent the service can run: its card, its graph, and what it needs (a run is
    FAILED_PRECONDITION, naming the setting, when the deployment lacks it)."""

    card: AgentCard
    graph: Graph
    needs: frozenset[str] = frozenset()


def define_agent(
    *,
    id: str,  # the card's field name
    display_name: str,
    description: str,
    graph: Graph,
    version: str = "1",
    skills: Sequence[Skill] = (),
    input_schema: Mapping[str, Any] | None = None,
    output_schema: Mapping[str, Any] | None = None,
    default_model: str = "",
    labels: Mapping[str, str] | None = None,
    long_running: bool = False,
    interrupts: bool = False,
    needs: Iterable[str] = (),
) -> AgentDefinition:
    """Declares an agent; raises ValueError for a bad id or schema (a programming error
    of the author, reported when the service loads it)."""
    for name, schema in (("input_schema", input_schema), ("output_schema", output_schema)):
        if schema:
            try:
                jsonschema.Draft202012Validator.check_schema(dict(schema))
            except jsonschema.SchemaError as exc:
                raise ValueError(
                    f"agent {id!r}: {name} is not a JSON Schema: {exc.message}"
                ) from None
    if not isinstance(graph, StateGraph | Pregel):
        raise ValueError(f"agent {id!r}: graph must be a StateGraph or a compiled graph")
    unknown = set(needs) - NEEDS
    if unknown:
        raise ValueError(f"agent {id!r}: needs {sorted(unknown)}; known: {sorted(NEEDS)}")
    card = AgentCard(
        agent_id=id,
        display_name=display_name,
        description=description,
        version=version,
        skills=tuple(skills),
        input_schema=dict(input_schema or {}),
        output_schema=dict(output_schema or {}),
        default_model=default_model,
        labels=dict(labels or {}),
        long_running=long_running,
        interrupts=interrupts,
    )
    return AgentDefinition(card=card, graph=graph, needs=frozenset(needs))


def load_path(path: str, resources: Any = None) -> AgentDefinition:
    """The ``AgentDefinition`` at ``module:attribute`` (or made by the function there,
    given ``resources``); ConfigError otherwise."""
    module_name, _, attribute = path.strip().partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{path!r}: expected module:attribute, e.g. my_agents.support:agent")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{path!r}: cannot load it: {exc}") from exc
    return _definition(value, path, resources)


def _definition(value: Any, source: str, resources: Any = None) -> AgentDefinition:
    if callable(value) and not isinstance(value, AgentDefinition | StateGraph | Pregel):
        try:
            value = value(resources)
        except (ValueError, TypeError) as exc:  # the author's factory refused
            raise ConfigError(f"{source}: building the agent failed: {exc}") from exc
    if not isinstance(value, AgentDefinition):
        raise ConfigError(
            f"{source}: is a {type(value).__name__}, not an AgentDefinition"
            " (declare it with agentmesh.agent.definition.define_agent)"
        )
    return value


def discover(
    graphs_setting: str, builtins: Iterable[AgentDefinition], resources: Any = None
) -> list[AgentDefinition]:
    """The built-in agents, then those of installed packages (entry points), then those
    ``graphs_setting`` names (comma-separated ``module:attribute``); a name that is a
    function is called with ``resources``."""
    found = list(builtins)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            value = point.load()
        except Exception as exc:  # an installed package's import error, reported as such
            raise ConfigError(
                f"entry point {point.name!r} ({point.value}) of {ENTRY_POINT_GROUP}: {exc}"
            ) from exc
        found.append(_definition(value, f"entry point {point.name!r} ({point.value})", resources))
    found += [load_path(path, resources) for path in graphs_setting.split(",") if path.strip()]
    return found
