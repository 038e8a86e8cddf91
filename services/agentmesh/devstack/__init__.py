"""Development and test stack: one launcher for `make dev` and the pytest fixtures.

`stack.DevStack` starts PostgreSQL (embedded, pgvector), applies the migrations, starts
Redis, the four services, the Dramatiq worker and Envoy, and waits until every service
reports SERVING directly and through Envoy. Tests use the same class with free ports and
a temp directory, so what a developer runs is what the suite runs.

Modules (imported explicitly, so `python -m agentmesh.devstack.<module>` runs cleanly):
`stack` (DevStack, StackPorts), `postgres` (EmbeddedPostgres), `redis` (RedisServer),
`migrate` (dbmate), `envoy_config` (render the Envoy template), `envoy_process` (EnvoyProxy),
`env` (child_env: every child process's environment, for the bench and tests too).
"""
