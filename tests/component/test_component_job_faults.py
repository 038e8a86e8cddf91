"""Faults of the Job service's backends and workers, with real processes: Redis (the
broker, without persistence) restarted while jobs are queued and running loses none;
PostgreSQL restarted mid-run still ends the run once; and jobs run through two worker
processes that are SIGKILLed at random moments all end, none completed twice.

These tests have their own PostgreSQL and Redis (the session's are shared by every
component test and must never restart). The Memory service the Agent process writes
its checkpoints and decisions to stays on the session's backends.

Figures measured on the 2-core machine (other tests running beside): the 503 jobs of
the random-SIGKILL test (four kills, two workers of 8 threads) are created in 13-17 s
and all end 18-36 s later; 15-24 of them are retried after a kill, none ran out of
attempts; the whole module runs in 2-2.5 minutes. Before agent runs were idempotent on
their thread, 3-10 of the retried jobs ran their agent turn twice (a worker killed
between the agent's end of the run and its own end of the attempt); now none does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg  # type: ignore[import-untyped]
import pytest
from prometheus_client import REGISTRY

from agentmesh.core.server import RunningServer
from agentmesh.devstack._proc import ChildProcess, pid_alive, wait_until
from agentmesh.devstack.migrate import migrate_up
from agentmesh.devstack.postgres import EmbeddedPostgres
from agentmesh.devstack.redis import RedisServer
from agentmesh.devstack.roles import create_login_roles, service_url
from agentmesh.v1 import common_pb2, job_pb2
from component.agent_helpers import agent_process
from component.conftest import Backends, Metadata, credentials
from component.job_helpers import JobServer, kill_group, serve_job, worker_process
from component.memory_helpers import eventually, free_port, uid

CHAOS_JOBS: Final = 500
"""Jobs the random-SIGKILL test runs through two workers."""
CHAOS_KILLS: Final = 4
"""SIGKILLs of a worker in that test (each followed by a restart)."""
SLOW_JOBS: Final = 3
"""Jobs of ``agents/slow-test`` among them (they wait for a file: runs to kill mid-graph)."""
SUCCEEDED: Final = int(job_pb2.JOB_STATE_SUCCEEDED)
TERMINAL: Final = (SUCCEEDED, int(job_pb2.JOB_STATE_FAILED), int(job_pb2.JOB_STATE_CANCELLED))


@dataclass
class Own:
    """This module's PostgreSQL and Redis, restartable by the tests."""

    postgres: EmbeddedPostgres
    redis: RedisServer
    backends: Backends


@pytest.fixture(scope="module")
def own() -> Iterator[Own]:
    root = Path(tempfile.mkdtemp(prefix="agentmesh-job-faults-"))
    postgres = EmbeddedPostgres(root / "postgres")
    cache = RedisServer(root / "redis", free_port(), appendonly=False)
    try:
        postgres.start()
        migrate_up(postgres.database_url)
        create_login_roles(postgres)
        cache.start()
        yield Own(
            postgres,
            cache,
            Backends(
                database_url=postgres.database_url,
                memory_url=service_url(postgres, "memory"),
                job_url=service_url(postgres, "job"),
                redis_url=cache.url,
            ),
        )
    finally:
        cache.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Mesh:
    jobs: JobServer
    agent: ChildProcess
    agent_port: int
    work: Path
    counter: Path
    release: Path


@contextlib.asynccontextmanager
async def mesh(
    own: Own, memory_port: int, work: Path, lease_s: float, **job_environ: str
) -> AsyncIterator[Mesh]:
    """An Agent process (the built-in agents and ``agents/slow-test``, its budgets in
    this module's Redis) and a Job service on this module's backends."""
    counter, release = work / "counter", work / "release"
    counter.write_text("")
    port = free_port()
    async with (
        agent_process(
            memory_port,
            work,
            f"agent-{uid(6)}",
            port=port,
            AGENTMESH_REDIS_URL=own.backends.redis_url,
            AGENTMESH_AGENT_GRAPHS="agentmesh_test_agents:slow_agent",
            AGENTMESH_TEST_COUNTER_FILE=str(counter),
            AGENTMESH_TEST_RELEASE_FILE=str(release),
        ) as (agent, _),
        serve_job(
            own.backends,
            port,
            AGENTMESH_JOB_LEASE_S=str(lease_s),
            AGENTMESH_JOB_SWEEP_INTERVAL_S="0.2",
            AGENTMESH_JOB_WATCH_POLL_S="0.5",
            AGENTMESH_JOB_REDISPATCH_AFTER_S="2",
            AGENTMESH_JOB_TENANT_ACTIVE_JOBS="0",
            **job_environ,
        ) as jobs,
    ):
        yield Mesh(jobs, agent, port, work, counter, release)


