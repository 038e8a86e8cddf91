"""The rules of a session's turns: threads per session and agent, who may start a turn
now, and the Conductor's settings' ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agentmesh.conductor.domain.turns import (
    MAX_THREAD_ID,
    Conversation,
    Resumption,
    admit,
    expired,
    thread_id,
)
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.core.errors import Aborted, FailedPrecondition
from agentmesh.core.settings import ConfigError

IDLE = Conversation(None, False, None, None, None, None)
PAUSED = Conversation(None, False, "t1", "i1", "approval", "conv.s.approval")


def test_a_thread_per_session_and_agent_readable_when_it_fits() -> None:
    assert thread_id("s-1", "echo") == "conv.s-1.echo"
    assert thread_id("s-1", "echo") != thread_id("s-1", "approval")
    assert thread_id("s-1", "echo") != thread_id("s-2", "echo")
    long_session, long_agent = "s" + "a" * 62, "b" * 63
    long = thread_id(long_session, long_agent)
    assert len(long) <= MAX_THREAD_ID
    assert long != thread_id(long_session, "c" * 63)
    assert long == thread_id(long_session, long_agent)


def test_an_idle_session_takes_a_message_but_no_resume() -> None:
    assert admit("sessions/s", IDLE, resume_interrupt_id=None) is None
    with pytest.raises(FailedPrecondition) as caught:
        admit("sessions/s", IDLE, resume_interrupt_id="i1")
    assert caught.value.reason == "NO_PAUSED_TURN"


def test_a_paused_session_takes_only_the_resume_of_its_interrupt() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        admit("sessions/s", PAUSED, resume_interrupt_id=None)
    assert caught.value.reason == "TURN_PAUSED"
    with pytest.raises(FailedPrecondition) as caught:
        admit("sessions/s", PAUSED, resume_interrupt_id="other")
    assert caught.value.reason == "INTERRUPT_MISMATCH"
    assert admit("sessions/s", PAUSED, resume_interrupt_id="i1") == Resumption(
        "t1", "approval", "conv.s.approval"
    )


def test_a_running_turn_blocks_the_session_until_its_claim_expires() -> None:
    running = Conversation("t2", False, None, None, None, None)
    with pytest.raises(Aborted):
        admit("sessions/s", running, resume_interrupt_id=None)
    lapsed = Conversation("t2", True, None, None, None, None)
    assert admit("sessions/s", lapsed, resume_interrupt_id=None) is None
    now = datetime.now(UTC)
    assert expired(now - timedelta(seconds=1), now)
    assert not expired(now + timedelta(seconds=1), now)
    assert not expired(None, now)


def test_settings_are_checked_at_start() -> None:
    assert ConductorSettings.from_env({}).default_agent == ""
    loaded = ConductorSettings.from_env({"AGENTMESH_CONDUCTOR_DEFAULT_AGENT": "echo"})
    assert loaded.default_agent == "echo"
    with pytest.raises(ConfigError, match="DEFAULT_AGENT"):
        ConductorSettings.from_env({"AGENTMESH_CONDUCTOR_DEFAULT_AGENT": "agents/echo"})
    with pytest.raises(ConfigError, match="TURN_TIMEOUT_S"):
        ConductorSettings.from_env({"AGENTMESH_CONDUCTOR_TURN_TIMEOUT_S": "0"})
