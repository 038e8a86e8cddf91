"""Structured answers: JSON matching a JSON Schema, with the validation error sent back.

The model is told the schema in the system prompt and asked for one JSON object; its
answer's JSON is taken out of a markdown fence when there is one, validated with
``jsonschema`` (draft 2020-12, the dialect of agents' schemas, formats asserted), and
when it is not valid the answer and the validation errors go back to the model as the
next turn, until ``attempts`` calls were made. This works the same on every provider and
OpenAI-compatible server (a provider's native JSON mode is not everywhere, nor the same
dialect), and the schema stays the judge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Final

# jsonschema ships no type information (and types-jsonschema is not in the lock).
import jsonschema  # type: ignore[import-untyped]
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from agentmesh.core.errors import FailedPrecondition
from agentmesh.core.offload import convert_sized
from agentmesh.llm.usage import UsageMeter

MAX_ANSWER_CHARS: Final = 1_000_000
"""Longest answer parsed; a longer one counts as invalid (and is not sent back)."""
MAX_SCHEMA_CHARS: Final = 256 * 1024
"""Largest output schema, as JSON."""
MAX_PROBLEMS: Final = 10
"""Validation errors reported per answer (to the model and in the final error)."""
MAX_PROBLEM_CHARS: Final = 300
"""Longest description of one validation error (jsonschema's quote the instance)."""
MAX_ECHO_CHARS: Final = 20_000
"""Longest previous answer sent back to the model with the errors."""

REASON: Final = "MODEL_OUTPUT_INVALID"
"""Reason of :class:`StructuredOutputError`."""
REASON_SCHEMA: Final = "OUTPUT_SCHEMA_INVALID"
"""Reason of the error when the schema itself is not valid draft 2020-12."""

_FENCE: Final = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)

INSTRUCTION: Final = (
    "Answer with a single JSON object that validates against this JSON Schema "
    "(draft 2020-12), and nothing else: no prose, no comments.\n\nSchema:\n{schema}"
)
FEEDBACK: Final = (
    "Your previous answer is not valid: {problems}\n\n"
    "Answer again with only the corrected JSON object."
)


class StructuredOutputError(FailedPrecondition):
    """The model gave no valid answer in its attempts.

    FAILED_PRECONDITION, reason ``MODEL_OUTPUT_INVALID``, with one ``PreconditionFailure``
    violation per problem of the last answer: not INVALID_ARGUMENT (the caller's input
    was fine), not UNAVAILABLE (nothing is down, and neither clients nor Envoy should
    retry it automatically: every retry spends tokens), not INTERNAL (it is a known
    outcome with a fix: another model, a clearer prompt, a looser schema, more attempts).
    """

    def __init__(self, attempts: int, problems: Sequence[str]) -> None:
        self.attempts = attempts
        self.problems = tuple(problems)
        first = problems[0] if problems else "no answer"
        super().__init__(
            REASON,
            f"the model's answer did not match the output schema after {attempts} "
            f"attempt(s): {first}",
            [("MODEL_OUTPUT", "output", problem) for problem in problems],
        )


def schema_validator(schema: Mapping[str, Any]) -> Any:
    """A draft 2020-12 validator of ``schema`` (formats asserted); raises
    FailedPrecondition (``OUTPUT_SCHEMA_INVALID``) when the schema is too large or not a
    valid schema."""
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError) as exc:
        raise _bad_schema(f"not JSON: {exc}") from None
    if size > MAX_SCHEMA_CHARS:
        raise _bad_schema(f"{size} characters, at most {MAX_SCHEMA_CHARS}")
    validator_cls = jsonschema.Draft202012Validator
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _bad_schema(_clip(exc.message)) from None
    return validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)


