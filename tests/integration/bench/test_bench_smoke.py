"""`make bench` at its small size, as CI's smoke test of the benchmark harness.

The recorded figures come from full-size runs on a quiet machine (docs/benchmarks.md);
this only proves the harness still runs end to end against the real stack and that
every part produced figures from real calls (no speed is asserted: the machine is
shared). It runs the Memory bench, which starts its own PostgreSQL, Redis, Memory
service, raw echo server and Envoy, and drives them with h2load and gRPC clients.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_the_small_memory_bench_runs_every_part_cleanly(tmp_path: Path) -> None:
    assert shutil.which("h2load"), "h2load is missing: `make test` installs nghttp2-client"
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentmesh.bench",
            "--only",
            "memory",
            "--small",
            "--no-write-docs",
            "--out-json",
            str(out),
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())["memory"]
    assert result["problems"] == []
    assert result["small"] is True

    # GetSession and AppendMessages beside the raw echo, in every scenario.
    summary = result["rpc"]["summary"]
    seen = {(row["op"], row["scenario"], row["in_flight"]) for row in summary}
    for op in ("get-session", "append-messages", "create-session"):
        for scenario in ("direct-grpc", "envoy-grpc", "envoy-json"):
            for in_flight in (1, 64):
                assert (op, scenario, in_flight) in seen
    for row in summary:
        for side in ("raw", "ours"):
            assert row[side]["rps"] > 0, row
            assert row[side]["errors"] == 0, row
        assert row["ratio_rps"] > 0

    # Ingest: every mode stored what it returned, beside the database floor.
    ingest = result["ingest"]
    assert {m["mode"] for m in ingest["modes"]} >= {"create-sequential", "batch-100"}
    for mode in ingest["modes"]:
        assert mode["memories"] > 0, mode
        assert mode["distinct_names"] == mode["memories"], mode
    assert [m["mode"] for m in ingest["database_floor"]["modes"]] == [
        "raw-create-16",
        "raw-insert-100",
        "raw-insert-500",
    ]
    assert all(m["memories_per_s"] > 0 for m in ingest["database_floor"]["modes"])

    # Search: recall against the exact scan, for every ef_search, service and database.
    per_ef = result["search"]["per_ef_search"]
    assert [p["ef_search"] for p in per_ef] == [40, 100, 200]
    for part in per_ef:
        assert 0.5 <= part["service"]["recall_at_10"] <= 1.0, part
        # The same statement through the service and on a plain connection.
        assert abs(part["service"]["recall_at_10"] - part["database"]["recall_at_10"]) <= 0.02
        assert part["service"]["sequential_ms"]["count"] > 0

    # Bulk import: every memory stored, found by search during the load, then indexed;
    # the floors measured beside it.
    bulk = result["bulk"]
    assert bulk["ours"]["rows_stored"] == bulk["ours"]["memories"] == 3000
    assert bulk["ours"]["search_found_during_load"] == "20/20"
    assert bulk["ours"]["memories_per_s"] > 0
    assert bulk["ours"]["indexed_per_s"] > 0
    assert bulk["floors"]["copy"]["memories_per_s"] > 0
    assert bulk["floors"]["index"]["memories"] == 3000
    assert bulk["ours_over_copy_floor"] > 0

    # MiniLM writes at 1 and 16 clients, batching across requests off and on.
    embed = result["embed"]["modes"]
    assert [(r["mode"], r["clients"]) for r in embed] == [
        ("unbatched", 1),
        ("unbatched", 16),
        ("batched", 1),
        ("batched", 16),
    ]
    for row in embed:
        assert row["writes"] > 0, row
        assert row["writes_per_s"] > 0, row


def test_the_small_agent_bench_measures_every_case(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentmesh.bench",
            "--only",
            "agent",
            "--small",
            "--no-write-docs",
            "--out-json",
            str(out),
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())["agent"]
    assert result["problems"] == []
    cases = result["cases"]
    assert set(cases) == {
        "raw_echo",
        "invoke_stateless",
        "invoke_threaded",
        "stream",
        "json_stateless",
        "json_threaded",
    }
    for name, row in cases.items():
        assert row["calls"] == 100, (name, row)
        assert row["c16_calls"] > 0, (name, row)
        assert 0 < row["p50_ms"] <= row["p99_ms"], (name, row)
    assert cases["stream"]["first_event_p50_ms"] > 0
    assert cases["invoke_threaded"]["agent_cpu_us_per_call"] > 0


def test_the_small_job_bench_runs_jobs_to_success(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentmesh.bench",
            "--only",
            "job",
            "--small",
            "--no-write-docs",
            "--out-json",
            str(out),
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())["job"]
    assert result["problems"] == []
    (round_,) = result["rounds"]
    assert round_["job_latency"]["client"]["count"] == 30
    assert round_["job_burst"]["jobs"] == 60
    assert round_["raw_burst"]["messages"] == 500
    median = result["median"]
    assert 0 < median["db_create_to_start_p50_ms"] <= median["db_create_to_end_p50_ms"]
    assert median["jobs_per_s"] > 0
    assert median["raw_msgs_per_s"] > 0


def test_the_small_conductor_bench_measures_turns_beside_the_raw_echo(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentmesh.bench",
            "--only",
            "conductor",
            "--small",
            "--no-write-docs",
            "--out-json",
            str(out),
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())["conductor"]
    assert result["problems"] == []
    cases = result["cases"]
    assert set(cases) == {"raw_echo", "converse_grpc", "converse_json"}
    for name, row in cases.items():
        assert row["calls"] == 50, (name, row)
        assert row["c16_calls"] > 0, (name, row)
        assert 0 < row["p50_ms"] <= row["p99_ms"], (name, row)
    for name in ("converse_grpc", "converse_json"):
        row = cases[name]
        # The first event (the routing decision) comes before the turn's end.
        assert 0 < row["first_event_p50_ms"] <= row["p50_ms"], (name, row)
        assert row["conductor_cpu_us_per_turn"] > 0, (name, row)
