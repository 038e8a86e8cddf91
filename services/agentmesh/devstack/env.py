"""The environment of a child process, built one way for `make dev`, `make bench` and the tests.

Every child gets its parent's environment, unbuffered Python output (so its log file shows
each line as it is written, not at exit) and its own `AGENTMESH_*` settings; what differs
between callers is only which settings, and whether the OTLP exporter is inherited.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

OTLP_EXPORTER_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "AGENTMESH_OTLP_ENDPOINT")
"""The variables that point a service's tracer at a collector."""


def child_env(
    base: Mapping[str, str], values: Mapping[str, str], *, drop_otlp: bool
) -> dict[str, str]:
    """A new environment: `base` (the caller passes `os.environ`), without the OTLP exporter
    variables if `drop_otlp`, with `PYTHONUNBUFFERED=1`, then `values` over all of it.

    `drop_otlp` applies to what `base` holds; `values` are set as given. The bench drops the
    exporter (no collector runs beside it: spans stay non-recording, as measured), the dev
    stack keeps it so a developer's collector sees the services.
    """
    env = dict(base)
    if drop_otlp:
        for key in OTLP_EXPORTER_VARIABLES:
            env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env
