"""What every SDK call carries, for the sync and the async client alike: the token, an
``x-request-id``, a deadline, a ``request_id`` on keyed creates, and which methods the
mesh's retry policy covers. Pure functions and data: no sockets."""

from __future__ import annotations

import copy
import dataclasses
import enum
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from agentmesh.core.retries import idempotent_methods, keyed_methods, route

AUTHORIZATION: Final = "authorization"
REQUEST_ID: Final = "x-request-id"
"""The correlation id: the services log it and answer it in ``RequestInfo`` and the
``x-request-id`` response header."""

ADDRESS_ENV: Final = "AGENTMESH_ADDRESS"
TOKEN_ENV: Final = "AGENTMESH_TOKEN"
"""The environment variables the ``agentmesh`` command reads too."""
DEFAULT_ADDRESS: Final = "127.0.0.1:8080"
"""Envoy's external listener under ``make dev`` (native gRPC and JSON)."""
DEFAULT_TIMEOUT_S: Final = 30.0
"""Deadline of a unary call unless the client or the call says otherwise (Envoy's route
timeout for unary calls is 30 s too)."""

RETRIED_ROUTES: Final = frozenset(route(m) for m in idempotent_methods() + keyed_methods())
"""Unary methods retried on UNAVAILABLE: idempotent by contract, or keyed creates (the
SDK fills their ``request_id``, so a repeat returns the first result)."""
KEYED_ROUTES: Final = frozenset(route(m) for m in keyed_methods())
"""Unary methods whose ``request_id`` the SDK fills in when the caller left it empty."""

Metadata = tuple[tuple[str, str], ...]
MetadataLike = Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]]


class Unset(enum.Enum):
    """Marks an option :meth:`CallOptions.replace` leaves as it is (None means "none")."""

    UNSET = enum.auto()


UNSET: Final = Unset.UNSET


@dataclass(frozen=True)
class CallOptions:
    """What a client adds to each call."""

    token: str | None = None
    """Sent as ``authorization: Bearer <token>``; None or empty: no authorization."""
    timeout: float | None = DEFAULT_TIMEOUT_S
    """Deadline of unary calls, in seconds; None: no deadline."""
    stream_timeout: float | None = None
    """Deadline of server streams (watches, agent runs, Converse); None: no deadline."""
    request_id: str | None = None
    """The ``x-request-id`` of every call; None: a fresh UUID per call."""
    metadata: Metadata = ()
    """More metadata for every call."""

    def replace(
        self,
        *,
        timeout: float | None | Unset = UNSET,
        stream_timeout: float | None | Unset = UNSET,
        request_id: str | None | Unset = UNSET,
        metadata: MetadataLike | Unset = UNSET,
    ) -> CallOptions:
        """These options with the given ones changed (extra metadata is appended)."""
        changed = self
        if not isinstance(timeout, Unset):
            changed = dataclasses.replace(changed, timeout=timeout)
        if not isinstance(stream_timeout, Unset):
            changed = dataclasses.replace(changed, stream_timeout=stream_timeout)
        if not isinstance(request_id, Unset):
            changed = dataclasses.replace(changed, request_id=request_id)
        if not isinstance(metadata, Unset):
            changed = dataclasses.replace(changed, metadata=self.metadata + as_pairs(metadata))
        return changed

    def timeout_for(self, *, streaming: bool) -> float | None:
        return self.stream_timeout if streaming else self.timeout


def as_pairs(metadata: MetadataLike | None) -> Metadata:
    """Metadata as ``(key, value)`` pairs of text; keys lower-cased as gRPC sends them."""
    if metadata is None:
        return ()
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    return tuple(
        (key.lower(), value.decode() if isinstance(value, bytes) else value) for key, value in items
    )


def call_metadata(
    options: CallOptions,
    given: MetadataLike | None = None,
    *,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Metadata:
    """The metadata of one call: the client's token and extra metadata, what the call
    itself gave, and an ``x-request-id`` (the call's, else the client's, else a new one).
    A key the call gives replaces the client's value for it."""
    extra = as_pairs(given)
    keys = {key for key, _ in extra}
    pairs: list[tuple[str, str]] = []
    if options.token and AUTHORIZATION not in keys:
        pairs.append((AUTHORIZATION, f"Bearer {options.token}"))
    pairs.extend((key, value) for key, value in options.metadata if key not in keys)
    pairs.extend(extra)
    if not any(key == REQUEST_ID for key, _ in pairs):
        pairs.append((REQUEST_ID, options.request_id or new_id()))
    return tuple(pairs)


Request = TypeVar("Request")


def with_request_id(
    path: str, request: Request, *, new_id: Callable[[], str] = lambda: str(uuid.uuid4())
) -> Request:
    """The request of a keyed create with its ``request_id`` filled in (a copy: the
    caller's message is left as it was, so sending it again is a new create)."""
    if path not in KEYED_ROUTES or getattr(request, "request_id", None) != "":
        return request
    keyed = copy.copy(request)
    keyed.request_id = new_id()  # type: ignore[attr-defined]
    return keyed


def resolve_address(address: str | None) -> str:
    """The given address, else ``AGENTMESH_ADDRESS``, else Envoy under ``make dev``."""
    return address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def resolve_token(token: str | None) -> str | None:
    """The given token, else ``AGENTMESH_TOKEN``, else none (calls then answer
    UNAUTHENTICATED). An empty string sends no token even when the variable is set."""
    if token is not None:
        return token or None
    return os.environ.get(TOKEN_ENV) or None


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) as host and port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, not {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)
