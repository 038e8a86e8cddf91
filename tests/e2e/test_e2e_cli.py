"""The `agentmesh` command against the whole mesh: the real script, run as a person or
a script would, through Envoy's listener, with a token minted from the dev secret."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.bench.memory_data import sentences
from agentmesh.core.auth import mint_token
from agentmesh.devstack.stack import DevStack
from agentmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc

CLI = str(Path(sys.executable).parent / "agentmesh")
"""The installed entry point (`agentmesh = "agentmesh.cli:main"`)."""
RUN_TIMEOUT_S = 120.0
"""Bound on one command; a watch waits for the worker on a loaded 2-core box."""
TENANT = f"cli-{uuid.uuid4().hex[:8]}"
"""A tenant of this module alone, so listings hold only what these tests created."""
SGR = re.compile(r"\x1b\[([0-9;]*)m")


@pytest.fixture(scope="module")
def cli_env(stack: DevStack) -> dict[str, str]:
    """The environment of a person at the dev mesh: its address and secret, a tenant."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"AGENTMESH_TOKEN", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE"}
    }
    env |= {
        "AGENTMESH_ADDRESS": stack.endpoints["envoy"],
        "AGENTMESH_AUTH_HS256_SECRET": stack.secret,
        "AGENTMESH_TENANT": TENANT,
        "COLUMNS": "200",
    }
    return env


class Run:
    """One finished command."""

    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.code = done.returncode
        self.out = done.stdout
        self.err = done.stderr

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


