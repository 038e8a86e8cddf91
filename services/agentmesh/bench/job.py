"""Bench `job`: jobs end to end through one real worker process, beside raw Dramatiq.

Started once: embedded PostgreSQL and Redis, the real `python -m agentmesh.memory`
(the echo agent's thread is checkpointed there), `python -m agentmesh.agent`,
`python -m agentmesh.job`, ONE `python -m agentmesh.job.worker` (one Dramatiq process,
``WORKER_THREADS`` threads) and, on the same Redis, the raw baseline: Dramatiq's CLI
with the same process and thread count running a no-op async actor on a plain
``RedisBroker`` (`agentmesh.bench.job_noop`). Each round measures, interleaved:

- **raw latency**: one message at a time, enqueue → acked (``broker.join`` polled
  every millisecond);
- **raw throughput**: a burst of no-op messages, enqueue of the first → last acked;
- **job latency**: one job at a time with the echo agent: from the start of the
  CreateJob call to the moment the client's WatchJob stream shows SUCCEEDED; the
  job's own ``end_time - create_time`` (written by the database) is kept beside it;
- **job throughput**: a burst of jobs created by ``CONCURRENCY`` callers, from the
  first CreateJob to the last job SUCCEEDED (counted in the database).

Every job must end SUCCEEDED with the echo's text, or the bench fails. The worker's
CPU per job (its process and the Dramatiq child) is read from /proc.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
import dramatiq
import grpc
from dramatiq.brokers.redis import RedisBroker

from agentmesh.agent.app import SERVICE_NAME as AGENT_SERVICE
from agentmesh.bench.job_noop import noop_message, raw_broker
from agentmesh.bench.memory.stack import Stack, children_cpu_s, start_stack
from agentmesh.bench.procs import BenchError, bench_env
from agentmesh.bench.suite import Bench, BenchOptions, JsonDict
from agentmesh.core.auth import mint_token
from agentmesh.devstack._proc import ChildProcess, wait_until
from agentmesh.devstack.migrate import migrate_up
from agentmesh.devstack.roles import create_login_roles, service_url
from agentmesh.devstack.stack import check_health
from agentmesh.job.app import SERVICE_NAME as JOB_SERVICE
from agentmesh.job.broker import DIAGNOSTICS_QUEUE, NAMESPACE, PROBE_KEY_PREFIX
from agentmesh.v1 import common_pb2, job_pb2, job_pb2_grpc

TENANT: Final = "bench-job"
WORKER_THREADS: Final = 8
"""Threads of both worker processes (the job worker's default)."""
CONCURRENCY: Final = 16
"""CreateJob callers of the job burst."""
TARGETS: Final = {"submit_to_done_p50_ms": 25.0, "jobs_per_s_vs_raw": 0.3}
TEXT: Final = "ping"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _spread(values: list[float]) -> JsonDict:
    return {
        "p50_ms": _percentile(values, 0.5) * 1000,
        "p99_ms": _percentile(values, 0.99) * 1000,
        "count": len(values),
    }


def _start(
    name: str, argv: list[str], env: Mapping[str, str], work: Path, ready: Any
) -> ChildProcess:
    child = ChildProcess(name, argv, log_path=work / f"{name}.log", env=bench_env(env))

    def up() -> bool:
        if child.returncode() is not None:
            raise BenchError(f"{name} exited with {child.returncode()}:\n{child.log_tail()}")
        return bool(ready(child))

    try:
        wait_until(up, timeout_s=60.0, interval_s=0.1, what=f"{name} ready")
    except TimeoutError as exc:
        child.stop(5.0)
        raise BenchError(f"{exc}\n{child.log_tail()}") from exc
    return child


def _serving(address: str, service: str) -> Any:
    return lambda _child: check_health(address, service, timeout_s=0.5) == "SERVING"


def _probed(redis_url: str) -> Any:
    """Ready once the worker's probe actor ran (it consumes from the broker)."""
    broker = RedisBroker(url=redis_url, namespace=NAMESPACE)
    token = uuid.uuid4().hex
    sent: list[bool] = []

    def ready(_child: ChildProcess) -> bool:
        if not sent:
            message: dramatiq.Message[None] = dramatiq.Message(
                queue_name=DIAGNOSTICS_QUEUE,
                actor_name="probe_worker",
                args=(token,),
                kwargs={},
                options={},
            )
            broker.enqueue(message)
            sent.append(True)
        if broker.client.get(PROBE_KEY_PREFIX + token) is None:
            return False
        broker.close()
        return True

    return ready


def _logged(text: str) -> Any:
    return lambda child: text in child.log_path.read_text(errors="replace")


class _Processes:
    """Agent, Job, the job worker and the raw worker, stopped by PID in ``close``."""

    def __init__(self, stack: Stack, opts: BenchOptions) -> None:
        self.stack = stack
        self.children: list[ChildProcess] = []
        self.agent_port = stack.ports.agent
        self.job_port = stack.ports.job
        self.work = stack.work
        self.opts = opts

    def common(self) -> dict[str, str]:
        return {
            "AGENTMESH_ENV": "dev",
            "AGENTMESH_METRICS_PORT": "0",
            "AGENTMESH_AUTH_HS256_SECRET": self.stack.secret,
            "AGENTMESH_REDIS_URL": self.stack.redis.url,
            "AGENTMESH_LOG_LEVEL": "warning",
            "AGENTMESH_DRAIN_GRACE_S": "1",
        }

    def start(self) -> tuple[ChildProcess, ChildProcess]:
        py = sys.executable
        agent_addr = f"127.0.0.1:{self.agent_port}"
        job_addr = f"127.0.0.1:{self.job_port}"
        agent_env = {
            **self.common(),
            "AGENTMESH_GRPC_HOST": "127.0.0.1",
            "AGENTMESH_GRPC_PORT": str(self.agent_port),
            "AGENTMESH_MEMORY_ADDR": self.stack.memory_address,
            # One tenant runs every job: its run budget would cap the measurement.
            "AGENTMESH_AGENT_TENANT_RUNS_PER_MINUTE": "0",
        }
        self.children.append(
            _start(
                "agent",
                [py, "-m", "agentmesh.agent"],
                agent_env,
                self.work,
                _serving(agent_addr, AGENT_SERVICE),
            )
        )
        job_db = service_url(self.stack.postgres, "job")
        job_env = {
            **self.common(),
            "AGENTMESH_GRPC_HOST": "127.0.0.1",
            "AGENTMESH_GRPC_PORT": str(self.job_port),
            "AGENTMESH_DATABASE_URL": job_db,
            "AGENTMESH_AGENT_ADDR": agent_addr,
            "AGENTMESH_JOB_TENANT_ACTIVE_JOBS": "0",
        }
        self.children.append(
            _start(
                "job",
                [py, "-m", "agentmesh.job"],
                job_env,
                self.work,
                _serving(job_addr, JOB_SERVICE),
            )
        )
        worker_env = {
            **self.common(),
            "AGENTMESH_DATABASE_URL": job_db,
            "AGENTMESH_AGENT_ADDR": agent_addr,
            "AGENTMESH_WORKER_THREADS": str(WORKER_THREADS),
        }
        worker = _start(
            "worker",
            [py, "-m", "agentmesh.job.worker"],
            worker_env,
            self.work,
            _probed(self.stack.redis.url),
        )
        self.children.append(worker)
        raw = _start(
            "raw-dramatiq",
            [
                py,
                "-m",
                "dramatiq",
                "agentmesh.bench.job_noop:boot",
                "--processes",
                "1",
                "--threads",
                str(WORKER_THREADS),
            ],
            {"AGENTMESH_REDIS_URL": self.stack.redis.url},
            self.work,
            _logged("Worker process is ready"),
        )
        self.children.append(raw)
        return worker, raw

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop(10.0)
        self.children.clear()


class _Measure:
    def __init__(self, opts: BenchOptions, job_port: int, token: str, stack: Stack) -> None:
        self.opts = opts
        self.md = (("authorization", f"Bearer {token}"),)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{job_port}")
        self.stub: Any = job_pb2_grpc.JobServiceStub(self.channel)
        self.broker = raw_broker(stack.redis.url)
        self.database_url = stack.postgres.database_url
        self.pool: asyncpg.Pool | None = None

    def request(self) -> job_pb2.CreateJobRequest:
        return job_pb2.CreateJobRequest(
            job=job_pb2.Job(agent="agents/echo", parts=[common_pb2.Part(text=TEXT)])
        )

    async def one_job(self) -> tuple[float, float, float]:
        """Submit-to-SUCCEEDED seen by a watching client, the job's
        ``end_time - create_time`` and its ``start_time - create_time`` (the wait for a
        worker's claim), in seconds."""
        t0 = time.perf_counter()
        job = await self.stub.CreateJob(self.request(), metadata=self.md, timeout=10)
        last = None
        async with asyncio.timeout(30):
            async for event in self.stub.WatchJob(
                job_pb2.WatchJobRequest(name=job.name), metadata=self.md
            ):
                last = event.job
        elapsed = time.perf_counter() - t0
        if last is None or last.state != job_pb2.JOB_STATE_SUCCEEDED:
            raise BenchError(f"{job.name} ended {last}")
        if last.result["text"] != TEXT:
            raise BenchError(f"{job.name} answered {last.result}")
        created = last.create_time.ToNanoseconds()
        server = last.end_time.ToNanoseconds() - created
        claimed = last.start_time.ToNanoseconds() - created
        return elapsed, server / 1e9, claimed / 1e9

    async def job_latency(self, count: int) -> JsonDict:
        client, server, claim = [], [], []
        for _ in range(count):
            c, s, w = await self.one_job()
            client.append(c)
            server.append(s)
            claim.append(w)
        return {"client": _spread(client), "server": _spread(server), "claim": _spread(claim)}

    async def succeeded(self, since: float) -> tuple[int, int]:
        assert self.pool is not None
        row = await self.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE state = $2) AS ok,"
            " count(*) FILTER (WHERE state IN ($3, $4)) AS bad"
            " FROM job.jobs WHERE tenant = $1 AND create_time >= to_timestamp($5)",
            TENANT,
            job_pb2.JOB_STATE_SUCCEEDED,
            job_pb2.JOB_STATE_FAILED,
            job_pb2.JOB_STATE_CANCELLED,
            since,
        )
        return int(row["ok"]), int(row["bad"])

    async def job_burst(self, count: int, bound_s: float) -> JsonDict:
        """``count`` jobs created by CONCURRENCY callers; until the last SUCCEEDED."""
        since = time.time() - 1  # the database's clock is this machine's
        before, _ = await self.succeeded(since)
        created = 0
        deadline = time.monotonic() + bound_s

        async def caller() -> None:
            nonlocal created
            while created < count and time.monotonic() < deadline:
                created += 1
                await self.stub.CreateJob(self.request(), metadata=self.md, timeout=10)

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
        submitted = time.perf_counter() - t0
        while True:
            ok, bad = await self.succeeded(since)
            if bad:
                raise BenchError(f"{bad} burst job(s) failed or were cancelled")
            if ok - before >= created:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"only {ok - before} of {created} burst jobs succeeded in time")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - t0
        return {"jobs_per_s": created / elapsed, "jobs": created, "submit_s": submitted}

    def raw_latency(self, count: int) -> JsonDict:
        latencies = []
        for _ in range(count):
            t0 = time.perf_counter()
            self.broker.enqueue(noop_message())
            self.broker.join(noop_message().queue_name, interval=1, timeout=10_000)
            latencies.append(time.perf_counter() - t0)
        return _spread(latencies)

    def raw_burst(self, count: int, bound_s: float) -> JsonDict:
        t0 = time.perf_counter()
        for _ in range(count):
            self.broker.enqueue(noop_message())
        self.broker.join(noop_message().queue_name, interval=2, timeout=int(bound_s * 1000))
        elapsed = time.perf_counter() - t0
        return {"msgs_per_s": count / elapsed, "messages": count}


