"""The mesh as the CLI reaches it: one plain gRPC channel to Envoy (or a service), the
caller's bearer token, and the generated stubs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import grpc
from google.protobuf.message import Message

from agentmesh.cli.output import Output
from agentmesh.core import retries
from agentmesh.core.retries import idempotent_methods, keyed_methods
from agentmesh.core.settings import ConfigError
from agentmesh.v1 import agent_pb2_grpc, conductor_pb2_grpc, job_pb2_grpc, memory_pb2_grpc

DEFAULT_ADDRESS: Final = "127.0.0.1:8080"
"""Envoy's external listener in ``make dev``: it proxies native gRPC too."""
DEFAULT_TENANT: Final = "dev"
"""Tenant of the token minted from the dev secret when none is given."""
CALL_DEADLINE_S: Final = 30.0
"""Deadline of every unary call."""

RETRIED_METHODS: Final = idempotent_methods() + keyed_methods()
"""Methods retried on UNAVAILABLE (the mesh's one retry policy, ``core.retries``): those
the contract declares idempotent, and creates keyed by a ``request_id``, which the CLI
always sends (a command that calls a keyed create must fill it in). Streams are not
retried: WatchJob resumes by itself instead."""


def service_config() -> str:
    """gRPC service config JSON retrying RETRIED_METHODS on UNAVAILABLE."""
    return retries.service_config(RETRIED_METHODS)


Response = TypeVar("Response", bound=Message)


@dataclass
class Mesh:
    """Connection settings of one invocation, and the channel once a command needs it."""

    address: str
    token: str | None
    tenant: str
    output: Output
    _channel: grpc.Channel | None = field(default=None, init=False, repr=False)
    _metadata: tuple[tuple[str, str], ...] | None = field(default=None, init=False, repr=False)
    sent_token: bool = field(default=False, init=False)
    """Whether calls carry a token (False when none was given and none could be minted)."""

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                self.address,
                options=[
                    ("grpc.enable_retries", 1),
                    ("grpc.service_config", service_config()),
                ],
            )
        return self._channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """``authorization`` for every call: the given token, else one minted for the
        tenant from the dev secret, else none (the mesh then answers UNAUTHENTICATED)."""
        if self._metadata is None:
            token = self.token
            if not token:
                # Imported here: minting brings PyJWT and the services' auth module.
                from agentmesh.cli.token import dev_token  # noqa: PLC0415

                try:
                    token = dev_token(self.tenant)
                except ConfigError:  # no dev secret here: call without a token
                    token = None
            self.sent_token = bool(token)
            self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return self._metadata

    def call(self, method: Callable[..., Response], request: Message) -> Response:
        """A unary call with the token and the deadline."""
        return method(request, metadata=self.metadata, timeout=CALL_DEADLINE_S)

    @property
    def agents(self) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.channel)

    @property
    def jobs(self) -> job_pb2_grpc.JobServiceStub:
        return job_pb2_grpc.JobServiceStub(self.channel)

    @property
    def conductor(self) -> conductor_pb2_grpc.ConductorServiceStub:
        return conductor_pb2_grpc.ConductorServiceStub(self.channel)

    @property
    def memory(self) -> memory_pb2_grpc.MemoryServiceStub:
        return memory_pb2_grpc.MemoryServiceStub(self.channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


@dataclass
class Invocation:
    """What one run of the command shares between its layers (Click's ``obj``)."""

    mesh: Mesh | None = None
    """Set by the root command's options, before any subcommand runs."""
