"""The Memory service's RPC groups, one module per domain: adapters that validate a
request (``core.validation``), call a store or a use case, and convert rows to protos.
No SQL here; nothing outside ``servicer.py`` imports these modules."""
