"""``agentmesh sessions``: conversations and their history (MemoryService)."""

from __future__ import annotations

from typing import Annotated

import typer

from agentmesh.cli.common import JsonFlag, enum_label, mesh_of, part_text, resource_name, when
from agentmesh.cli.output import value_json
from agentmesh.v1 import common_pb2, memory_pb2

app = typer.Typer(help="Conversations kept in Memory and their history.", no_args_is_help=True)


@app.command("list")
def list_sessions(
    ctx: typer.Context,
    filter_: Annotated[
        str,
        typer.Option(
            "--filter",
            help='AIP-160 subset: labels.<key> = "<value>", create_time >= "<RFC 3339>"…',
        ),
    ] = "",
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 50,
    json_lines: JsonFlag = False,
) -> None:
    """List sessions, newest first."""
    mesh = mesh_of(ctx, json_lines)
    sessions: list[memory_pb2.Session] = []
    page_token = ""
    while len(sessions) < limit:
        page = mesh.call(
            mesh.memory.ListSessions,
            memory_pb2.ListSessionsRequest(
                filter=filter_, page_token=page_token, page_size=min(limit - len(sessions), 1000)
            ),
        )
        sessions.extend(page.sessions)
        page_token = page.next_page_token
        if not page_token:
            break
    out = mesh.output
    if out.json_lines:
        for session in sessions[:limit]:
            out.message(session)
        return
    out.table(
        ("NAME", "DISPLAY NAME", "MESSAGES", "UPDATED"),
        [
            (s.name, s.display_name, str(s.message_count), when(s.update_time))
            for s in sessions[:limit]
        ],
    )


@app.command("show")
def show_session(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(metavar="ID", help="`ID` or `sessions/ID`.")],
    json_lines: JsonFlag = False,
) -> None:
    """Show one session."""
    mesh = mesh_of(ctx, json_lines)
    session = mesh.call(
        mesh.memory.GetSession,
        memory_pb2.GetSessionRequest(name=resource_name("sessions", session_id)),
    )
    out = mesh.output
    if out.json_lines:
        out.message(session)
        return
    out.fields(
        [
            ("name", session.name),
            ("display name", session.display_name),
            ("messages", str(session.message_count)),
            ("labels", ", ".join(f"{k}={v}" for k, v in sorted(session.labels.items()))),
            ("metadata", value_json(session.metadata) if session.metadata.fields else ""),
            ("created", when(session.create_time)),
            ("updated", when(session.update_time)),
        ]
    )


@app.command("history")
def session_history(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(metavar="ID", help="`ID` or `sessions/ID`.")],
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many messages.")
    ] = 1000,
    json_lines: JsonFlag = False,
) -> None:
    """Print a session's messages, oldest first."""
    mesh = mesh_of(ctx, json_lines)
    parent = resource_name("sessions", session_id)
    out = mesh.output
    shown = 0
    page_token = ""
    while shown < limit:
        page = mesh.call(
            mesh.memory.ListMessages,
            memory_pb2.ListMessagesRequest(
                parent=parent, page_token=page_token, page_size=min(limit - shown, 1000)
            ),
        )
        for message in page.messages[: limit - shown]:
            shown += 1
            if out.json_lines:
                out.message(message)
                continue
            role = enum_label(common_pb2.Role.Name(message.role), "ROLE_").lower()
            author = f"{role} ({message.agent})" if message.agent else role
            text = " ".join(part_text(p) for p in message.parts)
            out.line(f"#{message.sequence} {author}: {text}")
        page_token = page.next_page_token
        if not page_token:
            break
