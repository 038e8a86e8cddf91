"""What the built-in agents use from the deployment: the Memory service (as the
caller's tenant) and the configured chat models."""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh.langgraph._client import MemoryClient
from agentmesh.llm.models import ChatModels
from agentmesh.llm.settings import LlmSettings


@dataclass(frozen=True)
class AgentResources:
    """Shared by the agents of one process."""

    llm: LlmSettings
    """LLM settings: the default model and the providers."""
    models: ChatModels
    """The chat models, each built once."""
    memory: MemoryClient | None
    """MemoryService, forwarding the caller's authorization; None without
    ``AGENTMESH_MEMORY_ADDR``."""
