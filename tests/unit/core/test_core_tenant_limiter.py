"""TenantLimiter: a tenant at its limit is refused at once; other tenants are not."""

from __future__ import annotations

import grpc
import pytest

from agentmesh.core.errors import ResourceExhausted
from agentmesh.core.limits import TenantLimiter

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_a_tenant_at_its_limit_is_refused_and_others_are_not(limit: int) -> None:
    limiter = TenantLimiter(limit, what="search")
    holds = [limiter.hold("a") for _ in range(limit)]
    for hold in holds:
        hold.__enter__()
    with pytest.raises(ResourceExhausted) as refused, limiter.hold("a"):
        pass
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.reason == "TENANT_CONCURRENCY_LIMIT"
    assert refused.value.retry_after_s > 0
    with limiter.hold("b"):  # another tenant is not affected
        assert limiter.running("b") == 1
    holds[0].__exit__(None, None, None)
    with limiter.hold("a"):  # a slot came free
        assert limiter.running("a") == limit
    for hold in holds[1:]:
        hold.__exit__(None, None, None)
    assert limiter.running("a") == 0


def test_a_failing_call_frees_its_slot() -> None:
    limiter = TenantLimiter(1, what="search")
    with pytest.raises(RuntimeError), limiter.hold("a"):
        raise RuntimeError("the call failed")
    with limiter.hold("a"):
        pass
