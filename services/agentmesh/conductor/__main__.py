"""``python -m agentmesh.conductor``: run the Conductor service until SIGTERM."""

from agentmesh.conductor.app import build_conductor
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.core.entrypoint import run_service
from agentmesh.llm.settings import LlmSettings

if __name__ == "__main__":
    run_service("conductor", build_conductor, ConductorSettings.from_env, LlmSettings.from_env)
