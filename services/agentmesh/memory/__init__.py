"""Memory service: sessions, history, semantic memory, decisions, artifacts,
working memory and LangGraph checkpoints."""
