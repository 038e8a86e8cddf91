"""Checkpoint serialization that never runs code from stored data.

LangGraph's ``JsonPlusSerializer`` revives msgpack extension values by importing the
module and calling the callable they name, and by default it allows any name (with a
warning). Checkpoints are tenant data: anyone holding a token can write one through
the public API, and the process that loads it (an agent runtime, through
``AgentmeshSaver``) would import and call whatever it names. :class:`StrictSerializer`
checks every name in a stored value against an allow-list *before* LangGraph decodes
it (decoding the check itself imports and calls nothing) and refuses the whole value
with :class:`UnsafeCheckpointError` when one is outside it; it never falls back to
pickle and revives no JSON constructors.

The allow-list is LangGraph's own list of safe types (``SAFE_MSGPACK_TYPES``:
datetimes, UUIDs, LangChain messages, LangGraph's ``Send``/``Command``/``Interrupt``
…) plus what the graph's author names (``allowed_types``, or LangGraph's
``with_allowlist`` derived from a graph's state schema).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import ormsgpack

from langgraph.checkpoint.serde._msgpack import SAFE_MSGPACK_METHODS, SAFE_MSGPACK_TYPES
from langgraph.checkpoint.serde.jsonplus import (
    EXT_CONSTRUCTOR_KW_ARGS,
    EXT_CONSTRUCTOR_POS_ARGS,
    EXT_CONSTRUCTOR_SINGLE_ARG,
    EXT_DELTA_SNAPSHOT,
    EXT_METHOD_SINGLE_ARG,
    EXT_NUMPY_ARRAY,
    EXT_PYDANTIC_V1,
    EXT_PYDANTIC_V2,
    JsonPlusSerializer,
)

VALUE_TYPES: Final = frozenset({"null", "bytes", "bytearray", "msgpack"})
"""The ``TypedValue.type``s this serializer writes and loads: never ``pickle``, and no
``json`` (LangChain's JSON constructors revive classes by name too)."""

_NAMED_TYPES: Final = frozenset(
    {
        EXT_CONSTRUCTOR_SINGLE_ARG,
        EXT_CONSTRUCTOR_POS_ARGS,
        EXT_CONSTRUCTOR_KW_ARGS,
        EXT_PYDANTIC_V1,
        EXT_PYDANTIC_V2,
    }
)
_MAX_REPORTED: Final = 5


class UnsafeCheckpointError(ValueError):
    """A checkpoint value names a type (or a serialization) outside the allow-list, so
    it is refused whole, before anything in it is imported or called."""


class StrictSerializer(JsonPlusSerializer):
    """``JsonPlusSerializer`` restricted to an allow-list of types, on load and on store.

    Args:
        allowed_types: ``(module, name)`` pairs (or classes) to allow beside LangGraph's
            safe types: the graph state's own types (a pydantic model, a dataclass).

    A value holding another type is refused with :class:`UnsafeCheckpointError`: when
    stored (so a graph author learns at once which type to allow) and when loaded (so
    a value written by anyone else never runs code).
    """

    def __init__(self, allowed_types: Iterable[tuple[str, ...] | type] = ()) -> None:
        extra = tuple(allowed_types)
        super().__init__(
            pickle_fallback=False,
            allowed_json_modules=None,
            allowed_msgpack_modules=extra or None,
        )

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        type_, data = super().dumps_typed(obj)
        self.check(type_, data)
        return type_, data

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        self.check(*data)
        return super().loads_typed(data)

    def check(self, type_: str, data: bytes) -> None:
        """Raises :class:`UnsafeCheckpointError` unless ``(type_, data)`` holds only
        allowed types. Decodes msgpack without reviving anything."""
        if type_ not in VALUE_TYPES:
            raise UnsafeCheckpointError(
                f"refusing a checkpoint value serialized as {type_!r}:"
                f" only {', '.join(sorted(VALUE_TYPES))} are loaded"
            )
        if type_ != "msgpack":
            return
        refused = _refused_names(data, self._allowed_types())
        if refused:
            shown = ", ".join(refused[:_MAX_REPORTED])
            more = (
                f" and {len(refused) - _MAX_REPORTED} more" if len(refused) > _MAX_REPORTED else ""
            )
            raise UnsafeCheckpointError(
                f"refusing a checkpoint value that names types outside the allow-list:"
                f" {shown}{more}; a graph whose state holds them passes them to"
                " AgentmeshSaver(allowed_types=...)"
            )

    def _allowed_types(self) -> frozenset[tuple[str, ...]]:
        # JsonPlusSerializer keeps the normalized extra allow-list here, and
        # with_msgpack_allowlist() (LangGraph's per-graph allow-list) updates it on a
        # copy of this object; True (allow all) is never set by this class.
        extra = self._allowed_msgpack_modules
        if extra is True:  # pragma: no cover - not reachable through this class
            raise UnsafeCheckpointError("an allow-all msgpack allow-list is not accepted")
        return SAFE_MSGPACK_TYPES | frozenset(extra or ())


def _refused_names(data: bytes, allowed: frozenset[tuple[str, ...]]) -> list[str]:
    """The ``module.name`` of every extension value in msgpack ``data`` that is not
    allowed (or that is malformed), decoding nothing but plain msgpack."""
    refused: list[str] = []

    def hook(code: int, payload: bytes) -> None:
        # Never raises: ormsgpack would replace the exception with a bare ValueError.
        if code == EXT_NUMPY_ARRAY:
            return  # dtype, shape and raw bytes: numpy builds no object from a name
        try:
            inner = ormsgpack.unpackb(payload, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
        except (ValueError, TypeError):
            refused.append(f"<malformed extension {code}>")
            return
        if code == EXT_DELTA_SNAPSHOT:
            return  # a container: its content was checked by the nested unpack
        if code not in _NAMED_TYPES and code != EXT_METHOD_SINGLE_ARG:
            refused.append(f"<unknown extension {code}>")
            return
        if not (
            isinstance(inner, list | tuple)
            and len(inner) >= 3
            and isinstance(inner[0], str)
            and isinstance(inner[1], str)
        ):
            refused.append(f"<malformed extension {code}>")
            return
        name = (inner[0], inner[1])
        if code == EXT_METHOD_SINGLE_ARG:
            method = inner[3] if len(inner) > 3 and isinstance(inner[3], str) else ""
            if (*name, method) not in SAFE_MSGPACK_METHODS:
                refused.append(f"{name[0]}.{name[1]}.{method}")
        elif name not in allowed:
            refused.append(f"{name[0]}.{name[1]}")
        return

    try:
        ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
    except (ValueError, TypeError) as exc:
        refused.append(f"<not msgpack: {exc}>")
    return refused
