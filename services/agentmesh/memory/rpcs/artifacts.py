"""MemoryService RPCs: Versioned artifacts: put, get, list, list versions, delete.

An artifact is a head plus immutable versions 1, 2, 3… (see ``stores/artifacts.py``
for how a put allocates its version, ``domain/artifacts.py`` for the etag rule).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, NoReturn

import asyncpg  # type: ignore[import-untyped]
from google.protobuf import empty_pb2

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import InvalidArgument, NotFound
from agentmesh.core.filtering import EQUALITY, FieldRule, parse_filter
from agentmesh.core.names import ARTIFACTS, ID_PATTERN, SESSIONS
from agentmesh.core.paging import Keyset, page_size
from agentmesh.core.sql import item_bytes
from agentmesh.core.validation import Violations, validate_request_id
from agentmesh.memory.convert import json_to_struct, optional_ref, struct_to_jsonb, timestamp
from agentmesh.memory.domain.artifacts import Content, check_etag, etag, superseded
from agentmesh.memory.rpc import RpcGroup, listing
from agentmesh.memory.stores.artifacts import (
    ArtifactFilter,
    NewVersion,
    allocate_version,
    artifact_exists,
    delete_artifact,
    get_version,
    insert_version,
    list_artifacts,
    list_versions,
    version_sha256,
)
from agentmesh.v1 import memory_pb2

DEFAULT_PAGE_SIZE: Final = 50
MAX_METADATA_BYTES: Final = 16 * 1024

# RFC 6838 §4.2 restricted-name, for both type and subtype. Parameters are not
# accepted: text is UTF-8 by contract, so `; charset=…` would only add ambiguity.
_TOKEN: Final = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE: Final = re.compile(rf"^{_TOKEN}/{_TOKEN}$")

PAGE: Final = Keyset(str)
"""ListArtifacts pages: by artifact id."""
VERSIONS_PAGE: Final = Keyset(int)
"""ListArtifactVersions pages: newest version first."""


# ------------------------------------------------------------------ validation


def media_type(value: str, *, field: str) -> str:
    """A `type/subtype`, lower-cased: media types are case-insensitive (RFC 6838),
    so one spelling is stored and the `media_type` filter matches any."""
    if not value:
        raise InvalidArgument(field, "required, e.g. text/markdown")
    if not _MEDIA_TYPE.fullmatch(value):
        raise InvalidArgument(field, f"{value!r} is not a media type of the form type/subtype")
    return value.lower()


def _content(
    artifact: memory_pb2.Artifact, violations: Violations, *, max_bytes: int
) -> tuple[str | None, bytes]:
    """The text (if text) and the raw bytes of the content, size-checked."""
    kind = artifact.WhichOneof("content")
    if kind is None:
        violations.add("artifact.content", "exactly one of text or data is required")
        return None, b""
    raw = artifact.text.encode() if kind == "text" else artifact.data
    if len(raw) > max_bytes:
        violations.add(
            f"artifact.{kind}", f"content is {len(raw)} bytes; the limit is {max_bytes} bytes"
        )
    elif kind == "text":
        return violations.text_bytes(artifact.text, "artifact.text", max_bytes=max_bytes), raw
    return None, raw


def _new_version(request: memory_pb2.PutArtifactRequest, *, max_bytes: int) -> NewVersion:
    """The version to store; INVALID_ARGUMENT naming every bad field."""
    artifact = request.artifact
    violations = Violations()
    artifact_id = violations.check(lambda: ARTIFACTS.parse(artifact.name, field="artifact.name"))
    kind = violations.check(lambda: media_type(artifact.media_type, field="artifact.media_type"))
    text, raw = _content(artifact, violations, max_bytes=max_bytes)
    metadata = violations.check(
        lambda: struct_to_jsonb(
            artifact.metadata, field="artifact.metadata", max_bytes=MAX_METADATA_BYTES
        )
    )
    session_id = violations.check(
        lambda: optional_ref(artifact.session, SESSIONS, field="artifact.session")
    )
    violations.check(lambda: validate_request_id(request.request_id))
    violations.raise_if_any()
    assert artifact_id is not None
    assert kind is not None
    assert metadata is not None
    content = Content.of(raw)
    return NewVersion(
        artifact_id=artifact_id,
        media_type=kind,
        text=text,
        data=None if text is not None else raw,
        metadata=metadata,
        session_id=session_id,
        size_bytes=content.size_bytes,
        sha256=content.sha256,
    )


# -------------------------------------------------------------------- to proto


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
        etag=etag(row["version"], row["sha256"]),
    )
    if content:
        if row["text"] is not None:
            artifact.text = row["text"]
        else:
            artifact.data = bytes(row["data"])
    return artifact


# ------------------------------------------------------------------------ reads
# Module functions, not methods: every RPC group is mixed into one servicer class,
# where private method names of different groups would collide.


async def _raise_not_found(
    pool: asyncpg.Pool, tenant: str, artifact_id: str, version: int
) -> NoReturn:
    """NOT_FOUND naming the artifact, or `artifacts/{id}@{version}` (AIP-162's
    revision syntax) when the artifact exists but that version does not."""
    name = ARTIFACTS.format(artifact_id)
    if version and await artifact_exists(pool, tenant, artifact_id):
        raise NotFound(ARTIFACTS.resource_type, f"{name}@{version}")
    raise NotFound(ARTIFACTS.resource_type, name)


# ---------------------------------------------------------------------- listing


def _check_session(value: str) -> None:
    if not value.startswith("sessions/") or not ID_PATTERN.fullmatch(value[len("sessions/") :]):
        raise ValueError("expected sessions/{id}")


def _check_media_type(value: str) -> None:
    if not _MEDIA_TYPE.fullmatch(value):
        raise ValueError("expected type/subtype")


_FILTER_RULES: Final = {
    "session": FieldRule(EQUALITY, _check_session),
    "media_type": FieldRule(EQUALITY, _check_media_type),
}


def _artifact_filter(text: str) -> ArtifactFilter:
    """The ListArtifacts filter as the store's conditions; INVALID_ARGUMENT on `filter`."""
    terms = parse_filter(text, _FILTER_RULES)
    return ArtifactFilter(
        session_ids=[
            SESSIONS.parse(term.value, field="filter") for term in terms if term.field == "session"
        ],
        media_types=[term.value.lower() for term in terms if term.field == "media_type"],
    )


