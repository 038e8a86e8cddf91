"""Log lines are single JSON objects carrying the bound call, for structlog and stdlib."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from agentmesh.core.context import bind_call, bind_job_id, reset_call, reset_job_id
from agentmesh.core.logging import configure_logging
from agentmesh.core.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Configure logging into a buffer; restore the previous configuration afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    buffer = io.StringIO()
    configure_logging(
        Settings.from_env({"AGENTMESH_LOG_LEVEL": "info"}, service="job"), stream=buffer
    )
    try:
        yield buffer
    finally:
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)


def read(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_structlog_line_carries_the_bound_call_and_job(lines: io.StringIO) -> None:
    token = bind_call("req-7", tenant="acme", subject="alice", authorization="Bearer x")
    job_token = bind_job_id("jobs/3")
    try:
        structlog.get_logger().info("job progressed", percent=40)
        structlog.get_logger().debug("below the configured level")
    finally:
        reset_call(token)
        reset_job_id(job_token)

    (line,) = read(lines)
    assert line["event"] == "job progressed"
    assert line["level"] == "info"
    assert line["service"] == "job"
    assert (line["request_id"], line["tenant"], line["job_id"]) == ("req-7", "acme", "jobs/3")
    assert line["percent"] == 40
    assert "authorization" not in json.dumps(line).lower()  # credentials never logged
    assert "trace_id" not in line  # no active span here


def test_stdlib_records_become_json_lines_too(lines: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("asyncpg.pool").exception("connection %s lost", 3)

    (line,) = read(lines)
    assert line["event"] == "connection 3 lost"
    assert line["level"] == "error"
    assert line["logger"] == "asyncpg.pool"
    assert line["service"] == "job"
    assert "ValueError: boom" in line["exception"]
