"""STAND-IN for a real agentmesh service, used only by the launcher tests.

The real services (`python -m agentmesh.memory`, ...) are not what these tests check:
the tests check that `DevStack` starts, wires, health-checks and stops processes. This
stand-in reads the same settings a service reads (`AGENTMESH_GRPC_HOST`,
`AGENTMESH_GRPC_PORT`), serves `grpc.health.v1` SERVING for the service name given on
the command line, and drains on SIGTERM like a real service. Without a service name it
idles until SIGTERM, standing in for the Dramatiq worker.

    python standin_service.py [agentmesh.v1.MemoryService]
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

# `health.aio.HealthServicer` is this class; imported from its module because the
# `health` module's `aio` alias is invisible to mypy.
from grpc_health.v1._async import HealthServicer


async def serve(service_name: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if service_name is None:
        print("stand-in worker idle", flush=True)
        await stop.wait()
        return
    server = grpc.aio.server()
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"{os.environ['AGENTMESH_GRPC_HOST']}:{os.environ['AGENTMESH_GRPC_PORT']}"
    server.add_insecure_port(address)
    await server.start()
    await servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    print(f"stand-in {service_name} serving on {address}", flush=True)
    await stop.wait()
    await servicer.enter_graceful_shutdown()
    await server.stop(grace=1.0)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1] if len(sys.argv) > 1 else None))