class ArtifactRpcs(RpcGroup):
    """Versioned artifacts: put, get, list, list versions, delete."""

    async def PutArtifact(
        self, request: memory_pb2.PutArtifactRequest, context: ServicerContext
    ) -> memory_pb2.Artifact:
        tenant = self.tenant()
        new = _new_version(request, max_bytes=self.deps.settings.artifact_max_bytes)
        await self.deps.quotas.admit(tenant, "artifacts", rows=1, size=new.size_bytes)
        expected = request.artifact.etag
        async with self.deps.pool.acquire() as conn, conn.transaction():

            async def write() -> memory_pb2.Artifact:
                version = await allocate_version(conn, tenant, new)
                if expected:
                    base = superseded(version)
                    sha256 = (
                        await version_sha256(conn, tenant, new.artifact_id, base) if base else None
                    )
                    check_etag(ARTIFACTS.format(new.artifact_id), expected, base, sha256)
                return _to_proto(await insert_version(conn, tenant, new, version), content=True)

            return await self.deps.request_ids.once(
                conn, tenant, "PutArtifact", request, memory_pb2.Artifact, write
            )

    async def GetArtifact(
        self, request: memory_pb2.GetArtifactRequest, context: ServicerContext
    ) -> memory_pb2.Artifact:
        violations = Violations()
        artifact_id = violations.check(lambda: ARTIFACTS.parse(request.name))
        if request.version < 0:
            violations.add("version", "must not be negative; 0 means the latest")
        violations.raise_if_any()
        assert artifact_id is not None
        tenant = self.tenant()
        row = await get_version(self.deps.pool, tenant, artifact_id, request.version)
        if row is None:
            await _raise_not_found(self.deps.pool, tenant, artifact_id, request.version)
        return _to_proto(row, content=True)

    @listing
    async def ListArtifacts(
        self, request: memory_pb2.ListArtifactsRequest, context: ServicerContext
    ) -> memory_pb2.ListArtifactsResponse:
        query = {"filter": request.filter}
        violations = Violations()
        size = violations.check(lambda: page_size(request.page_size, default=DEFAULT_PAGE_SIZE))
        where = violations.check(lambda: _artifact_filter(request.filter))
        after = violations.check(lambda: PAGE.decode(request.page_token, query))
        violations.raise_if_any()
        assert size is not None
        assert where is not None
        rows = await list_artifacts(
            self.deps.pool,
            self.tenant(),
            where,
            after_id=after[0] if after is not None else None,
            limit=size + 1,
            budget=self.deps.process.page_max_bytes,
        )
        page, next_token = PAGE.page(
            rows,
            size,
            query,
            key=lambda row: (row["artifact_id"],),
            budget=self.deps.process.page_max_bytes,
            item_bytes=item_bytes,
        )
        return memory_pb2.ListArtifactsResponse(
            artifacts=[_to_proto(row, content=False) for row in page],
            next_page_token=next_token,
        )

    @listing
    async def ListArtifactVersions(
        self, request: memory_pb2.ListArtifactVersionsRequest, context: ServicerContext
    ) -> memory_pb2.ListArtifactVersionsResponse:
        query = {"name": request.name}
        violations = Violations()
        artifact_id = violations.check(lambda: ARTIFACTS.parse(request.name))
        size = violations.check(lambda: page_size(request.page_size, default=DEFAULT_PAGE_SIZE))
        before = violations.check(lambda: VERSIONS_PAGE.decode(request.page_token, query))
        violations.raise_if_any()
        assert artifact_id is not None
        assert size is not None
        tenant = self.tenant()
        if not await artifact_exists(self.deps.pool, tenant, artifact_id):
            raise NotFound(ARTIFACTS.resource_type, request.name)
        rows = await list_versions(
            self.deps.pool,
            tenant,
            artifact_id,
            before_version=before[0] if before is not None else None,
            limit=size + 1,
            budget=self.deps.process.page_max_bytes,
        )
        page, next_token = VERSIONS_PAGE.page(
            rows,
            size,
            query,
            key=lambda row: (row["version"],),
            budget=self.deps.process.page_max_bytes,
            item_bytes=item_bytes,
        )
        return memory_pb2.ListArtifactVersionsResponse(
            artifacts=[_to_proto(row, content=False) for row in page],
            next_page_token=next_token,
        )

    async def DeleteArtifact(
        self, request: memory_pb2.DeleteArtifactRequest, context: ServicerContext
    ) -> empty_pb2.Empty:
        artifact_id = ARTIFACTS.parse(request.name)
        deleted = await delete_artifact(self.deps.pool, self.tenant(), artifact_id)
        if not deleted and not request.allow_missing:
            raise NotFound(ARTIFACTS.resource_type, request.name)
        return empty_pb2.Empty()
