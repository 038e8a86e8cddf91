"""structlog JSON logs: one line per event on stdout, bound to the current call.

Every line carries ``timestamp``, ``level``, ``event`` and ``service``, plus whatever the
current context knows: ``request_id``, ``tenant``, ``trace_id`` and ``job_id`` (see
:mod:`agentmesh.core.context`) and anything bound with ``structlog.contextvars``.
Records from stdlib ``logging`` (grpc, asyncpg, dramatiq…) and Python warnings go
through the same processors, so the stream stays one JSON object per line.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from agentmesh.core import context
from agentmesh.core.settings import Settings


def _add_call_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Merge the bound call; runs only for lines that are written, so reading is lazy."""
    call = context.current_call()
    if call is not None:
        event_dict.setdefault("request_id", call.request_id)
        if call.tenant is not None:
            event_dict.setdefault("tenant", call.tenant)
    trace_id = context.current_trace_id()
    if trace_id is not None:
        event_dict.setdefault("trace_id", trace_id)
    job_id = context.current_job_id()
    if job_id is not None:
        event_dict.setdefault("job_id", job_id)
    return event_dict


def _shared_processors(service: str) -> list[Processor]:
    def add_service(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return [
        structlog.contextvars.merge_contextvars,
        _add_call_context,
        add_service,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging for this process.

    ``stream`` defaults to stdout; tests pass a buffer to read the lines back.
    """
    out = sys.stdout if stream is None else stream
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    shared = _shared_processors(settings.service)
    renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        # Filtering at the bound-logger level makes a disabled ``log.debug(...)`` a no-op
        # method call: the access log on the hot path costs nothing when below level.
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # warnings.warn() would print plain text to stderr; as records of the `py.warnings`
    # logger they are JSON lines like the rest (`event` holds the formatted warning).
    logging.captureWarnings(True)
