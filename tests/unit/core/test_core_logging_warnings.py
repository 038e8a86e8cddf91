"""Python warnings become JSON log lines too, instead of plain text on stderr."""

from __future__ import annotations

import io
import json
import logging
import warnings

import structlog

from agentmesh.core.logging import configure_logging
from agentmesh.core.settings import Settings


def test_a_warning_is_a_json_line() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    buffer = io.StringIO()
    with warnings.catch_warnings():  # restores warnings.showwarning afterwards
        warnings.simplefilter("always")
        logging.captureWarnings(False)  # start from the default, whatever ran before
        try:
            configure_logging(
                Settings.from_env({"AGENTMESH_LOG_LEVEL": "info"}, service="worker"),
                stream=buffer,
            )
            warnings.warn("the old way is going away", DeprecationWarning, stacklevel=1)
        finally:
            logging.captureWarnings(False)
            structlog.configure(**config)
            root.handlers[:] = handlers
            root.setLevel(level)

    (record,) = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert record["logger"] == "py.warnings"
    assert record["level"] == "warning"
    assert record["service"] == "worker"
    assert "DeprecationWarning: the old way is going away" in record["event"]