async def _measure(
    opts: BenchOptions, job_port: int, token: str, stack: Stack, worker_pid: int
) -> JsonDict:
    m = _Measure(opts, job_port, token, stack)  # its channel belongs to this loop
    latency_n = 30 if opts.small else 300
    burst_n = 60 if opts.small else 1000
    raw_burst_n = 500 if opts.small else 10_000
    bound_s = 20.0 if opts.small else 120.0
    m.pool = await asyncpg.create_pool(m.database_url, min_size=1, max_size=2)
    rounds: list[JsonDict] = []
    try:
        await m.job_latency(5)  # warm-up: connections, first-use imports, the agent card
        await asyncio.to_thread(m.raw_latency, 5)
        for _ in range(1 if opts.small else max(1, opts.rounds)):
            row: JsonDict = {}
            row["raw_latency"] = await asyncio.to_thread(m.raw_latency, latency_n)
            cpu0 = children_cpu_s(worker_pid)
            row["job_latency"] = await m.job_latency(latency_n)
            cpu1 = children_cpu_s(worker_pid)
            row["worker_cpu_us_per_job"] = (cpu1 - cpu0) / latency_n * 1e6
            row["raw_burst"] = await asyncio.to_thread(m.raw_burst, raw_burst_n, bound_s)
            row["job_burst"] = await m.job_burst(burst_n, bound_s)
            opts.log(
                "job round: submit→SUCCEEDED p50"
                f" {row['job_latency']['client']['p50_ms']:.1f} ms"
                f" (db {row['job_latency']['server']['p50_ms']:.1f} ms,"
                f" claimed after {row['job_latency']['claim']['p50_ms']:.1f} ms),"
                f" raw p50 {row['raw_latency']['p50_ms']:.1f} ms;"
                f" {row['job_burst']['jobs_per_s']:.0f} jobs/s vs raw"
                f" {row['raw_burst']['msgs_per_s']:.0f} msg/s"
            )
            rounds.append(row)
    finally:
        await m.pool.close()
        await m.channel.close(None)
        m.broker.close()
    return {"rounds": rounds, "median": _median(rounds)}


