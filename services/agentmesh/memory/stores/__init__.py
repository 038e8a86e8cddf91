"""The Memory service's storage, one module per domain: every function takes the
tenant first (after the connection) and returns rows or small dataclasses; list
queries build their conditions with ``core.sql.Where``. No gRPC types in signatures
beyond what a store persists as bytes."""
