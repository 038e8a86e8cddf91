"""Two replicas of every service behind Envoy, one of each SIGKILLed under load and
started again (what `make dev --replicas 2` runs).

Through Envoy's external listener, with no client-side retries (Envoy's are what is
tested): idempotent calls see no failure at all (Envoy retries them on another replica,
then health checks and outlier detection take the dead one out); calls that are not
idempotent fail only with UNAVAILABLE and are never half-applied (an append of two
messages stored whole or not at all; a job created whole or not at all) — a Converse
stream already under way when its replica dies is cut, which gRPC reports as INTERNAL
(RST_STREAM); the restarted
replicas are readmitted once their health says SERVING and take traffic again. The
figures (calls, failures by code, time to eject and to readmit) are printed for
docs/benchmarks.md.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from agentmesh.core.auth import mint_token
from agentmesh.devstack.envoy_config import SERVICE_NAMES
from agentmesh.devstack.stack import DevStack, StackPorts
from agentmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    conductor_pb2,
    conductor_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)

LOAD_BEFORE_KILL_S = 4.0
DOWN_S = 8.0
LOAD_AFTER_RESTART_S = 8.0
READMIT_TIMEOUT_S = 60.0
MAX_CALLS_PER_WORKER = 3000
CALL_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def replicated() -> Iterator[DevStack]:
    root = Path(tempfile.mkdtemp(prefix="agentmesh-replicas-"))
    mesh = DevStack(root, StackPorts.free(replicas=2), ready_timeout_s=120.0)
    mesh.start()
    try:
        yield mesh
    finally:
        mesh.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Tally:
    """Outcomes of one kind of call, shared by the load threads."""

    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, code: str | None, details: str = "") -> None:
        with self.lock:
            if code is None:
                self.ok += 1
            else:
                self.failures[code] += 1
                self.details.append(f"{code}: {details}")


@dataclass
class Load:
    """Calls through Envoy until told to stop, bounded in count."""

    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...]
    session: str
    job: str
    stop: threading.Event = field(default_factory=threading.Event)
    idempotent: dict[str, Tally] = field(default_factory=dict)
    other: dict[str, Tally] = field(default_factory=dict)
    appended: list[tuple[str, str | None]] = field(default_factory=list)
    """(tag, failure code) of every append."""
    created: list[tuple[str, str | None]] = field(default_factory=list)
    """(job id, failure code) of every create."""

    def call(self, tallies: dict[str, Tally], name: str, fn: Callable[[], Any]) -> str | None:
        tally = tallies.setdefault(name, Tally())
        try:
            fn()
        except grpc.RpcError as exc:
            code = exc.code().name
            tally.record(code, exc.details() or "")
            return str(code)
        tally.record(None)
        return None

    def reads(self) -> None:
        agents = agent_pb2_grpc.AgentServiceStub(self.channel)
        memory = memory_pb2_grpc.MemoryServiceStub(self.channel)
        jobs = job_pb2_grpc.JobServiceStub(self.channel)
        md, t = self.metadata, CALL_TIMEOUT_S
        for _ in range(MAX_CALLS_PER_WORKER):
            if self.stop.is_set():
                return
            self.call(
                self.idempotent,
                "AgentService/GetAgent",
                lambda: agents.GetAgent(
                    agent_pb2.GetAgentRequest(name="agents/echo"), metadata=md, timeout=t
                ),
            )
            self.call(
                self.idempotent,
                "MemoryService/GetSession",
                lambda: memory.GetSession(
                    memory_pb2.GetSessionRequest(name=self.session), metadata=md, timeout=t
                ),
            )
            self.call(
                self.idempotent,
                "JobService/GetJob",
                lambda: jobs.GetJob(job_pb2.GetJobRequest(name=self.job), metadata=md, timeout=t),
            )

    def writes(self) -> None:
        memory = memory_pb2_grpc.MemoryServiceStub(self.channel)
        jobs = job_pb2_grpc.JobServiceStub(self.channel)
        conductor = conductor_pb2_grpc.ConductorServiceStub(self.channel)
        md, t = self.metadata, CALL_TIMEOUT_S
        for _ in range(MAX_CALLS_PER_WORKER):
            if self.stop.is_set():
                return
            tag = uuid.uuid4().hex
            messages = [
                memory_pb2.Message(
                    role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text=f"{tag} {i}")]
                )
                for i in (1, 2)
            ]
            code = self.call(
                self.other,
                "MemoryService/AppendMessages (no request_id)",
                lambda m=messages: memory.AppendMessages(  # type: ignore[misc]
                    memory_pb2.AppendMessagesRequest(parent=self.session, messages=m),
                    metadata=md,
                    timeout=t,
                ),
            )
            self.appended.append((tag, code))
            job_id = f"r-{tag[:20]}"
            code = self.call(
                self.other,
                "JobService/CreateJob (no request_id)",
                lambda j=job_id: jobs.CreateJob(  # type: ignore[misc]
                    job_pb2.CreateJobRequest(
                        job_id=j,
                        job=job_pb2.Job(agent="agents/echo", parts=[common_pb2.Part(text="x")]),
                    ),
                    metadata=md,
                    timeout=t,
                ),
            )
            self.created.append((job_id, code))
            self.call(
                self.other,
                "ConductorService/Converse",
                lambda: list(
                    conductor.Converse(
                        conductor_pb2.ConverseRequest(
                            session=f"sessions/r-{uuid.uuid4().hex[:20]}",
                            create_session=True,
                            agent="agents/echo",
                            parts=[common_pb2.Part(text="hi")],
                        ),
                        metadata=md,
                        timeout=t,
                    )
                ),
            )


def _hosts(admin: str, cluster: str) -> dict[int, dict[str, Any]]:
    """Envoy's view of a cluster's hosts by port: health flags and request counts."""
    clusters = httpx.get(f"{admin}/clusters?format=json", timeout=5.0).json()
    (found,) = [c for c in clusters["cluster_statuses"] if c["name"] == cluster]
    out: dict[int, dict[str, Any]] = {}
    for host in found.get("host_statuses", []):
        port = host["address"]["socket_address"]["port_value"]
        stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
        health = host.get("health_status", {})
        healthy = health.get("eds_health_status") == "HEALTHY" and not any(
            v is True for k, v in health.items() if k.startswith("failed_")
        )
        out[port] = {"healthy": healthy, "rq_total": stats.get("rq_total", 0), "health": health}
    return out


def _wait(condition: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until `condition()` held, or None if it did not within `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def test_killing_one_replica_of_each_service_under_load(replicated: DevStack) -> None:
    token = mint_token(replicated.secret, "replicas", subject="tester")
    metadata = (("authorization", f"Bearer {token}"),)
    admin = replicated.endpoints["envoy_admin"]
    victims = {svc: f"{svc}-2" for svc in SERVICE_NAMES}
    victim_ports = {svc: replicated.ports.replica_ports(svc)[1][0] for svc in SERVICE_NAMES}

    channel = grpc.insecure_channel(
        replicated.endpoints["envoy"], options=[("grpc.enable_retries", 0)]
    )
    try:
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        session = memory.CreateSession(
            memory_pb2.CreateSessionRequest(session_id=f"r-{uuid.uuid4().hex[:20]}"),
            metadata=metadata,
            timeout=CALL_TIMEOUT_S,
        ).name
        job = (
            job_pb2_grpc.JobServiceStub(channel)
            .CreateJob(
                job_pb2.CreateJobRequest(
                    job=job_pb2.Job(agent="agents/echo", parts=[common_pb2.Part(text="x")])
                ),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
            .name
        )
        load = Load(channel, metadata, session, job)
        threads = [threading.Thread(target=load.reads) for _ in range(3)]
        threads += [threading.Thread(target=load.writes) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(LOAD_BEFORE_KILL_S)
            before = {svc: _hosts(admin, svc)[victim_ports[svc]]["rq_total"] for svc in victims}
            assert all(before.values()), f"a replica took no traffic before the kill: {before}"
            for name in victims.values():
                replicated.kill(name)
            ejected = {
                svc: _wait(
                    lambda s=svc: not _hosts(admin, s)[victim_ports[s]]["healthy"],  # type: ignore[misc]
                    DOWN_S,
                )
                for svc in victims
            }
            time.sleep(max(0.0, DOWN_S - max(t or DOWN_S for t in ejected.values())))
            for name in victims.values():
                replicated.restart(name)
            readmitted = {
                svc: _wait(
                    lambda s=svc: _hosts(admin, s)[victim_ports[s]]["healthy"],  # type: ignore[misc]
                    READMIT_TIMEOUT_S,
                )
                for svc in victims
            }
            at_readmission = {
                svc: _hosts(admin, svc)[victim_ports[svc]]["rq_total"] for svc in victims
            }
            time.sleep(LOAD_AFTER_RESTART_S)
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(timeout=60)
        after = {svc: _hosts(admin, svc)[victim_ports[svc]]["rq_total"] for svc in victims}

        summary = {
            "idempotent": {k: (v.ok, dict(v.failures)) for k, v in load.idempotent.items()},
            "not idempotent": {k: (v.ok, dict(v.failures)) for k, v in load.other.items()},
            "seconds to eject": ejected,
            "seconds to readmit after restart": readmitted,
        }
        print("replica crash under load:", summary)

        assert all(t is not None for t in ejected.values()), summary
        assert all(t is not None for t in readmitted.values()), summary
        # Idempotent calls: not one failure.
        for name, tally in load.idempotent.items():
            assert tally.ok > 0, name
            assert not tally.failures, (name, tally.failures)
        # The rest: unary calls only UNAVAILABLE. A server stream already under way when
        # its replica dies is cut by Envoy with RST_STREAM(INTERNAL_ERROR), which gRPC's
        # HTTP/2 mapping reports as INTERNAL whatever the proxy; nothing else is allowed.
        for name, tally in load.other.items():
            assert tally.ok > 0, name
            for detail in tally.details:
                cut = detail.startswith("INTERNAL:") and "RST_STREAM" in detail
                assert detail.startswith("UNAVAILABLE:") or (name.endswith("Converse") and cut), (
                    name,
                    tally.details,
                )
        # The restarted replicas take traffic again (Memory's through the Agent's and the
        # Conductor's calls too, so every cluster counts).
        for svc in victims:
            assert after[svc] > at_readmission[svc], (svc, at_readmission[svc], after[svc])

        _never_half_applied(load, channel, metadata)
    finally:
        channel.close()


def _never_half_applied(
    load: Load, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]
) -> None:
    """Every append is there whole or not at all; every create that failed left no job,
    or a whole one."""
    memory = memory_pb2_grpc.MemoryServiceStub(channel)
    texts: Counter[str] = Counter()
    page = ""
    while True:
        listed = memory.ListMessages(
            memory_pb2.ListMessagesRequest(parent=load.session, page_size=1000, page_token=page),
            metadata=metadata,
            timeout=CALL_TIMEOUT_S,
        )
        for message in listed.messages:
            texts[message.parts[0].text.split()[0]] += 1
        page = listed.next_page_token
        if not page:
            break
    for tag, code in load.appended:
        assert texts[tag] == 2 or (code is not None and texts[tag] == 0), (tag, code, texts[tag])
    jobs = job_pb2_grpc.JobServiceStub(channel)
    for job_id, code in load.created:
        if code is None:
            continue
        found = _job_or_none(jobs, f"jobs/{job_id}", metadata)
        assert found is None or (found.agent == "agents/echo" and found.parts[0].text == "x")


def _job_or_none(
    jobs: job_pb2_grpc.JobServiceStub, name: str, metadata: tuple[tuple[str, str], ...]
) -> job_pb2.Job | None:
    try:
        job: job_pb2.Job = jobs.GetJob(
            job_pb2.GetJobRequest(name=name), metadata=metadata, timeout=CALL_TIMEOUT_S
        )
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return job