def _median(rounds: list[JsonDict]) -> JsonDict:
    def med(*path: str) -> float:
        values = []
        for row in rounds:
            value: Any = row
            for key in path:
                value = value[key]
            values.append(float(value))
        return statistics.median(values)

    jobs = med("job_burst", "jobs_per_s")
    raw = med("raw_burst", "msgs_per_s")
    return {
        "submit_to_done_p50_ms": med("job_latency", "client", "p50_ms"),
        "submit_to_done_p99_ms": med("job_latency", "client", "p99_ms"),
        "db_create_to_end_p50_ms": med("job_latency", "server", "p50_ms"),
        "db_create_to_end_p99_ms": med("job_latency", "server", "p99_ms"),
        "db_create_to_start_p50_ms": med("job_latency", "claim", "p50_ms"),
        "db_create_to_start_p99_ms": med("job_latency", "claim", "p99_ms"),
        "raw_enqueue_to_ack_p50_ms": med("raw_latency", "p50_ms"),
        "raw_enqueue_to_ack_p99_ms": med("raw_latency", "p99_ms"),
        "jobs_per_s": jobs,
        "raw_msgs_per_s": raw,
        "jobs_per_s_vs_raw": statistics.median(
            r["job_burst"]["jobs_per_s"] / r["raw_burst"]["msgs_per_s"] for r in rounds
        ),
        "worker_cpu_us_per_job": med("worker_cpu_us_per_job"),
    }