def agentmesh(env: dict[str, str], *args: str, **extra_env: str) -> Run:
    done = subprocess.run(
        [CLI, *args],
        env=env | extra_env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return Run(done)


def one_error_line(run: Run) -> str:
    """The single stderr line of a failed call (exit 1)."""
    assert run.code == 1, (run.code, run.out, run.err)
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("agentmesh: ")
    return lines[0]


def colour_codes(text: str) -> list[str]:
    """SGR parameters that set a colour (30-38, 40-48, 90-107), found in ``text``."""
    found = []
    for params in SGR.findall(text):
        for param in params.split(";"):
            if param.isdigit() and (30 <= int(param) <= 48 or 90 <= int(param) <= 107):
                found.append(param)
    return found


@pytest.fixture(scope="module")
def memory(stack: DevStack) -> Iterator[tuple[memory_pb2_grpc.MemoryServiceStub, Any]]:
    """Memory's API through Envoy, as the CLI's tenant."""
    metadata = (("authorization", f"Bearer {mint_token(stack.secret, TENANT)}"),)
    with grpc.insecure_channel(stack.endpoints["envoy"]) as channel:
        yield memory_pb2_grpc.MemoryServiceStub(channel), metadata


def test_agents_list_shows_the_offline_agents(cli_env: dict[str, str]) -> None:
    plain = agentmesh(cli_env, "agents", "list")
    assert plain.code == 0, plain.err
    header, *rows = plain.out.splitlines()
    assert header.split("\t")[0] == "NAME"
    names = {row.split("\t")[0] for row in rows}
    offline = {"agents/echo", "agents/calculator", "agents/recall", "agents/summarizer"}
    assert offline <= names
    assert "\x1b[" not in plain.out

    as_json = agentmesh(cli_env, "agents", "list", "--json").json_lines()
    by_name = {agent["name"]: agent for agent in as_json}
    assert offline <= {
        name for name, a in by_name.items() if a.get("labels", {}).get("offline") == "true"
    }
    assert by_name["agents/echo"]["inputSchema"]["properties"]["text"]["type"] == "string"

    shown = agentmesh(cli_env, "agents", "show", "echo")
    assert shown.code == 0, shown.err
    assert "name:" in shown.out
    assert "agents/echo" in shown.out
    assert "input schema:" in shown.out


def test_a_job_is_created_watched_to_succeeded_listed_and_refuses_a_cancel(
    cli_env: dict[str, str],
) -> None:
    created = agentmesh(
        cli_env, "--json", "jobs", "create", "--agent", "echo", "--label", "via=cli", "hello cli"
    )
    assert created.code == 0, created.err
    (job,) = created.json_lines()
    name = job["name"]
    assert job["agent"] == "agents/echo"
    assert job["labels"] == {"via": "cli"}

    watched = agentmesh(cli_env, "jobs", "watch", name.removeprefix("jobs/"))
    assert watched.code == 0, watched.err
    lines = watched.out.splitlines()
    assert all(line.startswith(f"{name} ") for line in lines[:-1]), lines
    assert lines[-2] == f"{name} SUCCEEDED"
    assert json.loads(lines[-1].removeprefix("result: "))["text"] == "hello cli"
    assert "100%" in watched.out
    assert "\x1b[" not in watched.out  # not a terminal: no bar, no colours

    listed = agentmesh(cli_env, "jobs", "list", "--state", "succeeded", "--agent", "echo")
    assert listed.code == 0, listed.err
    assert f"{name}\tagents/echo\tSUCCEEDED\t100%" in listed.out

    shown = agentmesh(cli_env, "jobs", "show", name, "--json").json_lines()
    assert shown[0]["state"] == "JOB_STATE_SUCCEEDED"
    assert shown[0]["result"]["text"] == "hello cli"

    refused = agentmesh(cli_env, "jobs", "cancel", name, "--reason", "too late")
    assert one_error_line(refused).startswith("agentmesh: FAILED_PRECONDITION: ")


def test_a_watch_resumes_after_its_stream_ends_and_shows_no_change_twice(
    cli_env: dict[str, str],
) -> None:
    # The job cannot start for 3 s after it is created, and the watch that follows in the
    # same process renews its stream every 0.5 s, so streams end before the job does;
    # each new one asks for the changes after the last it saw.
    watched = agentmesh(
        cli_env,
        "--json",
        "jobs",
        "create",
        "--agent",
        "echo",
        "--start-delay-s",
        "3",
        "--watch",
        "--stream-deadline-s",
        "0.5",
        "later",
    )
    assert watched.code == 0, watched.err
    assert "resuming after change" in watched.err
    created, *events = watched.json_lines()
    assert created["state"] == "JOB_STATE_PENDING"
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == sorted(set(sequences))
    assert all(e["job"]["name"] == created["name"] for e in events)
    assert events[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert events[-1]["job"]["result"]["text"] == "later"


def test_a_cancelled_job_is_retried_and_a_watch_of_a_cancelled_job_exits_3(
    cli_env: dict[str, str],
) -> None:
    created = agentmesh(
        cli_env, "--json", "jobs", "create", "--agent", "echo", "--start-delay-s", "3600", "x"
    )
    name = created.json_lines()[0]["name"]

    cancelled = agentmesh(cli_env, "jobs", "cancel", name, "--reason", "changed my mind")
    assert cancelled.code == 0, cancelled.err
    assert re.search(r"^state:\s+CANCELLED$", cancelled.out, re.MULTILINE), cancelled.out
    assert "changed my mind" in cancelled.out

    watched = agentmesh(cli_env, "jobs", "watch", name)
    assert watched.code == 3, watched.err
    assert f"{name} CANCELLED" in watched.out.splitlines()

    retried = agentmesh(cli_env, "--json", "jobs", "retry", name).json_lines()[0]
    assert (retried["state"], retried["attempt"]) == ("JOB_STATE_PENDING", 2)


def test_a_bad_state_prints_the_field_violation(cli_env: dict[str, str]) -> None:
    line = one_error_line(agentmesh(cli_env, "jobs", "list", "--state", "bogus"))
    assert line.startswith("agentmesh: INVALID_ARGUMENT: ")
    assert re.search(r"\[.*filter: state: bad value 'BOGUS'.*\]$", line), line


def test_an_unknown_option_is_a_usage_error(cli_env: dict[str, str]) -> None:
    run = agentmesh(cli_env, "jobs", "list", "--bogus")
    assert run.code == 2
    assert "--bogus" in run.err
    assert run.out == ""


def test_sessions_show_what_memory_holds(
    cli_env: dict[str, str], memory: tuple[memory_pb2_grpc.MemoryServiceStub, Any]
) -> None:
    stub, metadata = memory
    session_id = f"s-{uuid.uuid4().hex[:12]}"
    stub.CreateSession(
        memory_pb2.CreateSessionRequest(
            session_id=session_id, session=memory_pb2.Session(display_name="Trip to Lisbon")
        ),
        metadata=metadata,
    )
    stub.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            parent=f"sessions/{session_id}",
            messages=[
                memory_pb2.Message(
                    role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text="book a flight")]
                ),
                memory_pb2.Message(
                    role=common_pb2.ROLE_ASSISTANT,
                    agent="agents/echo",
                    parts=[common_pb2.Part(text="booked")],
                ),
            ],
        ),
        metadata=metadata,
    )

    listed = agentmesh(cli_env, "sessions", "list")
    assert listed.code == 0, listed.err
    assert f"sessions/{session_id}\tTrip to Lisbon\t2\t" in listed.out

    shown = agentmesh(cli_env, "sessions", "show", session_id)
    assert shown.code == 0, shown.err
    assert re.search(r"^display name:\s+Trip to Lisbon$", shown.out, re.MULTILINE)
    assert re.search(r"^messages:\s+2$", shown.out, re.MULTILINE)

    history = agentmesh(cli_env, "sessions", "history", session_id)
    assert history.out.splitlines() == [
        "#1 user: book a flight",
        "#2 assistant (agents/echo): booked",
    ]
    as_json = agentmesh(cli_env, "sessions", "history", session_id, "--json").json_lines()
    assert [m["sequence"] for m in as_json] == ["1", "2"]

    missing = agentmesh(cli_env, "sessions", "show", "no-such-session")
    assert one_error_line(missing).startswith("agentmesh: NOT_FOUND: ")


