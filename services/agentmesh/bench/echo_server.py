"""The servers the core bench compares against ours, one process each.

    python -m agentmesh.bench.echo_server --variant raw --port 50100

Every variant serves `agentmesh.v1.AgentService/GetAgent` with the same prebuilt `Agent`
message as the real service (`builtin_registry().proto("echo")`), plus gRPC health so
that Envoy's active health check admits it. They differ only in what runs around that
handler; all run on uvloop, like the services:

- ``raw``: a plain `grpc.aio.server()`, no interceptors, a generic handler returning the
  message: the physical baseline ("raw echo server": same wire cost, no framework).
- ``servicer``: the real `AgentServicer` (resource-name parsing), no interceptors.
- ``servicer+ours``: plus our `ServerInterceptor` (tracing, request id, JWT auth, error
  mapping, Prometheus metrics), with the SDK TracerProvider installed as `serve()` does
  (no exporter, so spans are non-recording); `python -m agentmesh.agent` adds only health,
  reflection and the /metrics HTTP server to this.
- ``servicer+ours@registration``: the same interceptor applied to the handlers when they
  are registered (`InterceptingRegistrar`) instead of through grpc.aio's interceptor
  chain, which runs per call.
- ``servicer+otel``: the servicer behind opentelemetry-instrumentation-grpc's aio server
  interceptor instead, for reference: what our interceptor's built-in tracing replaced.

The layered variants exist to attribute the per-call cost of each layer (``core-layers``
bench); they compose the product's own pieces, they do not copy them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any, Final

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from agentmesh.agent.app import SERVICE_NAME
from agentmesh.agent.registry import builtin_registry
from agentmesh.agent.servicer import AgentServicer
from agentmesh.core.auth import Authenticator
from agentmesh.core.interceptors import InterceptingRegistrar, ServerInterceptor
from agentmesh.core.logging import configure_logging
from agentmesh.core.settings import Settings
from agentmesh.core.tracing import configure_tracing
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

VARIANTS: Final = (
    "raw",
    "servicer",
    "servicer+ours",
    "servicer+ours@registration",
    "servicer+otel",
)


def echo_agent() -> agent_pb2.Agent:
    """The message every variant (and the real service) returns for `agents/echo`."""
    agent = builtin_registry().proto("echo")
    if agent is None:  # pragma: no cover - the builtin registry always has echo
        raise LookupError("the builtin registry has no 'echo' agent")
    return agent


def add_raw_handler(server: grpc.aio.Server) -> None:
    """GetAgent as a bare handler: deserialize, return the prebuilt message.

    Registered the way generated `add_XServicer_to_server` code does (a generic handler
    plus `add_registered_method_handlers`, grpcio's faster registered-method dispatch), so
    raw and ours differ only in what runs around the handler.
    """
    agent = echo_agent()

    async def get_agent(request: agent_pb2.GetAgentRequest, context: Any) -> agent_pb2.Agent:
        return agent

    handlers = {
        "GetAgent": grpc.unary_unary_rpc_method_handler(
            get_agent,
            request_deserializer=agent_pb2.GetAgentRequest.FromString,
            response_serializer=agent_pb2.Agent.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # Not in grpc-stubs yet; the generated add_XServicer_to_server calls it the same way.
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]


async def serve(variant: str, port: int, secret: str) -> None:
    settings = Settings(service="agent", grpc_port=port, auth_hs256_secret=secret, log_level="info")
    interceptors: list[Any] = []
    if variant != "raw":
        configure_logging(settings)
    if "otel" in variant or "ours" in variant:
        configure_tracing(settings)
    if "otel" in variant:
        interceptors.append(aio_server_interceptor())
    ours = ServerInterceptor(Authenticator.from_settings(settings)) if "ours" in variant else None
    if ours is not None and not variant.endswith("@registration"):
        interceptors.append(ours)
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    if variant == "raw":
        add_raw_handler(server)
    else:
        servicer = AgentServicer(builtin_registry())
        target: Any = server
        if ours is not None and variant.endswith("@registration"):
            target = InterceptingRegistrar(server, ours)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, target)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"echo_server variant={variant} listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentmesh.bench.echo_server")
    parser.add_argument("--variant", choices=VARIANTS, default="raw")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", default="", help="HS256 secret (variants with our interceptor)")
    args = parser.parse_args(argv)
    if "ours" in args.variant and len(args.secret) < 32:
        parser.error("--secret (>= 32 characters) is required for variants with 'ours'")
    # The services run on uvloop (core.entrypoint); so does every baseline, so that a
    # ratio measures our code, not the event loop (ADR 0014).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.variant, args.port, args.secret or "x" * 32))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
