"""The ``agentmesh`` command, for people at a terminal.

    agentmesh token --tenant acme               # a dev bearer token (HS256)
    agentmesh agents list | show NAME
    agentmesh jobs list | show | watch | cancel | retry | create
    agentmesh sessions list | show ID | history ID
    agentmesh memories search QUERY

It calls the mesh's gRPC API through Envoy (``--address``, default 127.0.0.1:8080) with
the generated stubs; see docs/cli.md.
"""

from agentmesh.cli.app import app, main

__all__ = ["app", "main"]
