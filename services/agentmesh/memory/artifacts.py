"""MemoryService RPCs: Versioned artifacts: put, get, list, list versions, delete.

An artifact is a head row (`memory.artifacts`) plus immutable versions
(`memory.artifact_versions`). A put allocates its version with one upsert on the
head row: the row lock makes concurrent puts of one artifact queue up, so
versions are 1, 2, 3… with neither gaps nor duplicates, and the etag check that
follows sees the version it will supersede.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import asyncpg  # type: ignore[import-untyped]
from google.protobuf import empty_pb2

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import Aborted, InvalidArgument, NotFound
from agentmesh.core.filtering import EQUALITY, FieldRule, parse_filter
from agentmesh.core.names import ARTIFACTS, ID_PATTERN, SESSIONS
from agentmesh.core.paging import decode_page_token, encode_page_token, page_size
from agentmesh.memory import idempotency
from agentmesh.memory.convert import json_to_struct, timestamp
from agentmesh.memory.decisions import Where, check_text, metadata_json, optional_ref
from agentmesh.memory.rpc import RpcGroup
from agentmesh.v1 import memory_pb2

DEFAULT_PAGE_SIZE: Final = 50
MAX_METADATA_BYTES: Final = 16 * 1024

# RFC 6838 §4.2 restricted-name, for both type and subtype. Parameters are not
# accepted: text is UTF-8 by contract, so `; charset=…` would only add ambiguity.
_TOKEN: Final = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE: Final = re.compile(rf"^{_TOKEN}/{_TOKEN}$")

_BAD_TOKEN: Final = "not a page token issued by this method"

# Everything but the content, which List methods omit (and need not read).
_META: Final = """
    v.artifact_id, v.version, v.media_type, v.metadata, v.session_id, v.size_bytes,
    v.sha256, v.create_time
"""
_WITH_CONTENT: Final = _META + ", v.text, v.data"
_LATEST: Final = """
    memory.artifacts h JOIN memory.artifact_versions v
      ON v.tenant = h.tenant AND v.artifact_id = h.id AND v.version = h.latest_version
