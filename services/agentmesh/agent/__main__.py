"""``python -m agentmesh.agent``: run the Agent service until SIGTERM."""

from agentmesh.agent.app import build_agent
from agentmesh.agent.settings import AgentSettings
from agentmesh.core.entrypoint import run_service
from agentmesh.llm.settings import LlmSettings

if __name__ == "__main__":
    run_service("agent", build_agent, AgentSettings.from_env, LlmSettings.from_env)