def test_memories_search_finds_by_words_within_a_namespace(
    cli_env: dict[str, str], memory: tuple[memory_pb2_grpc.MemoryServiceStub, Any]
) -> None:
    stub, metadata = memory
    for namespace, content in [
        ("users/u1", "prefers aisle seats on long flights"),
        ("users/u2", "prefers aisle seats on trains"),
    ]:
        stub.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(namespace=namespace, content=content)
            ),
            metadata=metadata,
        )

    found = agentmesh(
        cli_env, "memories", "search", "aisle seats", "--namespace", "users/u1", "--json"
    )
    assert found.code == 0, found.err
    hits = found.json_lines()
    assert [h["memory"]["content"] for h in hits] == ["prefers aisle seats on long flights"]

    table = agentmesh(cli_env, "memories", "search", "aisle seats", "--limit", "5")
    header, *rows = table.out.splitlines()
    assert header.split("\t") == ["SCORE", "NAME", "NAMESPACE", "KIND", "CONTENT"]
    assert {row.split("\t")[2] for row in rows} == {"users/u1", "users/u2"}

    empty = one_error_line(agentmesh(cli_env, "memories", "search", ""))
    assert empty.startswith("agentmesh: INVALID_ARGUMENT: ")


def test_memories_import_loads_a_file_in_slices_once(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    namespace = f"corpus/{uuid.uuid4().hex[:8]}"
    texts = sentences(1200)  # varied enough that none is a near-duplicate of another
    lines = [json.dumps({"content": text, "kind": "MEMORY_KIND_SEMANTIC"}) for text in texts]
    lines.insert(10, lines[9])  # an exact duplicate within the first slice: merged
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n\n", encoding="utf-8")

    first = agentmesh(
        cli_env, "memories", "import", str(corpus), "--namespace", namespace, "--json"
    )
    assert first.code == 0, first.err
    assert first.json_lines() == [{"importedCount": 1200, "mergedCount": 1}]
    # Run again (as after a failure half-way): every slice is recognised, none stored twice.
    again = agentmesh(cli_env, "memories", "import", str(corpus), "--namespace", namespace)
    assert again.code == 0, again.err
    assert "1201 memories read, 1200 stored, 1 merged" in again.out
    found = agentmesh(cli_env, "memories", "search", texts[417], "--namespace", namespace, "--json")
    assert found.code == 0, found.err
    best, second, *_ = (hit["memory"]["content"] for hit in found.json_lines())
    assert best == texts[417]
    assert second != best  # stored once

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "fine"}\n{"content": 5, "nope": true}\n', encoding="utf-8")
    broken = agentmesh(cli_env, "memories", "import", str(bad), "--namespace", namespace)
    assert broken.code == 1
    assert f"{bad}:2: not a memory in JSON" in broken.err


def test_no_color_keeps_colour_out_of_terminal_output(cli_env: dict[str, str]) -> None:
    created = agentmesh(
        cli_env, "--json", "jobs", "create", "--agent", "echo", "--start-delay-s", "3600", "y"
    )
    name = created.json_lines()[0]["name"]
    assert agentmesh(cli_env, "jobs", "cancel", name).code == 0

    # FORCE_COLOR makes Rich treat the pipe as a terminal: a table with coloured states.
    coloured = agentmesh(cli_env, "jobs", "list", FORCE_COLOR="1")
    assert coloured.code == 0, coloured.err
    assert colour_codes(coloured.out), coloured.out
    assert "\t" not in coloured.out

    plain = agentmesh(cli_env, "jobs", "list", FORCE_COLOR="1", NO_COLOR="1")
    assert plain.code == 0, plain.err
    assert name in plain.out
    assert colour_codes(plain.out) == []


def test_a_terminal_watch_shows_a_progress_bar_and_the_result(cli_env: dict[str, str]) -> None:
    created = agentmesh(cli_env, "--json", "jobs", "create", "--agent", "echo", "bar me")
    name = created.json_lines()[0]["name"]
    watched = agentmesh(cli_env, "jobs", "watch", name, FORCE_COLOR="1")
    assert watched.code == 0, watched.err
    assert "━" in watched.out  # Rich's bar
    assert "SUCCEEDED" in watched.out
    assert '"text": "bar me"' in watched.out


def test_a_missing_or_invalid_token_is_one_unauthenticated_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    invalid = agentmesh(cli_env, "--token", "not-a-jwt", "agents", "list")
    assert one_error_line(invalid).startswith("agentmesh: UNAUTHENTICATED: ")

    # No token and no dev secret to mint one with (the repository root moved away).
    env = {k: v for k, v in cli_env.items() if k != "AGENTMESH_AUTH_HS256_SECRET"}
    missing = agentmesh(env, "jobs", "list", AGENTMESH_REPO_ROOT=str(tmp_path))
    line = one_error_line(missing)
    assert line.startswith("agentmesh: UNAUTHENTICATED: ")
    assert "AGENTMESH_TOKEN" in line
