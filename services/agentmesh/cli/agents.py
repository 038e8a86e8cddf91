"""``agentmesh agents``: the agents the mesh offers (AgentService)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from google.protobuf import json_format

from agentmesh.cli.common import JsonFlag, mesh_of, resource_name
from agentmesh.v1 import agent_pb2

app = typer.Typer(help="The agents the mesh offers: their cards.", no_args_is_help=True)


@app.command("list")
def list_agents(
    ctx: typer.Context,
    filter_: Annotated[
        str,
        typer.Option(
            "--filter", help='AIP-160 subset: labels.<key> = "<value>", long_running = true.'
        ),
    ] = "",
    json_lines: JsonFlag = False,
) -> None:
    """List the agents, by name."""
    mesh = mesh_of(ctx, json_lines)
    agents: list[agent_pb2.Agent] = []
    page_token = ""
    while True:
        page = mesh.call(
            mesh.agents.ListAgents,
            agent_pb2.ListAgentsRequest(filter=filter_, page_token=page_token, page_size=1000),
        )
        agents.extend(page.agents)
        page_token = page.next_page_token
        if not page_token:
            break
    out = mesh.output
    if out.json_lines:
        for agent in agents:
            out.message(agent)
        return
    out.table(
        ("NAME", "DISPLAY NAME", "MODEL", "LABELS", "DESCRIPTION"),
        [
            (
                a.name,
                a.display_name,
                a.default_model or "-",
                ",".join(f"{k}={v}" for k, v in sorted(a.labels.items())),
                a.description,
            )
            for a in agents
        ],
    )


@app.command("show")
def show_agent(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The agent: `echo` or `agents/echo`.")
    ],
    json_lines: JsonFlag = False,
) -> None:
    """Show one agent's card: skills, schemas, model."""
    mesh = mesh_of(ctx, json_lines)
    agent = mesh.call(
        mesh.agents.GetAgent, agent_pb2.GetAgentRequest(name=resource_name("agents", name))
    )
    out = mesh.output
    if out.json_lines:
        out.message(agent)
        return
    out.fields(
        [
            ("name", agent.name),
            ("display name", agent.display_name),
            ("description", agent.description),
            ("version", agent.version),
            ("model", agent.default_model or "none (works offline)"),
            ("labels", ", ".join(f"{k}={v}" for k, v in sorted(agent.labels.items()))),
            ("long running", "yes" if agent.long_running else "no"),
            ("interrupts", "yes" if agent.interrupts else "no"),
        ]
    )
    for skill in agent.skills:
        out.line(f"skill {skill.id}: {skill.description}", style="bold")
        for example in skill.examples:
            out.line(f"  e.g. {example}")
    for title, schema in (
        ("input schema", agent.input_schema),
        ("output schema", agent.output_schema),
    ):
        if schema.fields:
            out.line(f"{title}:", style="bold")
            out.line(json.dumps(json_format.MessageToDict(schema), indent=2))