def run(opts: BenchOptions) -> JsonDict:
    stack = start_stack(opts)
    token = mint_token(stack.secret, TENANT, subject="bench", ttl_s=3600)
    result: JsonDict = {"bench": "job"}
    problems: list[str] = []
    procs = _Processes(stack, opts)
    try:
        opts.log("job: starting PostgreSQL, Redis, memory, agent, job, worker, raw worker")
        stack.postgres.start()
        migrate_up(stack.postgres.database_url)
        create_login_roles(stack.postgres)
        stack.redis.start()
        stack.start_memory(stack.ef_search)
        worker, _ = procs.start()
        measured = asyncio.run(_measure(opts, procs.job_port, token, stack, worker.pid))
        result.update(measured)
        result["targets"] = dict(TARGETS)
    except Exception as exc:
        problems.append(f"aborted: {type(exc).__name__}: {exc}")
        opts.log(f"job: ABORTED: {exc} (logs in {opts.work_dir})")
    finally:
        procs.close()
        stack.close()
    result["problems"] = problems
    result["method"] = {
        "worker_threads": WORKER_THREADS,
        "burst_callers": CONCURRENCY,
        "rounds": 1 if opts.small else opts.rounds,
    }
    return result


def _verdict(ok: bool) -> str:
    return "meets" if ok else "**misses**"


