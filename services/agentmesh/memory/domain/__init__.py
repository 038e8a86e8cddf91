"""The Memory service's domain rules: plain functions and classes, no gRPC and no SQL,
each with unit tests of its own (etag conflicts, soft delete and purge, the message
sequence, near-duplicate merge planning)."""
