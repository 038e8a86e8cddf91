"""``agentmesh jobs``: long-running agent work (JobService)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Annotated, Final

import typer
from google.protobuf import duration_pb2, json_format, struct_pb2
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from agentmesh.cli.common import JsonFlag, enum_label, mesh_of, part_text, resource_name, when
from agentmesh.cli.errors import EXIT_JOB_UNSUCCESSFUL, code_name
from agentmesh.cli.mesh import Mesh
from agentmesh.cli.output import STATE_STYLES, Output, value_json
from agentmesh.cli.watch import follow
from agentmesh.v1 import common_pb2, job_pb2

app = typer.Typer(
    help="Long-running agent work: create, follow, cancel, retry.", no_args_is_help=True
)

STREAM_DEADLINE_S: Final = 300.0
"""Deadline of one WatchJob stream; a longer watch renews it (see cli.watch)."""

StreamDeadline = Annotated[
    float,
    typer.Option(
        "--stream-deadline-s",
        min=0.1,
        help="Renew the watch stream after this long (it resumes where it was).",
    ),
]


def state_of(job: job_pb2.Job) -> str:
    return enum_label(job_pb2.JobState.Name(job.state), "JOB_STATE_")


def _percent(job: job_pb2.Job) -> str:
    return f"{job.progress.percent:.0f}%"


def _job_name(value: str) -> str:
    return resource_name("jobs", value)


def _show(out: Output, job: job_pb2.Job) -> None:
    if out.json_lines:
        out.message(job)
        return
    out.fields(
        [
            ("name", job.name),
            ("agent", job.agent),
            ("state", state_of(job)),
            (
                "progress",
                " ".join(filter(None, (_percent(job), job.progress.stage, job.progress.message))),
            ),
            ("attempt", str(job.attempt or "")),
            ("priority", enum_label(job_pb2.JobPriority.Name(job.priority), "JOB_PRIORITY_")),
            ("session", job.session),
            ("labels", ", ".join(f"{k}={v}" for k, v in sorted(job.labels.items()))),
            ("input", " ".join(part_text(p) for p in job.parts)),
            ("data", value_json(job.input) if job.input.fields else ""),
            ("created", when(job.create_time)),
            ("started", when(job.start_time)),
            ("ended", when(job.end_time)),
            ("result", value_json(job.result) if job.HasField("result") else ""),
            ("error", _error(job)),
            ("waiting on", value_json(job.interrupt.value) if job.HasField("interrupt") else ""),
        ]
    )


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    state: Annotated[
        str, typer.Option("--state", help="Only jobs in this state, e.g. RUNNING or succeeded.")
    ] = "",
    agent: Annotated[str, typer.Option("--agent", help="Only jobs of this agent.")] = "",
    filter_: Annotated[
        str,
        typer.Option("--filter", help="More AIP-160 conditions, joined to the others by AND."),
    ] = "",
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many jobs.")] = 50,
    json_lines: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    mesh = mesh_of(ctx, json_lines)
    conditions = []
    if state:
        # Passed through as given (upper-cased): the service says when a state is unknown.
        conditions.append(f"state = {state.upper().removeprefix('JOB_STATE_')}")
    if agent:
        conditions.append(f'agent = "{resource_name("agents", agent)}"')
    if filter_:
        conditions.append(filter_)
    jobs = _list(mesh, " AND ".join(conditions), limit)
    out = mesh.output
    if out.json_lines:
        for job in jobs:
            out.message(job)
        return
    out.table(
        ("NAME", "AGENT", "STATE", "PROGRESS", "CREATED"),
        [(j.name, j.agent, state_of(j), _percent(j), when(j.create_time)) for j in jobs],
        styles={2: STATE_STYLES},
    )


def _list(mesh: Mesh, filter_: str, limit: int) -> list[job_pb2.Job]:
    jobs: list[job_pb2.Job] = []
    page_token = ""
    while len(jobs) < limit:
        page = mesh.call(
            mesh.jobs.ListJobs,
            job_pb2.ListJobsRequest(
                filter=filter_, page_token=page_token, page_size=min(limit - len(jobs), 1000)
            ),
        )
        jobs.extend(page.jobs)
        page_token = page.next_page_token
        if not page_token:
            break
    return jobs[:limit]


@app.command("show")
def show_job(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="`ID` or `jobs/ID`.")],
    json_lines: JsonFlag = False,
) -> None:
    """Show one job: state, progress, result or error."""
    mesh = mesh_of(ctx, json_lines)
    _show(mesh.output, mesh.call(mesh.jobs.GetJob, job_pb2.GetJobRequest(name=_job_name(job_id))))


@app.command("cancel")
def cancel_job(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="`ID` or `jobs/ID`.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the job's error.")] = "",
    json_lines: JsonFlag = False,
) -> None:
    """Cancel a job that has not ended (a running one becomes CANCELLING first)."""
    mesh = mesh_of(ctx, json_lines)
    request = job_pb2.CancelJobRequest(name=_job_name(job_id), reason=reason)
    _show(mesh.output, mesh.call(mesh.jobs.CancelJob, request))


@app.command("retry")
def retry_job(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="`ID` or `jobs/ID`.")],
    json_lines: JsonFlag = False,
) -> None:
    """Start a new attempt of a FAILED or CANCELLED job."""
    mesh = mesh_of(ctx, json_lines)
    request = job_pb2.RetryJobRequest(name=_job_name(job_id))
    _show(mesh.output, mesh.call(mesh.jobs.RetryJob, request))


def _labels(values: Iterable[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, label = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint="--label")
        labels[key] = label
    return labels


def _input(value: str) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    if value:
        try:
            json_format.Parse(value, data)
        except json_format.ParseError as exc:
            raise typer.BadParameter(
                f"expected a JSON object: {exc}", param_hint="--input"
            ) from exc
    return data


@app.command("create")
def create_job(
    ctx: typer.Context,
    text: Annotated[
        str, typer.Argument(metavar="TEXT", help="The request, as the agent's text input.")
    ],
    agent: Annotated[
        str, typer.Option("--agent", help="The agent to run: `echo` or `agents/echo`.")
    ],
    input_: Annotated[
        str, typer.Option("--input", help="Structured input, a JSON object (the agent's schema).")
    ] = "",
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE, repeatable.")
    ] = None,
    session: Annotated[str, typer.Option("--session", help="The session the job serves.")] = "",
    start_delay_s: Annotated[
        int, typer.Option("--start-delay-s", min=0, help="Do not start before this many seconds.")
    ] = 0,
    job_id: Annotated[str, typer.Option("--id", help="Choose the job's id (else generated).")] = "",
    watch: Annotated[bool, typer.Option("--watch", help="Then follow it to its end.")] = False,
    stream_deadline_s: StreamDeadline = STREAM_DEADLINE_S,
    json_lines: JsonFlag = False,
) -> None:
    """Create a job for an agent (idempotent: the request carries a fresh request id)."""
    mesh = mesh_of(ctx, json_lines)
    job = job_pb2.Job(
        agent=resource_name("agents", agent),
        parts=[common_pb2.Part(text=text)],
        input=_input(input_),
        labels=_labels(label or ()),
        session=resource_name("sessions", session) if session else "",
    )
    if start_delay_s:
        job.start_delay.CopyFrom(duration_pb2.Duration(seconds=start_delay_s))
    request = job_pb2.CreateJobRequest(job=job, job_id=job_id, request_id=str(uuid.uuid4()))
    created = mesh.call(mesh.jobs.CreateJob, request)
    _show(mesh.output, created)
    if watch:
        _watch(mesh, created.name, stream_deadline_s)


@app.command("watch")
def watch_job(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="`ID` or `jobs/ID`.")],
    stream_deadline_s: StreamDeadline = STREAM_DEADLINE_S,
    json_lines: JsonFlag = False,
) -> None:
    """Follow a job to its end with a live progress bar, then print its result.

    Exits 0 when the job SUCCEEDED, 3 when it FAILED or was CANCELLED.
    """
    _watch(mesh_of(ctx, json_lines), _job_name(job_id), stream_deadline_s)


def _watch(mesh: Mesh, name: str, stream_deadline_s: float) -> None:
    out = mesh.output

    def open_stream(after_sequence: int) -> Iterable[job_pb2.JobEvent]:
        return mesh.jobs.WatchJob(
            job_pb2.WatchJobRequest(name=name, after_sequence=after_sequence),
            metadata=mesh.metadata,
            timeout=stream_deadline_s,
        )

    def on_resume(after_sequence: int, why: str) -> None:
        out.note(f"agentmesh: watch stream ended ({why}); resuming after change {after_sequence}")

    if out.rich:
        final = _watch_with_bar(out, open_stream, on_resume)
    else:

        def on_event(event: job_pb2.JobEvent) -> None:
            if out.json_lines:
                out.message(event)
                return
            job = event.job
            progress = " ".join(filter(None, (job.progress.stage, job.progress.message)))
            out.line(f"{job.name} {state_of(job)} {_percent(job)} {progress}".rstrip())
            if job.state == job_pb2.JOB_STATE_INPUT_REQUIRED and job.HasField("interrupt"):
                out.line(f"waiting on: {value_json(job.interrupt.value)}")

        final = follow(open_stream, on_event, on_resume)
    if not out.json_lines:
        _outcome(out, final)
    if final.state != job_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(EXIT_JOB_UNSUCCESSFUL)


def _watch_with_bar(
    out: Output,
    open_stream: Callable[[int], Iterable[job_pb2.JobEvent]],
    on_resume: Callable[[int, str], None],
) -> job_pb2.Job:
    with Progress(
        TextColumn("{task.fields[state]}", style="bold"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[stage]}", style="cyan"),
        TextColumn("{task.fields[message]}"),
        console=out.console,
        transient=False,
    ) as bar:
        task = bar.add_task("job", total=100, state="…", stage="", message="")

        def on_event(event: job_pb2.JobEvent) -> None:
            job = event.job
            bar.update(
                task,
                completed=job.progress.percent,
                state=state_of(job),
                stage=job.progress.stage,
                message=job.progress.message[:60],
            )
            if job.state == job_pb2.JOB_STATE_INPUT_REQUIRED and job.HasField("interrupt"):
                bar.console.print(f"waiting on: {value_json(job.interrupt.value)}", markup=False)

        return follow(open_stream, on_event, on_resume)


def _outcome(out: Output, job: job_pb2.Job) -> None:
    style = STATE_STYLES.get(state_of(job))
    out.line(f"{job.name} {state_of(job)}", style=style)
    if job.HasField("result"):
        out.line(f"result: {json.dumps(json_format.MessageToDict(job.result), ensure_ascii=False)}")
    if job.error.code or job.error.message:
        out.line(f"error: {_error(job)}")


def _error(job: job_pb2.Job) -> str:
    if not (job.error.code or job.error.message):
        return ""
    return f"{code_name(job.error.code)}: {job.error.message}"
