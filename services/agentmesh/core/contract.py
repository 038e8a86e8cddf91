"""Servicer assembly: RPCs composed from domain groups, and honest gaps (RPCs of the
contract a later change will implement).

The generated servicer base answers UNIMPLEMENTED with "Method not implemented!".
We want the reason instead: which behaviour is missing and where it is planned, as
a typed ``Unimplemented`` error that the interceptor maps like any other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, NoReturn, TypeAlias, TypeVar, cast

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from agentmesh.core.errors import Unimplemented

T = TypeVar("T")

ServicerContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]
"""The context argument of every servicer method."""


def fill_unimplemented(
    service: ServiceDescriptor, planned: Mapping[str, str]
) -> Callable[[type[T]], type[T]]:
    """Class decorator: every RPC of ``service`` the class does not define raises
    ``Unimplemented`` with the plan for it.

    ``planned`` maps a method name to the work that will add it (e.g. "durable jobs,
    the Job service"); the key ``*`` is the fallback. Methods defined on the class itself
    are left alone, whether on the class itself or on a mixin it inherits.

    mypy sees the generated servicer's RPCs as abstract and cannot know this
    decorator fills them, so instantiating a decorated class needs
    ``# type: ignore[abstract]``; that is the one place the gap is visible.
    """

    def decorate(cls: type[T]) -> type[T]:
        for method in service.methods:
            if _defined(cls, method.name):
                continue
            plan = planned.get(method.name) or planned["*"]
            setattr(cls, method.name, _raiser(method, plan))
        return cls

    return decorate


def _defined(cls: type, name: str) -> bool:
    """Whether ``cls`` or a base of its own (an RPC group mixin) defines ``name``.

    The generated ``*Servicer`` base defines every RPC (answering "Method not
    implemented!"): that one does not count.
    """
    for base in cls.__mro__:
        if name in base.__dict__:
            return not base.__module__.endswith("_pb2_grpc")
    return False


def _raiser(method: MethodDescriptor, plan: str) -> Callable[..., Any]:
    rpc = f"{method.containing_service.name}.{method.name}"

    def fail() -> NoReturn:
        raise Unimplemented(rpc, tracked_in=plan)

    # A server-streaming handler must be an async generator for grpc.aio to treat
    # it as a stream; the `yield` after the raise is never reached.
    if method.server_streaming:

        async def unimplemented_stream(
            self: object, request: object, context: object
        ) -> AsyncIterator[Any]:
            fail()
            yield  # pragma: no cover

        unimplemented_stream.__name__ = method.name
        return unimplemented_stream

    async def unimplemented(self: object, request: object, context: object) -> Any:
        fail()

    unimplemented.__name__ = method.name
    return unimplemented


def compose_servicer(
    base: Callable[[], T], service: ServiceDescriptor, groups: Iterable[object]
) -> T:
    """A servicer of ``service`` whose RPCs are the methods of ``groups`` (one object
    per domain), by composition: each RPC is delegated to the one group that defines it.

    Raises TypeError when two groups define the same RPC (one would hide the other)
    or when no group defines one (it would answer "Method not implemented!"); helpers
    of a group stay on its own object, so groups cannot hide each other's helpers.
    ``base`` is the generated ``*Servicer`` class, so the result registers with the
    generated ``add_*_to_server``.
    """
    owners: dict[str, object] = {}
    duplicates: list[str] = []
    for group in groups:
        for method in service.methods:
            if callable(getattr(type(group), method.name, None)):
                if method.name in owners:
                    duplicates.append(
                        f"{method.name} ({type(owners[method.name]).__name__},"
                        f" {type(group).__name__})"
                    )
                owners.setdefault(method.name, group)
    missing = [method.name for method in service.methods if method.name not in owners]
    if duplicates or missing:
        raise TypeError(
            f"{service.full_name}: RPCs defined twice: {duplicates or 'none'};"
            f" RPCs defined nowhere: {missing or 'none'}"
        )
    # Bound methods are not descriptors: as class attributes they stay bound to
    # their group, so servicer.Method(request, context) calls the group's method.
    namespace = {name: getattr(group, name) for name, group in owners.items()}
    # A Callable, not type[T]: mypy refuses abstract classes (the generated base) as type[T].
    cls = cast(type, base)
    composed = type(f"Composed{cls.__name__}", (cls,), namespace)
    return cast(T, composed())
