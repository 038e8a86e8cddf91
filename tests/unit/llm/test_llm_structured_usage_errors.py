"""Pure parts of the LLM layer: JSON extraction and validation, token usage, the
mapping of provider failures."""

from __future__ import annotations

from typing import Any

import pytest

# botocore ships no type information.
from botocore.exceptions import ClientError, ReadTimeoutError  # type: ignore[import-untyped]
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage

from agentmesh.core.errors import FailedPrecondition, ResourceExhausted, Unavailable
from agentmesh.llm.errors import domain_error
from agentmesh.llm.structured import (
    MAX_ANSWER_CHARS,
    MAX_PROBLEMS,
    StructuredOutputError,
    extract_json,
    invoke_structured,
    problems_of,
    schema_validator,
)
from agentmesh.llm.usage import MAX_TOKENS, TokenUsage, UsageMeter, token_usage

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"n": 1}', {"n": 1}),
        ('  \n{"n": 1}\n', {"n": 1}),
        ('```json\n{"n": 1}\n```', {"n": 1}),
        ('```JSON\n{"n": 1}\n```', {"n": 1}),
        ('Here:\n```\n{"n": 1}\n```\nDone.', {"n": 1}),
        ('```python\nx = 1\n```\n```json\n{"n": 2}\n```', {"n": 2}),
        ('```json\n{"n": \n```\n```json\n{"n": 3}\n```', {"n": 3}),
        ('The answer is {"n": 4}, as asked.', {"n": 4}),
        ("[1, 2]", [1, 2]),
    ],
)
def test_extract_json(text: str, expected: Any) -> None:
    assert extract_json(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "no json here", "```json\n{oops}\n```"])
def test_extract_json_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"no JSON found|empty"):
        extract_json(text)


def test_problems_are_bounded_and_located() -> None:
    schema = {"type": "object", "properties": {f"k{i}": {"type": "string"} for i in range(20)}}
    validator = schema_validator(schema)
    value, problems = problems_of(validator, str({f"k{i}": i for i in range(20)}).replace("'", '"'))
    assert value is None
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0] == "at $.k0: 0 is not of type 'string'"
    assert problems[-1] == "and 10 more"
    _, long_problems = problems_of(validator, '{"k0": ' + '"' + "x" * 10 + '"' + "}")
    assert long_problems == []
    _, too_long = problems_of(validator, " " * (MAX_ANSWER_CHARS + 1))
    assert "at most" in too_long[0]
    assert problems_of(validator, "[1]") == (None, ["expected a JSON object, got list"])


def test_formats_are_asserted() -> None:
    validator = schema_validator({"type": "object", "properties": {"d": {"format": "date"}}})
    assert problems_of(validator, '{"d": "2025-02-30"}')[0] is None
    assert problems_of(validator, '{"d": "2025-02-28"}') == ({"d": "2025-02-28"}, [])


@pytest.mark.parametrize("schema", [{"type": "nonsense"}, {"minimum": "1"}, {"x": {1, 2}}])
def test_invalid_schema_is_failed_precondition(schema: dict[str, Any]) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        schema_validator(schema)
    assert caught.value.reason == "OUTPUT_SCHEMA_INVALID"


async def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempts"):
        # Refused before the model is touched: no model needed.
        await invoke_structured(None, [HumanMessage("x")], SCHEMA, attempts=0)  # type: ignore[arg-type]


def test_structured_output_error_details() -> None:
    error = StructuredOutputError(3, ["at $.n: 'x' is not of type 'integer'"])
    assert error.code.name == "FAILED_PRECONDITION"
    assert error.reason == "MODEL_OUTPUT_INVALID"
    assert "after 3 attempt(s): at $.n" in error.message
    (detail,) = error.details()
    assert detail.violations[0].subject == "output"  # type: ignore[attr-defined]


def test_token_usage() -> None:
    usage = {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14}
    assert token_usage(AIMessage("x", usage_metadata=usage)) == TokenUsage(10, 4, 14)
    assert token_usage(AIMessage("x")) == TokenUsage(0, 0, 0)
    assert token_usage(HumanMessage("x")) == TokenUsage()
    no_total = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 0}
    assert token_usage(AIMessage("x", usage_metadata=no_total)) == TokenUsage(3, 2, 5)
    huge = {"input_tokens": 2**70, "output_tokens": -5, "total_tokens": 2**70}
    assert token_usage(AIMessage("x", usage_metadata=huge)) == TokenUsage(MAX_TOKENS, 0, MAX_TOKENS)


def test_stream_chunks_add_up() -> None:
    first = AIMessageChunk(
        content="a", usage_metadata={"input_tokens": 5, "output_tokens": 0, "total_tokens": 5}
    )
    last = AIMessageChunk(
        content="b", usage_metadata={"input_tokens": 0, "output_tokens": 7, "total_tokens": 7}
    )
    assert token_usage(first + last) == TokenUsage(5, 7, 12)
    meter = UsageMeter()
    meter.add(first)
    meter.add(last)
    assert (meter.calls, meter.usage) == (2, TokenUsage(5, 7, 12))
    assert meter.usage.plus(TokenUsage(1, 1, 2)) == TokenUsage(6, 8, 14)


def _client_error(status: int, code: str, headers: dict[str, str] | None = None) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "m"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
        },
        "Converse",
    )


def test_bedrock_errors() -> None:
    throttled = domain_error(
        _client_error(429, "ThrottlingException", {"x-amz-retry-after": "2500"})
    )
    assert isinstance(throttled, ResourceExhausted)
    assert throttled.retry_after_s == 2.5
    assert isinstance(domain_error(_client_error(503, "ServiceUnavailableException")), Unavailable)
    denied = domain_error(_client_error(403, "AccessDeniedException"))
    assert isinstance(denied, FailedPrecondition)
    assert denied.reason == "LLM_AUTH_FAILED"
    missing = domain_error(_client_error(404, "ResourceNotFoundException"))
    assert isinstance(missing, FailedPrecondition)
    assert missing.reason == "LLM_MODEL_NOT_FOUND"
    timeout = domain_error(ReadTimeoutError(endpoint_url="http://x"))
    assert isinstance(timeout, Unavailable)
    assert timeout.reason == "LLM_TIMEOUT"


def test_other_exceptions_are_not_provider_failures() -> None:
    assert domain_error(RuntimeError("bug")) is None
    assert domain_error(KeyError("bug")) is None
    already = FailedPrecondition("X", "y")
    assert domain_error(already) is already
