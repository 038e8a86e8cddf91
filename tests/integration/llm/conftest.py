"""Fixtures of the LLM provider tests: a scripted provider server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from providers.server import ScriptedServer, serving


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A provider server on a free loopback port, stopped after the test."""
    with serving() as scripted:
        yield scripted


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static AWS credentials for the default chain (the fake server checks no
    signature; without them botocore would look for an instance role)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