"""


@dataclass(frozen=True, slots=True)
class _NewVersion:
    """A validated PutArtifact request, ready to store."""

    artifact_id: str
    media_type: str
    text: str | None
    data: bytes | None
    metadata: str
    session_id: str | None
    size_bytes: int
    sha256: str


def media_type(value: str, *, field: str) -> str:
    """A `type/subtype`, lower-cased: media types are case-insensitive (RFC 6838),
    so one spelling is stored and the `media_type` filter matches any."""
    if not value:
        raise InvalidArgument(field, "required, e.g. text/markdown")
    if not _MEDIA_TYPE.match(value):
        raise InvalidArgument(field, f"{value!r} is not a media type of the form type/subtype")
    return value.lower()


def _content(artifact: memory_pb2.Artifact, *, max_bytes: int) -> tuple[str | None, bytes]:
    """The text (if text) and the raw bytes of the content, size-checked."""
    kind = artifact.WhichOneof("content")
    if kind is None:
        raise InvalidArgument("artifact.content", "exactly one of text or data is required")
    raw = artifact.text.encode() if kind == "text" else artifact.data
    if len(raw) > max_bytes:
        raise InvalidArgument(
            f"artifact.{kind}",
            f"content is {len(raw)} bytes; the limit is {max_bytes} bytes",
        )
    if kind == "text":
        return check_text(artifact.text, field="artifact.text", max_bytes=max_bytes), raw
    return None, raw


def _validate(artifact: memory_pb2.Artifact, *, max_bytes: int) -> _NewVersion:
    artifact_id = ARTIFACTS.parse(artifact.name, field="artifact.name")
    kind = media_type(artifact.media_type, field="artifact.media_type")
    text, raw = _content(artifact, max_bytes=max_bytes)
    return _NewVersion(
        artifact_id=artifact_id,
        media_type=kind,
        text=text,
        data=None if text is not None else raw,
        metadata=metadata_json(
            artifact.metadata, field="artifact.metadata", max_bytes=MAX_METADATA_BYTES
        ),
        session_id=optional_ref(artifact.session, SESSIONS, field="artifact.session"),
        size_bytes=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _etag(version: int, sha256: str) -> str:
    """Opaque to clients. The content hash beside the version means an etag read
    before an artifact was deleted and re-created does not match the new one
    (unless the content is the same, when the difference does not matter)."""
    return f'"{version}-{sha256[:16]}"'


def _to_proto(row: Mapping[str, Any], *, content: bool) -> memory_pb2.Artifact:
    artifact = memory_pb2.Artifact(
        name=ARTIFACTS.format(row["artifact_id"]),
        version=row["version"],
        media_type=row["media_type"],
        metadata=json_to_struct(row["metadata"]),
        session=SESSIONS.format(row["session_id"]) if row["session_id"] else "",
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        create_time=timestamp(row["create_time"]),
        etag=_etag(row["version"], row["sha256"]),
    )
    if content:
        if row["text"] is not None:
            artifact.text = row["text"]
        else:
            artifact.data = bytes(row["data"])
    return artifact


# ----------------------------------------------------------------------- writes


async def _next_version(conn: asyncpg.Connection, tenant: str, new: _NewVersion) -> int:
    """Creates the head (version 1) or bumps it, holding its row lock until commit.

    The head mirrors the newest version's session and media type for ListArtifacts.
    """
    version: int = await conn.fetchval(
        """
        INSERT INTO memory.artifacts AS head (tenant, id, latest_version, session_id, media_type)
        VALUES ($1, $2, 1, $3, $4)
        ON CONFLICT (tenant, id) DO UPDATE
            SET latest_version = head.latest_version + 1,
                session_id = EXCLUDED.session_id,
                media_type = EXCLUDED.media_type,
                update_time = now()
        RETURNING latest_version
        """,
        tenant,
        new.artifact_id,
        new.session_id,
        new.media_type,
    )
    return version


async def _check_etag(
    conn: asyncpg.Connection, tenant: str, new: _NewVersion, latest: int, expected: str
) -> None:
    """ABORTED unless `expected` is the etag of version `latest` (0: none yet)."""
    sha256 = await conn.fetchval(
        "SELECT sha256 FROM memory.artifact_versions"
        " WHERE tenant = $1 AND artifact_id = $2 AND version = $3",
        tenant,
        new.artifact_id,
        latest,
    )
    if sha256 is None or _etag(latest, sha256) != expected:
        name = ARTIFACTS.format(new.artifact_id)
        raise Aborted(
            "ETAG_MISMATCH",
            f"{name} changed since etag {expected} was read"
            f" (latest version is {latest}); get it again and retry",
        )


async def _insert_version(
    conn: asyncpg.Connection, tenant: str, new: _NewVersion, version: int
) -> memory_pb2.Artifact:
    row = await conn.fetchrow(
        f"""
        INSERT INTO memory.artifact_versions AS v (
            tenant, artifact_id, version, media_type, text, data, metadata, session_id,
            size_bytes, sha256
        )
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10)
        RETURNING {_WITH_CONTENT}
        """,
        tenant,
        new.artifact_id,
        version,
        new.media_type,
        new.text,
        new.data,
        new.metadata,
        new.session_id,
        new.size_bytes,
        new.sha256,
    )
    return _to_proto(row, content=True)


# ------------------------------------------------------------------------ reads
# Module functions, not methods: every RPC group is mixed into one servicer class,
# where private method names of different groups would collide.


async def _exists(pool: asyncpg.Pool, tenant: str, artifact_id: str) -> bool:
    found = await pool.fetchval(
        "SELECT true FROM memory.artifacts WHERE tenant = $1 AND id = $2",
        tenant,
        artifact_id,
    )
    return bool(found)


async def _raise_not_found(
    pool: asyncpg.Pool, tenant: str, artifact_id: str, version: int
) -> NoReturn:
    """NOT_FOUND naming the artifact, or `artifacts/{id}@{version}` (AIP-162's
    revision syntax) when the artifact exists but that version does not."""
    name = ARTIFACTS.format(artifact_id)
    if version and await _exists(pool, tenant, artifact_id):
        raise NotFound(ARTIFACTS.resource_type, f"{name}@{version}")
    raise NotFound(ARTIFACTS.resource_type, name)


# ---------------------------------------------------------------------- listing


def _check_session(value: str) -> None:
    if not value.startswith("sessions/") or not ID_PATTERN.match(value[len("sessions/") :]):
        raise ValueError("expected sessions/{id}")


def _check_media_type(value: str) -> None:
    if not _MEDIA_TYPE.match(value):
        raise ValueError("expected type/subtype")


_FILTER_RULES: Final = {
    "session": FieldRule(EQUALITY, _check_session),
    "media_type": FieldRule(EQUALITY, _check_media_type),
}


def _after_id(position: dict[str, Any] | None) -> str | None:
    if position is None:
        return None
    after = position.get("after")
    if not isinstance(after, str) or not ID_PATTERN.match(after):
        raise InvalidArgument("page_token", _BAD_TOKEN)
    return after


def _before_version(position: dict[str, Any] | None) -> int | None:
    if position is None:
        return None
    before = position.get("before")
    if type(before) is not int or before < 1:
        raise InvalidArgument("page_token", _BAD_TOKEN)
    return before


class ArtifactRpcs(RpcGroup):
    """Versioned artifacts: put, get, list, list versions, delete.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """

    async def PutArtifact(
        self, request: memory_pb2.PutArtifactRequest, context: ServicerContext
    ) -> memory_pb2.Artifact:
        tenant = self.tenant()
        new = _validate(request.artifact, max_bytes=self.deps.settings.artifact_max_bytes)
        idempotency.validate_request_id(request.request_id)
        async with self.deps.pool.acquire() as conn, conn.transaction():
            replay = await idempotency.claim(
                conn,
                tenant,
                "PutArtifact",
                request.request_id,
                memory_pb2.Artifact,
                ttl_s=self.deps.settings.request_id_ttl_s,
                request=request,
            )
            if replay is not None:
                return replay
            version = await _next_version(conn, tenant, new)
            if request.artifact.etag:
                await _check_etag(conn, tenant, new, version - 1, request.artifact.etag)
            artifact = await _insert_version(conn, tenant, new, version)
            await idempotency.remember(conn, tenant, "PutArtifact", request.request_id, artifact)
        return artifact

    async def GetArtifact(
        self, request: memory_pb2.GetArtifactRequest, context: ServicerContext
    ) -> memory_pb2.Artifact:
        artifact_id = ARTIFACTS.parse(request.name)
        if request.version < 0:
            raise InvalidArgument("version", "must not be negative; 0 means the latest")
        tenant = self.tenant()
        if request.version == 0:
            row = await self.deps.pool.fetchrow(
                f"SELECT {_WITH_CONTENT} FROM {_LATEST} WHERE h.tenant = $1 AND h.id = $2",
                tenant,
                artifact_id,
            )
        else:
            row = await self.deps.pool.fetchrow(
                f"SELECT {_WITH_CONTENT} FROM memory.artifact_versions v"
                " WHERE v.tenant = $1 AND v.artifact_id = $2 AND v.version = $3",
                tenant,
                artifact_id,
                request.version,
            )
        if row is None:
            await _raise_not_found(self.deps.pool, tenant, artifact_id, request.version)
        return _to_proto(row, content=True)

    async def ListArtifacts(
        self, request: memory_pb2.ListArtifactsRequest, context: ServicerContext
    ) -> memory_pb2.ListArtifactsResponse:
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        terms = parse_filter(request.filter, _FILTER_RULES)
        bound_to = {"filter": request.filter}
        after = _after_id(decode_page_token(request.page_token, bound_to))
        where = Where(self.tenant(), column="h.tenant")
        for term in terms:
            if term.field == "session":
                where.add("h.session_id = {}", SESSIONS.parse(term.value, field="filter"))
            else:
                where.add("h.media_type = {}", term.value.lower())
        if after is not None:
            where.add("h.id > {}", after)
        rows = await self.deps.pool.fetch(
            f"SELECT {_META} FROM {_LATEST} WHERE {where.where} ORDER BY h.id LIMIT {size + 1}",
            *where.args,
        )
        page = rows[:size]
        next_token = ""
        if len(rows) > size:
            next_token = encode_page_token({"after": page[-1]["artifact_id"]}, bound_to)
        return memory_pb2.ListArtifactsResponse(
            artifacts=[_to_proto(row, content=False) for row in page],
            next_page_token=next_token,
        )

    async def ListArtifactVersions(
        self, request: memory_pb2.ListArtifactVersionsRequest, context: ServicerContext
    ) -> memory_pb2.ListArtifactVersionsResponse:
        artifact_id = ARTIFACTS.parse(request.name)
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        bound_to = {"name": request.name}
        before = _before_version(decode_page_token(request.page_token, bound_to))
        tenant = self.tenant()
        if not await _exists(self.deps.pool, tenant, artifact_id):
            raise NotFound(ARTIFACTS.resource_type, request.name)
        where = Where(tenant, column="v.tenant")
        where.add("v.artifact_id = {}", artifact_id)
        if before is not None:
            where.add("v.version < {}", before)
        rows = await self.deps.pool.fetch(
            f"SELECT {_META} FROM memory.artifact_versions v WHERE {where.where}"
            f" ORDER BY v.version DESC LIMIT {size + 1}",
            *where.args,
        )
        page = rows[:size]
        next_token = ""
        if len(rows) > size:
            next_token = encode_page_token({"before": page[-1]["version"]}, bound_to)
        return memory_pb2.ListArtifactVersionsResponse(
            artifacts=[_to_proto(row, content=False) for row in page],
            next_page_token=next_token,
        )

    async def DeleteArtifact(
        self, request: memory_pb2.DeleteArtifactRequest, context: ServicerContext
    ) -> empty_pb2.Empty:
        artifact_id = ARTIFACTS.parse(request.name)
        # The versions go with the head (ON DELETE CASCADE), in this one statement.
        deleted = await self.deps.pool.fetchval(
            "DELETE FROM memory.artifacts WHERE tenant = $1 AND id = $2 RETURNING id",
            self.tenant(),
            artifact_id,
        )
        if deleted is None and not request.allow_missing:
            raise NotFound(ARTIFACTS.resource_type, request.name)
        return empty_pb2.Empty()
