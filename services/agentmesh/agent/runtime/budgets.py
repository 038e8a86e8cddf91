"""Per-tenant budgets of agent runs: runs per minute and LLM tokens per day, shared by
every replica through Redis (the `limits` library's fixed windows, ADR 0022).

A run is admitted before it starts: past the tenant's runs per minute, or with the
day's tokens already spent, it is RESOURCE_EXHAUSTED with ``QuotaFailure`` (which
budget, its limit) and ``RetryInfo`` (when the window resets). The tokens a run used
are counted when it ends, so a run that starts under the budget may end past it (the
next one is refused). Without Redis the windows are kept in the process: per replica.
A budget of 0 is no limit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

from google.protobuf.message import Message
from google.rpc import error_details_pb2
from limits import RateLimitItemPerDay, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from prometheus_client import Counter

from agentmesh.core.errors import ERROR_DOMAIN, ResourceExhausted

KEY_PREFIX: Final = "agentmesh:agent-budget"
REFUSALS: Final = Counter(
    "agentmesh_agent_budget_refusals_total", "Agent runs refused by a tenant budget.", ("budget",)
)


class BudgetExceededError(ResourceExhausted):
    """A tenant is over one of its agent budgets."""

    def __init__(self, budget: str, limit: int, unit: str, retry_after_s: float) -> None:
        REFUSALS.labels(budget).inc()
        self.violation = error_details_pb2.QuotaFailure.Violation(
            subject=f"tenant:{budget}",
            description=f"at most {limit} {unit}",
            api_service=ERROR_DOMAIN,
            quota_metric=f"{ERROR_DOMAIN}/agent_{budget}",
            quota_id=f"Agent{''.join(p.title() for p in budget.split('_'))}PerTenant",
            quota_value=limit,
        )
        super().__init__(
            f"this tenant is over its budget of {limit} {unit}; retry in {retry_after_s:.0f} s",
            retry_after_s,
            reason="TENANT_BUDGET_EXCEEDED",
        )

    def details(self) -> Sequence[Message]:
        return (*super().details(), error_details_pb2.QuotaFailure(violations=[self.violation]))


def budget_storage(redis_url: str | None) -> Storage:
    """Redis when configured (budgets shared by all replicas), else in-process."""
    if not redis_url:
        return MemoryStorage()
    uri = "async+" + redis_url if not redis_url.startswith("async+") else redis_url
    return RedisStorage(uri, implementation="redispy", key_prefix=KEY_PREFIX)


class TenantBudgets:
    """Runs per minute and tokens per day, per tenant."""

    def __init__(self, storage: Storage, *, runs_per_minute: int, tokens_per_day: int) -> None:
        self._limiter = FixedWindowRateLimiter(storage)
        self._runs = RateLimitItemPerMinute(runs_per_minute) if runs_per_minute else None
        self._tokens = RateLimitItemPerDay(tokens_per_day) if tokens_per_day else None

    async def admit_run(self, tenant: str) -> None:
        """Counts a run of ``tenant``; raises BudgetExceededError when over a budget."""
        if self._tokens is not None and not await self._limiter.test(self._tokens, tenant):
            raise BudgetExceededError(
                "tokens_per_day",
                self._tokens.amount,
                "LLM tokens per day",
                await self._reset_in(self._tokens, tenant),
            )
        if self._runs is not None and not await self._limiter.hit(self._runs, tenant):
            raise BudgetExceededError(
                "runs_per_minute",
                self._runs.amount,
                "agent runs per minute",
                await self._reset_in(self._runs, tenant),
            )

    async def spend_tokens(self, tenant: str, tokens: int) -> None:
        """Counts the tokens a run used (past the budget too: the next run is refused)."""
        if self._tokens is None or tokens <= 0:
            return
        # The window holds at most its amount; a run's tokens are spent in chunks the
        # window can take, so a large run still fills the day's budget.
        left = tokens
        while left > 0:
            chunk = min(left, self._tokens.amount)
            if not await self._limiter.hit(self._tokens, tenant, cost=chunk):
                stats = await self._limiter.get_window_stats(self._tokens, tenant)
                if stats.remaining <= 0:
                    return
                await self._limiter.hit(self._tokens, tenant, cost=stats.remaining)
                return
            left -= chunk

    async def _reset_in(
        self, item: RateLimitItemPerMinute | RateLimitItemPerDay, tenant: str
    ) -> float:
        stats = await self._limiter.get_window_stats(item, tenant)
        return max(1.0, stats.reset_time - time.time())