def extract_json(text: str) -> Any:
    """The JSON value in ``text``: a fenced block's (````json`` or a bare fence; the
    first that parses), else the whole text, else what lies between its first ``{`` and
    last ``}``. Raises ``ValueError`` saying why none parses."""
    candidates = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "json")]
    stripped = text.strip()
    candidates.append(stripped)
    start, end = stripped.find("{"), stripped.rfind("}")
    if 0 <= start < end:
        candidates.append(stripped[start : end + 1])
    first_error = ""
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError as exc:
            first_error = first_error or str(exc)
    raise ValueError(f"no JSON found ({first_error})" if stripped else "the answer is empty")


def problems_of(validator: Any, text: str) -> tuple[dict[str, Any] | None, list[str]]:
    """``(value, [])`` when ``text`` holds a JSON object the validator accepts, else
    ``(None, problems)``: at most :data:`MAX_PROBLEMS`, each with its JSON path."""
    if len(text) > MAX_ANSWER_CHARS:
        return None, [f"the answer is {len(text)} characters long, at most {MAX_ANSWER_CHARS}"]
    try:
        value = extract_json(text)
    except ValueError as exc:
        return None, [_clip(str(exc))]
    if not isinstance(value, dict):
        return None, [f"expected a JSON object, got {type(value).__name__}"]
    errors = sorted(validator.iter_errors(value), key=lambda error: list(error.path))
    problems = [f"at {error.json_path}: {_clip(error.message)}" for error in errors]
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"and {len(problems) - MAX_PROBLEMS} more"]
    return (None, problems) if problems else (value, [])


async def invoke_structured(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    schema: Mapping[str, Any],
    *,
    attempts: int,
    meter: UsageMeter | None = None,
    config: RunnableConfig | None = None,
) -> dict[str, Any]:
    """The model's answer to ``messages`` as a JSON object valid against ``schema``.

    Makes at most ``attempts`` model calls (``AGENTMESH_LLM_STRUCTURED_ATTEMPTS``; each
    call itself retried by the provider SDK on 429/5xx/timeouts): after an invalid
    answer, that answer and its validation errors go back to the model. ``meter``, when
    given, counts the tokens of every call; ``config`` goes with every call (tags such
    as LangGraph's ``nostream``, callbacks). Raises :class:`StructuredOutputError` after
    the last invalid answer, FailedPrecondition (``OUTPUT_SCHEMA_INVALID``) for a schema
    that is not valid draft 2020-12, and lets the model's own errors through (see
    :func:`agentmesh.llm.errors.domain_error`). Parsing and validation run off the event
    loop when the answer is large.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    validator = schema_validator(schema)
    conversation = _with_instruction(messages, schema)
    problems: list[str] = []
    for _ in range(attempts):
        answer = await model.ainvoke(conversation, config)
        if meter is not None:
            meter.add(answer)
        text = answer.text
        value, problems = await convert_sized(partial(problems_of, validator, text), len(text))
        if value is not None:
            return value
        conversation = [
            *conversation,
            AIMessage(content=text[:MAX_ECHO_CHARS]),
            HumanMessage(content=FEEDBACK.format(problems="; ".join(problems))),
        ]
    raise StructuredOutputError(attempts, problems)


def _with_instruction(
    messages: Sequence[BaseMessage], schema: Mapping[str, Any]
) -> list[BaseMessage]:
    """``messages`` with the schema instruction in the system prompt: appended to a
    leading system message, else as one (every provider takes a first system message)."""
    instruction = INSTRUCTION.format(schema=json.dumps(schema, indent=1, sort_keys=True))
    if messages and isinstance(messages[0], SystemMessage):
        first = messages[0]
        return [SystemMessage(content=f"{first.text}\n\n{instruction}"), *messages[1:]]
    return [SystemMessage(content=instruction), *messages]


def _bad_schema(why: str) -> FailedPrecondition:
    return FailedPrecondition(
        REASON_SCHEMA,
        f"the output schema is not valid JSON Schema (draft 2020-12): {why}",
        [("OUTPUT_SCHEMA", "output_schema", why)],
    )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 1] + "…"
