"""``AgentmeshSaver``: LangGraph's ``BaseCheckpointSaver`` over MemoryService.

Checkpoints and writes are serialized here with a ``StrictSerializer``
(``serde.py``: LangGraph's ``JsonPlusSerializer`` held to an allow-list of types, so
loading a checkpoint that anyone wrote never imports or calls what it names) into
``TypedValue``s the service stores opaquely; metadata travels as JSON text so integers
stay integers and list filters can match it server-side. The whole checkpoint (channel
values included) is one value: the contract has no per-channel blobs, and LangGraph
hands ``put`` complete values.

Use it from async code (``await graph.ainvoke(...)``). The sync methods exist for
LangGraph code running in other threads and are forwarded to the event loop the
saver was created on, like LangGraph's ``AsyncPostgresSaver``.

One run may read a thread's checkpoint twice: a caller that checks the thread before
the run (``graph.aget_state``: its interrupts, its owner) and LangGraph when the run
starts. Inside ``read_through()`` the second read of the same checkpoint is answered
from the first one's response instead of another round trip; it is answered once,
and any write of the run forgets what was read. The scope is one run's context,
never shared between runs, so another replica's writes are seen by the next run.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from typing import Any, Final, TypeVar

import grpc
from langchain_core.runnables import RunnableConfig

from agentmesh.core.settings import Settings
from agentmesh.langgraph._client import (
    DEFAULT_TIMEOUT_S,
    MemoryClient,
    TokenSource,
    open_memory_channel,
    run_sync,
    running_loop_or_none,
)
from agentmesh.langgraph.serde import StrictSerializer
from agentmesh.v1 import memory_pb2
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)

T = TypeVar("T")

MAX_IDS_PER_CALL: Final = 1000
"""The service's limit on run/thread ids per DeleteCheckpointsForRuns/PruneCheckpoints."""
PAGE_SIZE: Final = 100
"""Checkpoints per ListCheckpoints call (the service also cuts pages by bytes)."""


def _config(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
        }
    }


_ReadKey = tuple[str, str, str]
"""(thread id, namespace, checkpoint id or "" for the latest) of a read."""
_Reads = dict[_ReadKey, memory_pb2.CheckpointTuple | None]
"""Within one run: what each read answered (None: no such checkpoint)."""


def _chunks(values: Sequence[str], size: int) -> Iterator[list[str]]:
    unique = list(dict.fromkeys(values))
    for start in range(0, len(unique), size):
        yield unique[start : start + size]


