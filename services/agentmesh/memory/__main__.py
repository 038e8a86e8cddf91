"""``python -m agentmesh.memory``: run the Memory service until SIGTERM."""

from agentmesh.core.entrypoint import run_service
from agentmesh.memory.app import build_memory
from agentmesh.memory.settings import MemorySettings

if __name__ == "__main__":
    run_service("memory", build_memory, MemorySettings.from_env)
