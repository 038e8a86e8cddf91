"""The agent runtime: run requests checked, graphs run, LangGraph streams as AgentEvents."""
