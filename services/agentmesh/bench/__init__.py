"""Benchmarks: `make bench` / `python -m agentmesh.bench [--small] [--only NAME,...]`.

Each bench is a module exposing ``BENCH`` (see :mod:`agentmesh.bench.suite`), listed in
``agentmesh.bench.harness.BENCHES``. Results go to ``docs/benchmarks/agentmesh-<name>.json``
and to the bench's marked section of ``docs/benchmarks.md``.
"""
