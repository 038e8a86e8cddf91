"""A model call's failure, after the provider SDK's retries, as a typed domain error.

The openai and anthropic integrations raise LangChain's provider-neutral ``ModelError``
subclasses (which also inherit the SDK's own exception); Bedrock raises botocore's
exceptions. :func:`domain_error` maps both to the errors every servicer raises, so a
caller reports a provider outage, a rate limit or a refused credential with the right
gRPC code instead of INTERNAL:

==========================================  ======================  ==================
failure                                      error                   reason
==========================================  ======================  ==================
429, throttling                              RESOURCE_EXHAUSTED      LLM_RATE_LIMITED
timeout                                      UNAVAILABLE             LLM_TIMEOUT
5xx, connection refused or reset             UNAVAILABLE             LLM_UNAVAILABLE
401, 403 (credentials)                       FAILED_PRECONDITION     LLM_AUTH_FAILED
404 (no such model)                          FAILED_PRECONDITION     LLM_MODEL_NOT_FOUND
input over the model's context window        FAILED_PRECONDITION     LLM_CONTEXT_OVERFLOW
another 4xx (the provider refused the call)  FAILED_PRECONDITION     LLM_REQUEST_REFUSED
a 200 whose body does not parse              UNAVAILABLE             LLM_MALFORMED_ANSWER
==========================================  ======================  ==================

The provider's message goes into the error's, clipped; it never holds our key.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Final

from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)

from agentmesh.core.errors import DomainError, FailedPrecondition, ResourceExhausted, Unavailable

MAX_MESSAGE_CHARS: Final = 300
"""Longest provider message carried into the domain error."""
DEFAULT_RETRY_AFTER_S: Final = 1.0
"""Retry advice when the provider gave none."""
MAX_RETRY_AFTER_S: Final = 3600.0
"""Longest retry advice passed on."""

_BEDROCK_THROTTLING: Final = frozenset(
    {"ThrottlingException", "TooManyRequestsException", "ServiceQuotaExceededException"}
)
_BEDROCK_UNAVAILABLE: Final = frozenset(
    {"InternalServerException", "ServiceUnavailableException", "ModelNotReadyException"}
)
_BEDROCK_AUTH: Final = frozenset(
    {"AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException"}
)
_BEDROCK_NOT_FOUND: Final = frozenset({"ResourceNotFoundException"})


RATE_LIMITED: Final = "LLM_RATE_LIMITED"
TIMEOUT: Final = "LLM_TIMEOUT"
UNAVAILABLE: Final = "LLM_UNAVAILABLE"
AUTH_FAILED: Final = "LLM_AUTH_FAILED"
MODEL_NOT_FOUND: Final = "LLM_MODEL_NOT_FOUND"
CONTEXT_OVERFLOW: Final = "LLM_CONTEXT_OVERFLOW"
REQUEST_REFUSED: Final = "LLM_REQUEST_REFUSED"
MALFORMED: Final = "LLM_MALFORMED_ANSWER"

_SAYS: Final = {
    RATE_LIMITED: "is rate limiting",
    TIMEOUT: "timed out",
    UNAVAILABLE: "failed",
    AUTH_FAILED: "refused our credentials",
    MODEL_NOT_FOUND: "has no such model",
    CONTEXT_OVERFLOW: "says the input exceeds the model's context",
    REQUEST_REFUSED: "refused the call",
    MALFORMED: "sent an answer that does not parse",
}

_LANGCHAIN: Final[tuple[tuple[type[ModelError], str], ...]] = (
    (ModelRateLimitError, RATE_LIMITED),
    (ModelTimeoutError, TIMEOUT),
    (ModelAPIError, UNAVAILABLE),
    (ModelConnectionError, UNAVAILABLE),
    (ModelAuthenticationError, AUTH_FAILED),
    (ModelPermissionDeniedError, AUTH_FAILED),
    (ModelNotFoundError, MODEL_NOT_FOUND),
    (ContextOverflowError, CONTEXT_OVERFLOW),
)


def domain_error(exc: BaseException) -> DomainError | None:
    """The domain error that reports ``exc``, a model call's failure; None when ``exc``
    is not a provider failure (a bug, a cancellation), so the caller re-raises it."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, ModelError):
        reason = next((r for cls, r in _LANGCHAIN if isinstance(exc, cls)), REQUEST_REFUSED)
        retry_after = _retry_after(getattr(exc, "response", None))
        return _error(reason, "the model provider", str(exc), retry_after)
    if isinstance(exc, json.JSONDecodeError):
        # The SDKs parse a 200's body with json.loads and let its error through; from a
        # model call it can only be the provider's answer (no retry: it was a 200).
        return _error(MALFORMED, "the model provider", str(exc))
    botocore = sys.modules.get("botocore.exceptions")  # loaded when Bedrock was used
    if botocore is not None:
        return _from_botocore(exc, botocore)
    return None


def _from_botocore(exc: BaseException, botocore: Any) -> DomainError | None:
    if isinstance(exc, botocore.ReadTimeoutError | botocore.ConnectTimeoutError):
        return _error(TIMEOUT, "Bedrock", str(exc))
    parsers = sys.modules.get("botocore.parsers")
    if parsers is not None and isinstance(exc, parsers.ResponseParserError):
        return _error(MALFORMED, "Bedrock", str(exc))
    if isinstance(exc, botocore.ConnectionError | botocore.HTTPClientError):
        return _error(UNAVAILABLE, "Bedrock", str(exc))
    if not isinstance(exc, botocore.ClientError):
        return None
    error = exc.response.get("Error", {})
    metadata = exc.response.get("ResponseMetadata", {})
    code = str(error.get("Code", ""))
    status = int(metadata.get("HTTPStatusCode", 0) or 0)
    retry_ms = _number(metadata.get("HTTPHeaders", {}).get("x-amz-retry-after"))
    retry_after = retry_ms / 1000 if retry_ms is not None else DEFAULT_RETRY_AFTER_S
    if code in _BEDROCK_THROTTLING or status == 429:
        reason = RATE_LIMITED
    elif code in _BEDROCK_UNAVAILABLE or status >= 500:
        reason = UNAVAILABLE
    elif code in _BEDROCK_AUTH or status in (401, 403):
        reason = AUTH_FAILED
    elif code in _BEDROCK_NOT_FOUND or status == 404:
        reason = MODEL_NOT_FOUND
    else:
        reason = REQUEST_REFUSED
    return _error(reason, "Bedrock", f"{code}: {error.get('Message', '')}", retry_after)


def _error(
    reason: str, who: str, what: str, retry_after_s: float = DEFAULT_RETRY_AFTER_S
) -> DomainError:
    message = f"{who} {_SAYS[reason]}: {_clip(what)}"
    if reason == RATE_LIMITED:
        return ResourceExhausted(message, _bounded(retry_after_s), reason=reason)
    if reason in (TIMEOUT, UNAVAILABLE, MALFORMED):
        return Unavailable(message, reason=reason)
    return FailedPrecondition(reason, message)


def _retry_after(response: Any) -> float:
    """Seconds the provider asked to wait (``retry-after-ms``, ``retry-after``)."""
    headers = getattr(response, "headers", None)
    if headers is None:
        return DEFAULT_RETRY_AFTER_S
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return _bounded(millis / 1000)
    seconds = _number(headers.get("retry-after"))
    return _bounded(seconds) if seconds is not None else DEFAULT_RETRY_AFTER_S


def _number(raw: object) -> float | None:
    try:
        value = float(str(raw)) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def _bounded(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"
