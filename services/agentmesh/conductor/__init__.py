"""Conductor service: the conversation flow of a session (routing, streaming, hand-off to jobs)."""
