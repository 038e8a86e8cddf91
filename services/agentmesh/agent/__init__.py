"""Agent service: the registry of agents (cards) and, later, their LangGraph runtime."""
