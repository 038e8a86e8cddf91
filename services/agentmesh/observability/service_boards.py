"""The dashboards of single services: Memory, Agent runs, Jobs (docs/adr/0032)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from agentmesh.observability.panels import (
    EMBED,
    MEMORY_SEARCHES,
    MEMORY_SERVICE,
    MEMORY_WRITES,
    OK,
    Query,
    new_dashboard,
    quantile,
    rate,
    series,
)


def memory() -> dashboard.Dashboard:
    """Memory: writes, searches, embedding, the indexer and the janitor."""
    handled = "grpc_server_handled_total"
    seconds = "grpc_server_handling_seconds"
    return (
        new_dashboard(
            "agentmesh-memory",
            "agentmesh / Memory",
            "The Memory service: writes and searches (its RPC metrics), the embedder"
            " (EmbedTexts), the indexer of imported memories and the janitor.",
        )
        .with_row(dashboard.Row("Writes and searches"))
        .with_panel(
            series(
                "Writes by method",
                "Successful writes per second.",
                "reqps",
                Query(
                    f"sum by (grpc_method) "
                    f"({rate(handled, f'{MEMORY_SERVICE}, {MEMORY_WRITES}, {OK}')})",
                    "{{grpc_method}}",
                ),
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Write latency p99",
                "99th percentile per write method.",
                "s",
                Query(
                    quantile(0.99, seconds, "grpc_method", f"{MEMORY_SERVICE}, {MEMORY_WRITES}"),
                    "{{grpc_method}}",
                ),
            )
        )
        .with_panel(
            series(
                "Searches",
                "Semantic searches per second, by final status.",
                "reqps",
                Query(
                    f"sum by (grpc_method, grpc_code) "
                    f"({rate(handled, f'{MEMORY_SERVICE}, {MEMORY_SEARCHES}')})",
                    "{{grpc_method}} {{grpc_code}}",
                ),
            )
        )
        .with_panel(
            series(
                "Search latency p50 / p99",
                "Embedding the query plus the pgvector search.",
                "s",
                Query(
                    quantile(0.5, seconds, "grpc_method", f"{MEMORY_SERVICE}, {MEMORY_SEARCHES}"),
                    "p50 {{grpc_method}}",
                ),
                Query(
                    quantile(0.99, seconds, "grpc_method", f"{MEMORY_SERVICE}, {MEMORY_SEARCHES}"),
                    "p99 {{grpc_method}}",
                ),
            )
        )
        .with_row(dashboard.Row("Embedder"))
        .with_panel(
            series(
                "EmbedTexts rate",
                "Embedding calls per second, by final status (the"
                " embedder has no metric of its own: its callers' RPCs time it).",
                "reqps",
                Query(
                    f"sum by (grpc_code) ({rate(handled, EMBED)})",
                    "{{grpc_code}}",
                ),
            )
        )
        .with_panel(
            series(
                "EmbedTexts latency p50 / p99",
                "Time to embed one batch of texts.",
                "s",
                Query(
                    quantile(0.5, seconds, "grpc_method", EMBED),
                    "p50",
                ),
                Query(
                    quantile(0.99, seconds, "grpc_method", EMBED),
                    "p99",
                ),
            )
        )
        .with_row(dashboard.Row("Indexer and janitor"))
        .with_panel(
            series(
                "Indexer lag",
                "Age of the oldest imported memory not in the HNSW index"
                " yet (0: none wait); alert above 10 minutes.",
                "s",
                Query("max(agentmesh_memory_indexer_lag_seconds)", "lag"),
            )
        )
        .with_panel(
            series(
                "Indexed memories and batches",
                "Imported memories added to the index,"
                " and indexing statements by outcome, per second.",
                "ops",
                Query(
                    "sum(rate(agentmesh_memory_indexed_total[$__rate_interval]))",
                    "memories indexed",
                ),
                Query(
                    "sum by (outcome) (rate(agentmesh_memory_indexer_batches_total"
                    "[$__rate_interval]))",
                    "batches {{outcome}}",
                ),
            )
        )
        .with_panel(
            series(
                "Janitor passes",
                "Passes per hour by outcome (skipped: another replica held the lock).",
                "short",
                Query(
                    "sum by (outcome) (increase(agentmesh_memory_janitor_passes_total[1h]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            series(
                "Rows purged",
                "Rows the janitor purged per hour, by kind.",
                "short",
                Query(
                    "sum by (kind) (increase(agentmesh_memory_janitor_purged_total[1h]))",
                    "{{kind}}",
                ),
                stacked=True,
            )
        )
    )


def agent_runs() -> dashboard.Dashboard:
    """Agent runs: outcomes, durations, LLM tokens, the response cache and budgets."""
    return (
        new_dashboard(
            "agentmesh-agents",
            "agentmesh / Agent runs",
            "Runs of the Agent service by agent and outcome, their duration, the LLM tokens"
            " they used, the LLM response cache and tenant budget refusals.",
        )
        .with_row(dashboard.Row("Runs"))
        .with_panel(
            series(
                "Runs by agent and outcome",
                "Runs finished per second.",
                "ops",
                Query(
                    "sum by (agent, outcome) (rate(agentmesh_agent_runs_total[$__rate_interval]))",
                    "{{agent}} {{outcome}}",
                ),
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Run duration p50 / p99",
                "By agent.",
                "s",
                Query(
                    quantile(0.5, "agentmesh_agent_run_duration_seconds", "agent"), "p50 {{agent}}"
                ),
                Query(
                    quantile(0.99, "agentmesh_agent_run_duration_seconds", "agent"),
                    "p99 {{agent}}",
                ),
            )
        )
        .with_panel(
            series(
                "Budget refusals",
                "Runs refused by a tenant budget, per second.",
                "ops",
                Query(
                    "sum by (budget) (rate(agentmesh_agent_budget_refusals_total"
                    "[$__rate_interval]))",
                    "{{budget}}",
                ),
            )
        )
        .with_panel(
            series(
                "Decisions not recorded",
                "Run decisions that could not be written to"
                " Memory, per hour (alerts when above 0).",
                "short",
                Query("sum(increase(agentmesh_agent_decisions_not_recorded_total[1h]))", "lost"),
            )
        )
        .with_row(dashboard.Row("LLM"))
        .with_panel(
            series(
                "Tokens by model and direction",
                "LLM tokens per second.",
                "short",
                Query(
                    "sum by (model, direction) (rate(agentmesh_llm_tokens_total"
                    "[$__rate_interval]))",
                    "{{model}} {{direction}}",
                ),
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Tokens by tenant",
                "LLM tokens per hour, top 10 tenants.",
                "short",
                Query(
                    "topk(10, sum by (tenant) (increase(agentmesh_llm_tokens_total[1h])))",
                    "{{tenant}}",
                ),
            )
        )
        .with_panel(
            series(
                "Response cache lookups",
                "LLM response cache lookups per second, by result.",
                "ops",
                Query(
                    "sum by (result) (rate(agentmesh_llm_cache_lookups_total[$__rate_interval]))",
                    "{{result}}",
                ),
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Response cache hit ratio",
                "Hits over all lookups.",
                "percentunit",
                Query(
                    'sum(rate(agentmesh_llm_cache_lookups_total{result="hit"}'
                    "[$__rate_interval])) / sum(rate(agentmesh_llm_cache_lookups_total"
                    "[$__rate_interval]))",
                    "hit ratio",
                ),
            )
        )
    )


def jobs() -> dashboard.Dashboard:
    """Jobs: created and finished by state, queue depth, attempts, leases, the worker."""
    return (
        new_dashboard(
            "agentmesh-jobs",
            "agentmesh / Jobs",
            "Jobs created and finished, the Dramatiq queues, attempts and their outcomes,"
            " lease expiries (lost workers), retries and the worker's messages.",
        )
        .with_row(dashboard.Row("Flow"))
        .with_panel(
            series(
                "Created by priority",
                "Jobs created per second.",
                "ops",
                Query(
                    "sum by (priority) (rate(agentmesh_job_created_total[$__rate_interval]))",
                    "{{priority}}",
                ),
                width=8,
            )
        )
        .with_panel(
            series(
                "Finished by state",
                "Jobs reaching a terminal state per second.",
                "ops",
                Query(
                    "sum by (state) (rate(agentmesh_job_finished_total[$__rate_interval]))",
                    "{{state}}",
                ),
                width=8,
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Queue depth by priority",
                "Messages waiting in each Dramatiq queue"
                " (every Job replica reads the same queue: max, not sum).",
                "short",
                Query("max by (priority) (agentmesh_job_queue_depth)", "{{priority}}"),
                width=8,
            )
        )
        .with_panel(
            series(
                "Job duration p50 / p99",
                "Creation to terminal state, by state.",
                "s",
                Query(quantile(0.5, "agentmesh_job_duration_seconds", "state"), "p50 {{state}}"),
                Query(quantile(0.99, "agentmesh_job_duration_seconds", "state"), "p99 {{state}}"),
            )
        )
        .with_panel(
            series(
                "Attempts by outcome",
                "Attempts run by workers per second.",
                "ops",
                Query(
                    "sum by (outcome) (rate(agentmesh_job_attempts_total[$__rate_interval]))",
                    "{{outcome}}",
                ),
                stacked=True,
            )
        )
        .with_row(dashboard.Row("Failures and recovery"))
        .with_panel(
            series(
                "Lease expiries",
                "Running jobs whose worker stopped renewing its lease,"
                " per hour, by where they went.",
                "short",
                Query(
                    "sum by (outcome) (increase(agentmesh_job_lease_expiries_total[1h]))",
                    "{{outcome}}",
                ),
                width=8,
            )
        )
        .with_panel(
            series(
                "Retries by cause",
                "New attempts per second.",
                "ops",
                Query(
                    "sum by (cause) (rate(agentmesh_job_retries_total[$__rate_interval]))",
                    "{{cause}}",
                ),
                width=8,
            )
        )
        .with_panel(
            series(
                "Sweeper dispatches",
                "Messages the sweeper sent (delayed starts,"
                " retries after backoff, lost messages) per second.",
                "ops",
                Query(
                    "sum(rate(agentmesh_job_sweeper_dispatched_total[$__rate_interval]))",
                    "dispatched",
                ),
                width=8,
            )
        )
        .with_row(dashboard.Row("Worker"))
        .with_panel(
            series(
                "Worker messages by actor and outcome",
                "Dramatiq messages processed per second.",
                "ops",
                Query(
                    "sum by (actor, outcome) (rate(agentmesh_worker_messages_total"
                    "[$__rate_interval]))",
                    "{{actor}} {{outcome}}",
                ),
            )
        )
        .with_panel(
            series(
                "Attempt duration p50 / p99",
                "A worker's claim of an attempt to its end, by outcome.",
                "s",
                Query(quantile(0.5, "agentmesh_job_attempt_seconds", "outcome"), "p50 {{outcome}}"),
                Query(
                    quantile(0.99, "agentmesh_job_attempt_seconds", "outcome"), "p99 {{outcome}}"
                ),
            )
        )
    )
