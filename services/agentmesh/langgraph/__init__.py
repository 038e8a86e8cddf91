"""LangGraph persistence over MemoryService: agents keep no state of their own.

``AgentmeshSaver`` (a ``BaseCheckpointSaver``) and ``AgentmeshStore`` (a ``BaseStore``)
talk to the Memory service over gRPC, so any agent replica can resume any thread.
"""

from agentmesh.langgraph.saver import AgentmeshSaver
from agentmesh.langgraph.store import AgentmeshStore

__all__ = ["AgentmeshSaver", "AgentmeshStore"]