def _job(agent: str, text: str, *, max_attempts: int = 5) -> job_pb2.CreateJobRequest:
    return job_pb2.CreateJobRequest(
        job=job_pb2.Job(
            agent=agent,
            parts=[common_pb2.Part(text=text)],
            retry_policy=job_pb2.RetryPolicy(max_attempts=max_attempts),
        )
    )


def _id(name: str) -> str:
    return name.removeprefix("jobs/")


async def _create(
    stub: JobServer, tenant: Metadata, requests: list[job_pb2.CreateJobRequest]
) -> list[str]:
    """Creates the jobs (twenty at a time); their names, in order."""
    names: list[str] = []
    for start in range(0, len(requests), 20):
        batch = requests[start : start + 20]
        created = await asyncio.gather(*(stub.stub.CreateJob(r, metadata=tenant) for r in batch))
        names += [job.name for job in created]
    return names


async def _rows(url: str, tenant: str) -> dict[str, asyncpg.Record]:
    """The tenant's jobs as stored, by id, with how many SUCCEEDED changes each logged."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT j.id, j.state, j.attempt, j.attempt_limit, j.result, j.error,"
            " (SELECT count(*) FROM job.events e WHERE e.tenant = j.tenant AND e.job_id = j.id"
            "  AND (e.snapshot->>'state')::int = $2) AS succeeded_changes"
            " FROM job.jobs j WHERE j.tenant = $1",
            tenant,
            SUCCEEDED,
        )
    finally:
        await conn.close()
    return {row["id"]: row for row in rows}


async def _all_terminal(
    url: str, tenant: str, count: int, timeout_s: float
) -> dict[str, asyncpg.Record]:
    """The tenant's ``count`` jobs once every one ended (polled; bounded)."""
    found: dict[str, asyncpg.Record] = {}

    async def ended() -> bool:
        try:
            found.update(await _rows(url, tenant))
        except (OSError, asyncpg.PostgresError):
            return False  # PostgreSQL restarting
        return len(found) == count and all(r["state"] in TERMINAL for r in found.values())

    await eventually(ended, f"{count} jobs of {tenant} ended", timeout_s=timeout_s)
    return found


def _alive(*children: ChildProcess) -> None:
    for child in children:
        assert child.returncode() is None, f"{child.name} exited:\n{child.log_tail()}"


def _sweeper_dispatched() -> float:
    """Messages the sweeper of this process's Job service sent so far."""
    return REGISTRY.get_sample_value("agentmesh_job_sweeper_dispatched_total") or 0.0


def _kill_redis(cache: RedisServer) -> None:
    """SIGKILL Redis by its PID (it loses everything: no persistence here)."""
    pid = cache.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    cache.stop()  # reaps it and waits for its port