class AgentmeshSaver(BaseCheckpointSaver[str]):
    """Stores LangGraph checkpoints in the Memory service, scoped to the caller's tenant.

    Args:
        channel: a ``grpc.aio`` channel to MemoryService (see :meth:`connect`).
        token: bearer token (or a function returning one) to call with; None forwards
            the authorization of the RPC being served (see ``_client``).
        timeout_s: deadline of each call.
        allowed_types: ``(module, name)`` pairs (or classes) the graph's state holds
            beside LangGraph's safe types (datetimes, UUIDs, LangChain messages, ...);
            a checkpoint naming any other type is refused on load and on store
            (``UnsafeCheckpointError``). There is no way to plug in a permissive or
            pickling serializer.

    Create it on the event loop that will use it (the channel is bound to that loop).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        token: TokenSource = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        allowed_types: Iterable[tuple[str, ...] | type] = (),
    ) -> None:
        super().__init__(serde=StrictSerializer(allowed_types))
        self._client = MemoryClient(channel, token=token, timeout_s=timeout_s)
        self._stub = self._client.stub
        self.loop = running_loop_or_none()
        # Per saver, not per module: the reads of the run in progress in this context.
        self._reads: ContextVar[_Reads | None] = ContextVar(
            f"agentmesh_saver_reads_{id(self)}", default=None
        )

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        target: str,
        settings: Settings,
        *,
        token: TokenSource = None,
        allowed_types: Iterable[tuple[str, ...] | type] = (),
    ) -> AsyncIterator[AgentmeshSaver]:
        """A saver on its own channel to ``target`` (``host:port``), closed on exit."""
        channel = open_memory_channel(target, settings)
        try:
            yield cls(
                channel,
                token=token,
                timeout_s=settings.client_deadline_ms / 1000,
                allowed_types=allowed_types,
            )
        finally:
            await channel.close(None)

    # ------------------------------------------------------------------ reading

    @asynccontextmanager
    async def read_through(self) -> AsyncIterator[None]:
        """One run's scope: a checkpoint read twice in it (the caller's check before the
        run, then LangGraph's own read when the run starts) costs one round trip. The
        second read is served once from the first one's response (deserialized again,
        so nothing is shared between the two); a write of the scope forgets every read.
        """
        reads: _Reads = {}
        token = self._reads.set(reads)
        try:
            yield
        finally:
            reads.clear()
            # An async generator closed by the loop's finalizer ends in another context,
            # where the token does not apply; the cleared dict already ends the scope.
            with suppress(ValueError):
                self._reads.reset(token)

    def _forget_reads(self) -> None:
        reads = self._reads.get()
        if reads:
            reads.clear()

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names, or the thread's latest; None when absent."""
        configurable = config["configurable"]
        request = memory_pb2.GetCheckpointRequest(
            thread_id=str(configurable["thread_id"]),
            checkpoint_ns=configurable.get("checkpoint_ns", ""),
            checkpoint_id=get_checkpoint_id(config) or "",
        )
        reads = self._reads.get()
        key = (request.thread_id, request.checkpoint_ns, request.checkpoint_id)
        if reads is not None and key in reads:
            served = reads.pop(key)
            return self._tuple(served) if served is not None else None
        try:
            found: memory_pb2.CheckpointTuple | None = await self._client.call(
                self._stub.GetCheckpoint, request
            )
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            found = None
        if reads is not None:
            reads[key] = found
        return self._tuple(found) if found is not None else None

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,  # LangGraph's parameter name
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first, by thread/namespace/id of ``config``, metadata
        ``filter`` (containment), older than ``before``, at most ``limit``."""
        if limit is not None and limit <= 0:
            return
        request = self._list_request(config, filter, before)
        remaining = limit
        while True:
            request.page_size = PAGE_SIZE if remaining is None else min(remaining, PAGE_SIZE)
            page = await self._client.call(self._stub.ListCheckpoints, request)
            for found in page.checkpoints:
                yield self._tuple(found)
            if remaining is not None:
                remaining -= len(page.checkpoints)
                if remaining <= 0:
                    return
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    @staticmethod
    def _list_request(
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
    ) -> memory_pb2.ListCheckpointsRequest:
        request = memory_pb2.ListCheckpointsRequest()
        if config is not None:
            configurable = config["configurable"]
            if "thread_id" in configurable:
                request.thread_id = str(configurable["thread_id"])
            # An absent namespace means every namespace; "" is the root graph's.
            if configurable.get("checkpoint_ns") is not None:
                request.checkpoint_ns = configurable["checkpoint_ns"]
            request.checkpoint_id = get_checkpoint_id(config) or ""
        if before is not None:
            request.before_checkpoint_id = get_checkpoint_id(before) or ""
        if filter:
            request.metadata_filter_json = json.dumps(filter, separators=(",", ":"))
        return request

    def _tuple(self, found: memory_pb2.CheckpointTuple) -> CheckpointTuple:
        stored = found.checkpoint
        checkpoint: Checkpoint = self.serde.loads_typed(
            (stored.checkpoint.type, stored.checkpoint.data)
        )
        metadata: CheckpointMetadata = json.loads(stored.metadata_json or "{}")
        parent = (
            _config(stored.thread_id, stored.checkpoint_ns, stored.parent_checkpoint_id)
            if stored.parent_checkpoint_id
            else None
        )
        writes = [
            (
                write.task_id,
                write.channel,
                self.serde.loads_typed((write.value.type, write.value.data)),
            )
            for write in found.pending_writes
        ]
        return CheckpointTuple(
            config=_config(stored.thread_id, stored.checkpoint_ns, stored.checkpoint_id),
            checkpoint=checkpoint,
            metadata=metadata,
            parent_config=parent,
            pending_writes=writes,
        )

    # ------------------------------------------------------------------ writing

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Stores ``checkpoint`` as the child of the checkpoint ``config`` names."""
        self._forget_reads()
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        type_, data = self.serde.dumps_typed(checkpoint)
        # Like LangGraph's Postgres saver: config metadata folded in, stored as JSON.
        metadata_json = json.dumps(
            get_serializable_checkpoint_metadata(config, metadata), separators=(",", ":")
        )
        stored = memory_pb2.Checkpoint(
            thread_id=thread_id,
            checkpoint_ns=checkpoint_ns,
            checkpoint_id=checkpoint["id"],
            parent_checkpoint_id=configurable.get("checkpoint_id") or "",
            checkpoint=memory_pb2.TypedValue(type=type_, data=data),
            metadata_json=metadata_json,
        )
        await self._client.call(
            self._stub.PutCheckpoint, memory_pb2.PutCheckpointRequest(checkpoint=stored)
        )
        return _config(thread_id, checkpoint_ns, checkpoint["id"])

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Stores a task's writes against the checkpoint ``config`` names."""
        if not writes:
            return
        self._forget_reads()
        configurable = config["configurable"]
        pending = []
        for idx, (channel, value) in enumerate(writes):
            type_, data = self.serde.dumps_typed(value)
            pending.append(
                memory_pb2.PendingWrite(
                    task_id=task_id,
                    channel=channel,
                    value=memory_pb2.TypedValue(type=type_, data=data),
                    # Special channels (errors, interrupts...) get fixed negative slots,
                    # so a task's later error replaces its earlier one.
                    idx=WRITES_IDX_MAP.get(channel, idx),
                    task_path=task_path,
                )
            )
        request = memory_pb2.PutCheckpointWritesRequest(
            thread_id=str(configurable["thread_id"]),
            checkpoint_ns=configurable.get("checkpoint_ns", ""),
            checkpoint_id=configurable["checkpoint_id"],
            writes=pending,
        )
        await self._client.call(self._stub.PutCheckpointWrites, request)

    async def adelete_thread(self, thread_id: str) -> None:
        """Deletes every checkpoint and write of the thread, in every namespace."""
        self._forget_reads()
        await self._client.call(
            self._stub.DeleteThread, memory_pb2.DeleteThreadRequest(thread_id=str(thread_id))
        )

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Deletes the checkpoints (and their writes) that the given runs created."""
        self._forget_reads()
        for chunk in _chunks(run_ids, MAX_IDS_PER_CALL):
            await self._client.call(
                self._stub.DeleteCheckpointsForRuns,
                memory_pb2.DeleteCheckpointsForRunsRequest(run_ids=chunk),
            )

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copies every checkpoint and write (the whole parent chain) to a new thread.

        Raises ValueError when the source has no checkpoints or the target has some.
        """
        self._forget_reads()
        request = memory_pb2.CopyThreadRequest(
            source_thread_id=str(source_thread_id), target_thread_id=str(target_thread_id)
        )
        try:
            await self._client.call(self._stub.CopyThread, request)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise ValueError(f"thread {source_thread_id!r} has no checkpoints") from err
            if err.code() == grpc.StatusCode.ALREADY_EXISTS:
                raise ValueError(f"thread {target_thread_id!r} already has checkpoints") from err
            raise

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep each namespace's newest checkpoint (plus the ancestors
        its delta channels need, decided by the service); ``delete``: delete all."""
        self._forget_reads()
        if strategy == "delete":
            for thread_id in dict.fromkeys(thread_ids):
                await self.adelete_thread(thread_id)
        elif strategy == "keep_latest":
            for chunk in _chunks(thread_ids, MAX_IDS_PER_CALL):
                await self._client.call(
                    self._stub.PruneCheckpoints,
                    memory_pb2.PruneCheckpointsRequest(thread_ids=chunk, keep_latest=1),
                )
        else:
            raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Monotonic string versions with a random tiebreak, as LangGraph's own savers
        use: concurrent writers of one channel never produce equal versions."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # ------------------------------------------------------ synchronous forms

    def _sync(self, make: Callable[[], Any], async_name: str) -> Any:
        if self.loop is None:
            raise RuntimeError(
                "AgentmeshSaver was created outside an event loop; create it on the loop "
                "that runs the graph"
            )
        return run_sync(self.loop, self._client, make, async_name=async_name)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        result: CheckpointTuple | None = self._sync(lambda: self.aget_tuple(config), "aget_tuple")
        return result

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        # Collected on the loop in one go: an async generator cannot be stepped from
        # another thread without one round trip per item.
        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before, limit=limit)]

        found: list[CheckpointTuple] = self._sync(collect, "alist")
        return iter(found)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        stored: RunnableConfig = self._sync(
            lambda: self.aput(config, checkpoint, metadata, new_versions), "aput"
        )
        return stored

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._sync(lambda: self.aput_writes(config, writes, task_id, task_path), "aput_writes")

    def delete_thread(self, thread_id: str) -> None:
        self._sync(lambda: self.adelete_thread(thread_id), "adelete_thread")

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._sync(lambda: self.adelete_for_runs(run_ids), "adelete_for_runs")

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._sync(lambda: self.acopy_thread(source_thread_id, target_thread_id), "acopy_thread")

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._sync(lambda: self.aprune(thread_ids, strategy=strategy), "aprune")
