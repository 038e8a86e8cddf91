"""The root command: global options, ``token``, the command groups, and ``main``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, cast

import grpc
import typer

from agentmesh.cli import agents, chat, jobs, memories, sessions
from agentmesh.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError, code_of, describe
from agentmesh.cli.mesh import DEFAULT_ADDRESS, DEFAULT_TENANT, Invocation, Mesh
from agentmesh.cli.output import Output
from agentmesh.core.settings import ConfigError

app = typer.Typer(
    name="agentmesh",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    address: Annotated[
        str,
        typer.Option(
            "--address",
            envvar="AGENTMESH_ADDRESS",
            help="host:port of Envoy's listener (native gRPC) or of a service.",
        ),
    ] = DEFAULT_ADDRESS,
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="AGENTMESH_TOKEN",
            help="Bearer token. Without one, a token for --tenant is minted from the dev"
            " mesh's secret (as `agentmesh token` does).",
            show_default=False,
        ),
    ] = "",
    tenant: Annotated[
        str,
        typer.Option(
            "--tenant",
            envvar="AGENTMESH_TENANT",
            help="Tenant of the minted token (ignored with --token).",
        ),
    ] = DEFAULT_TENANT,
    json_lines: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per line (protobuf's JSON mapping)."),
    ] = False,
) -> None:
    """Talk to an agentmesh mesh from a terminal: chat, agents, jobs, sessions, memories."""
    if not token:
        from agentmesh.cli.token import check_tenant  # noqa: PLC0415 (see token_command)

        try:
            check_tenant(tenant)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--tenant") from exc
    mesh = Mesh(
        address=address, token=token or None, tenant=tenant, output=Output(json_lines=json_lines)
    )
    cast(Invocation, ctx.obj).mesh = mesh
    ctx.call_on_close(mesh.close)


@app.command("token")
def token_command(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant the token is for.")],
    subject: Annotated[str, typer.Option("--subject", help="The token's subject.")] = "dev",
    ttl_s: Annotated[int, typer.Option("--ttl-s", help="Lifetime in seconds.")] = 3600,
) -> None:
    """Mint a development bearer token (HS256) from the dev mesh's secret."""
    # Imported only where a token is minted: PyJWT and the services' auth module take a
    # noticeable part of a second to load, which every other command would pay.
    from agentmesh.cli.token import dev_token  # noqa: PLC0415

    print(dev_token(tenant, subject, ttl_s))


app.add_typer(agents.app, name="agents")
app.add_typer(jobs.app, name="jobs")
app.add_typer(sessions.app, name="sessions")
app.add_typer(memories.app, name="memories")
app.command("chat")(chat.chat)


def _hint(mesh: Mesh | None, error: grpc.RpcError) -> str:
    code = code_of(error)
    if mesh is None:
        return ""
    if code == grpc.StatusCode.UNAUTHENTICATED and not mesh.sent_token:
        return "no token: pass --token or set AGENTMESH_TOKEN"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"is the mesh up at {mesh.address}? `make dev` starts one"
    return ""


def _report(error: Exception, mesh: Mesh | None) -> int:
    """Prints a failure as one line on stderr; returns the exit code."""
    if isinstance(error, grpc.RpcError):
        print(f"agentmesh: {describe(error, hint=_hint(mesh, error))}", file=sys.stderr)
        return EXIT_FAILED
    print(f"agentmesh: {error}", file=sys.stderr)
    return EXIT_USAGE if isinstance(error, ConfigError) else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentmesh`` script: 0 done, 1 a call failed, 2 usage,
    3 a watched job did not succeed."""
    command = typer.main.get_command(app)
    args = list(argv if argv is not None else sys.argv[1:])
    invocation = Invocation()
    try:
        # Standalone mode: Typer prints usage errors and help itself and exits 2 / 0.
        command.main(args=args, prog_name="agentmesh", standalone_mode=True, obj=invocation)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    except (ConfigError, CliError, grpc.RpcError) as exc:
        return _report(exc, invocation.mesh)
    return 0