def render(results: JsonDict) -> str:
    med = results.get("median")
    if not med:
        return "No results: " + "; ".join(results.get("problems", ["not run"]))
    machine = results.get("machine", {})
    load = machine.get("load_average_at_start", [])
    p50 = med["submit_to_done_p50_ms"]
    ratio = med["jobs_per_s_vs_raw"]
    lines = [
        "## Job: jobs end to end through one worker process, vs raw Dramatiq",
        "",
        f"Run {machine.get('date', '?')} with `{results.get('command', '?')}`"
        + (" (**--small: a smoke test, not a measurement**)" if results.get("small") else "")
        + f" on {machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model', '?')}),"
        f" Python {machine.get('python', '?')}; load average at start "
        + (f"{load[0]:.1f}" if load else "?")
        + ".",
        "",
        "Echo-agent jobs on the real Job, Agent and Memory services and ONE"
        f" `python -m agentmesh.job.worker` ({WORKER_THREADS} threads), beside a no-op async"
        " actor on a plain Dramatiq `RedisBroker` (same Redis, one process, same threads),"
        " interleaved in the same run; medians of the rounds. Submit→SUCCEEDED: from the"
        " start of CreateJob to the client's WatchJob showing SUCCEEDED, one job at a time;"
        " the database's `end_time - create_time` of the same jobs beside it. Throughput:"
        f" a burst of jobs created by {CONCURRENCY} callers until the last SUCCEEDED, vs a"
        " burst of no-op messages until the last acked.",
        "",
        "| what | ours | raw Dramatiq |",
        "| --- | ---: | ---: |",
        f"| one at a time, p50 ms (client: submit→SUCCEEDED; raw: enqueue→acked)"
        f" | {p50:.1f} | {med['raw_enqueue_to_ack_p50_ms']:.1f} |",
        f"| one at a time, p99 ms | {med['submit_to_done_p99_ms']:.1f}"
        f" | {med['raw_enqueue_to_ack_p99_ms']:.1f} |",
        f"| server side, `end_time - create_time` p50 / p99 ms"
        f" | {med['db_create_to_end_p50_ms']:.1f} / {med['db_create_to_end_p99_ms']:.1f} | - |",
        f"| server side, `start_time - create_time` (until a worker's claim) p50 / p99 ms"
        f" | {med['db_create_to_start_p50_ms']:.1f} / {med['db_create_to_start_p99_ms']:.1f}"
        " | - |",
        f"| burst throughput, per s | {med['jobs_per_s']:,.0f} jobs"
        f" | {med['raw_msgs_per_s']:,.0f} msgs |",
        f"| worker CPU per job, µs | {med['worker_cpu_us_per_job']:,.0f} | - |",
        "",
        "Targets: "
        f"submit→SUCCEEDED p50 ≤ {TARGETS['submit_to_done_p50_ms']:g} ms:"
        f" {_verdict(p50 <= TARGETS['submit_to_done_p50_ms'])} ({p50:.1f} ms);"
        f" jobs/s ≥ {TARGETS['jobs_per_s_vs_raw']:g}× raw Dramatiq:"
        f" {_verdict(ratio >= TARGETS['jobs_per_s_vs_raw'])} ({ratio:.2f}×).",
    ]
    if results.get("problems"):
        lines += ["", "Problems: " + "; ".join(results["problems"])]
    return "\n".join(lines)


BENCH: Final = Bench(
    name="job",
    title="Job: echo jobs end to end through one worker vs raw Dramatiq",
    run=run,
    render=render,
)
