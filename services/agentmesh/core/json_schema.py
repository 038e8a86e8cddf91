"""JSON Schema checks of structured inputs, shared by every service that takes one
(an agent run's input, a job's input): each schema error becomes a field violation.

A ``google.protobuf.Struct`` holds every number as a double, so ``2`` arrives as
``2.0``; :func:`whole_numbers` gives graphs and schemas (``"type": "integer"``) the
JSON they were written for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import jsonschema  # type: ignore[import-untyped]  # ships no type hints

from agentmesh.core.validation import Violations

MAX_SCHEMA_ERRORS: Final = 20
"""Schema errors reported at most: the first ones say enough, the rest cost."""


def compile_schema(schema: Mapping[str, Any]) -> Any:
    """The validator of ``schema``, built once per schema (building one costs more than
    most validations); None when there is no schema."""
    return jsonschema.Draft202012Validator(dict(schema)) if schema else None


def schema_violations(
    value: Mapping[str, Any], validator: Any, violations: Violations, *, field: str
) -> None:
    """One violation per JSON Schema error of ``value``, on its path under ``field``."""
    if validator is None:
        return
    for count, error in enumerate(validator.iter_errors(dict(value))):
        if count >= MAX_SCHEMA_ERRORS:
            violations.add(field, f"more than {MAX_SCHEMA_ERRORS} schema errors")
            break
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        violations.add(field + path, error.message)


def whole_numbers(value: Any) -> Any:
    """``value`` with every whole float as an int (equal in JSON), recursively."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value