async def test_restarting_redis_loses_no_job(
    own: Own, memory_server: RunningServer, tmp_path: Path
) -> None:
    tenant_id = f"faults-{uid()}"
    tenant = credentials(tenant_id)
    async with (
        mesh(own, memory_server.port, tmp_path, lease_s=3.0) as m,
        worker_process(
            own.backends, m.agent_port, tmp_path, f"w-{uid(6)}", AGENTMESH_JOB_LEASE_S="3"
        ) as worker,
    ):
        # Four slow jobs take the worker's four threads; the echo jobs queue behind.
        slow = await _create(m.jobs, tenant, [_job("agents/slow-test", "go")] * 4)
        queued = await _create(
            m.jobs, tenant, [_job("agents/echo", f"queued {i}") for i in range(16)]
        )

        async def slow_running() -> bool:
            return m.counter.read_text().splitlines().count("first") == 4

        await eventually(slow_running, "four slow jobs running", timeout_s=60)
        swept = _sweeper_dispatched()
        _kill_redis(own.redis)
        # While Redis is down: jobs are still accepted (their message is sent later),
        # and the slow runs end (their ends are written to PostgreSQL).
        during = await _create(
            m.jobs, tenant, [_job("agents/echo", f"during {i}") for i in range(4)]
        )
        m.release.touch()
        await asyncio.sleep(1.0)
        own.redis.start()  # same port, empty
        rows = await _all_terminal(
            own.backends.database_url, tenant_id, len(slow + queued + during), timeout_s=90
        )
        _alive(worker, m.agent)
    # The messages of the jobs created while Redis was down could only be sent by the
    # sweeper, from the rows in PostgreSQL.
    assert _sweeper_dispatched() >= swept + len(during)
    assert {r["state"] for r in rows.values()} == {SUCCEEDED}, [
        (i, r["state"], r["error"]) for i, r in rows.items() if r["state"] != SUCCEEDED
    ]
    assert all(r["succeeded_changes"] == 1 for r in rows.values())
    texts = {json.loads(rows[_id(n)]["result"])["text"] for n in queued + during}
    assert texts == {f"queued {i}" for i in range(16)} | {f"during {i}" for i in range(4)}
    assert all(json.loads(rows[_id(n)]["result"]) == {"done": True} for n in slow)
    # Each slow run's steps ran once: no run was repeated after the restart.
    assert sorted(m.counter.read_text().splitlines()) == ["first"] * 4 + ["second"] * 4


def _crash_postgres(postgres: EmbeddedPostgres) -> None:
    """SIGQUIT the postmaster by its PID (immediate shutdown: every connection drops,
    crash recovery at the next start), waiting until it is gone."""
    pid = postgres.pid
    assert pid is not None
    os.kill(pid, signal.SIGQUIT)
    wait_until(lambda: not pid_alive(pid), timeout_s=30.0, what="postmaster exit")


async def test_restarting_postgres_mid_run_ends_the_job_once(
    own: Own, memory_server: RunningServer, tmp_path: Path
) -> None:
    tenant_id = f"faults-{uid()}"
    tenant = credentials(tenant_id)
    # Leases long enough to outlast the restart: a worker keeps its run through an
    # outage shorter than its lease.
    lease = "8"
    async with (
        mesh(own, memory_server.port, tmp_path, lease_s=float(lease)) as m,
        worker_process(
            own.backends, m.agent_port, tmp_path, f"w-{uid(6)}", AGENTMESH_JOB_LEASE_S=lease
        ) as worker,
    ):
        (name,) = await _create(m.jobs, tenant, [_job("agents/slow-test", "go")])

        async def first_step_done() -> bool:
            return m.counter.read_text().splitlines() == ["first"]

        await eventually(first_step_done, "the first step", timeout_s=60)
        _crash_postgres(own.postgres)
        # The run ends while PostgreSQL is down: its end is written once it is back.
        m.release.touch()

        async def run_ended() -> bool:
            return m.counter.read_text().splitlines() == ["first", "second"]

        await eventually(run_ended, "the second step", timeout_s=30)
        await asyncio.sleep(1.0)  # the worker's end write meets the outage
        await asyncio.to_thread(own.postgres.start)
        rows = await _all_terminal(own.backends.database_url, tenant_id, 1, timeout_s=60)
        _alive(worker, m.agent)
    row = rows[_id(name)]
    assert row["state"] == SUCCEEDED, row["error"]
    assert row["succeeded_changes"] == 1
    assert json.loads(row["result"]) == {"done": True}
    # Ended by the attempt that ran it: no retry, and the agent ran its steps once.
    assert row["attempt"] == 1
    assert m.counter.read_text().splitlines() == ["first", "second"]


