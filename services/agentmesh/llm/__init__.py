"""LLM providers as LangChain chat models, shared by the Agent runtime, the Conductor's
supervisor and the workers.

- :mod:`agentmesh.llm.settings`: ``AGENTMESH_LLM_*`` (:class:`LlmSettings`).
- :mod:`agentmesh.llm.models`: ``provider:name`` → a configured chat model, with the
  provider SDK's own timeouts and retries (backoff, jitter, ``retry-after``).
- :mod:`agentmesh.llm.structured`: JSON answers validated against a JSON Schema, with
  the validation error sent back to the model.
- :mod:`agentmesh.llm.usage`: token usage read from LangChain messages.
- :mod:`agentmesh.llm.errors`: provider failures as typed domain errors.

Nothing here connects at import time; a chat model connects on its first call.
"""