async def test_jobs_through_two_workers_killed_at_random_all_end_once(
    own: Own, memory_server: RunningServer, db: asyncpg.Pool, tmp_path: Path
) -> None:
    tenant_id = f"chaos-{uid()}"
    tenant = credentials(tenant_id)
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    lease = "1.5"
    threads = {"AGENTMESH_WORKER_THREADS": "8", "AGENTMESH_JOB_LEASE_S": lease}
    started = time.monotonic()
    async with (
        mesh(own, memory_server.port, tmp_path, lease_s=float(lease)) as m,
        contextlib.AsyncExitStack() as stacks,
    ):
        workers: list[tuple[contextlib.AsyncExitStack, ChildProcess]] = []

        async def start_worker() -> tuple[contextlib.AsyncExitStack, ChildProcess]:
            stack = contextlib.AsyncExitStack()
            await stacks.enter_async_context(stack)
            child = await stack.enter_async_context(
                worker_process(own.backends, m.agent_port, tmp_path, f"w-{uid(6)}", **threads)
            )
            return stack, child

        workers += [await start_worker(), await start_worker()]
        slow = await _create(m.jobs, tenant, [_job("agents/slow-test", "go")] * SLOW_JOBS)
        echo = await _create(
            m.jobs, tenant, [_job("agents/echo", f"n {i}") for i in range(CHAOS_JOBS)]
        )
        created = time.monotonic()
        for kill in range(CHAOS_KILLS):
            await asyncio.sleep(chance.uniform(0.2, 2.0))
            which = chance.randrange(len(workers))
            stack, child = workers[which]
            kill_group(child)
            await stack.aclose()  # reaps it (already dead)
            workers[which] = await start_worker()
            if kill == CHAOS_KILLS // 2:
                m.release.touch()  # the slow runs (maybe killed mid-graph) may end now
        m.release.touch()
        rows = await _all_terminal(
            own.backends.database_url, tenant_id, SLOW_JOBS + CHAOS_JOBS, timeout_s=180
        )
        ended = time.monotonic()
        _alive(m.agent, *(child for _, child in workers))
    decisions = {
        r["job_id"]: r["n"]
        for r in await db.fetch(
            "SELECT job_id, count(*) AS n FROM memory.decisions"
            " WHERE tenant = $1 AND outcome = 'completed' GROUP BY job_id",
            tenant_id,
        )
    }
    failed = {i: r for i, r in rows.items() if r["state"] != SUCCEEDED}
    retried = {i for i, r in rows.items() if r["attempt"] > 1}
    # The agent's side: an echo run's result counts the turns of its thread, and every
    # run that completed left a decision in Memory (the Agent process drained them
    # when it stopped).
    results = {i: json.loads(r["result"]) for i, r in rows.items() if r["result"]}
    turns = {i: result["turns"] for i, result in results.items() if "turns" in result}
    repeated = {i for i, t in turns.items() if t > 1}
    repeated |= {i for i, n in decisions.items() if n > 1}
    print(
        f"seed {seed}: {len(rows)} jobs created in {created - started:.1f} s, all ended"
        f" {ended - created:.1f} s later; {CHAOS_KILLS} kills, {len(retried)} jobs retried,"
        f" {len(failed)} failed, {len(repeated)} agent runs repeated"
    )
    # Only a job whose every attempt died with its worker may fail.
    for row in failed.values():
        assert row["state"] == int(job_pb2.JOB_STATE_FAILED), row
        assert row["attempt"] == row["attempt_limit"], row
        assert json.loads(row["error"])["reason"] == "WORKER_LOST", row["error"]
    # Every job ended once.
    assert all(r["succeeded_changes"] == 1 for i, r in rows.items() if i not in failed)
    assert all(r["succeeded_changes"] == 0 for r in failed.values())
    texts = {json.loads(rows[_id(n)]["result"])["text"] for n in echo if _id(n) not in failed}
    assert texts == {f"n {i}" for i, n in enumerate(echo) if _id(n) not in failed}
    assert all(
        json.loads(rows[_id(n)]["result"]) == {"done": True} for n in slow if _id(n) not in failed
    )
    # The agent completed each job's run once: an attempt that repeats a run the agent
    # already finished (its worker was killed between the agent's end of the run and
    # its own end of the attempt) is answered that run's result again, by its key.
    # (A run whose caller was killed while its last events were on the way may be
    # recorded as cancelled; its repeat replays it and records nothing: so at most one
    # completed decision per job, and exactly one turn in each echo thread.)
    assert all(n == 1 for n in decisions.values()), {i: n for i, n in decisions.items() if n != 1}
    assert repeated == set(), repeated
    assert all(turns[_id(n)] == 1 for n in echo if _id(n) not in failed)
