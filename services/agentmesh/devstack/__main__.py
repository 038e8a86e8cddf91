"""`make dev`: run the whole mesh on this machine until Ctrl-C.

    python -m agentmesh.devstack [--root .data] [--services memory,agent] [--no-worker]
        [--replicas N]

Exit status: 0 after Ctrl-C/SIGTERM and a clean stop; 1 if the stack failed to start or
a child died while running (the stack is stopped in both cases).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from agentmesh.devstack import paths
from agentmesh.devstack._proc import ConsoleEcho
from agentmesh.devstack.stack import SERVICES, DevStack, StackError, StackPorts
from agentmesh.memory.settings import EMBEDDERS


def _banner(stack: DevStack) -> str:
    p = stack.ports
    ext = f"127.0.0.1:{p.envoy_external}"
    rows = [
        ("gRPC (Envoy)", ext),
        ("HTTP/JSON (Envoy)", f"http://{ext}"),
        ("API docs (Envoy)", f"http://{ext}/docs/  (OpenAPI: /openapi.json)"),
        ("internal gRPC (Envoy)", stack.internal_address),
        ("Envoy admin", f"http://127.0.0.1:{p.envoy_admin}  (/stats/prometheus)"),
    ]
    rows += [
        (f"{name} (direct)", stack.endpoints[name])
        for svc in stack.services
        for name in stack.replicas(svc)
    ]
    metrics = [
        f"{name}={port}"
        for svc in stack.services
        for name, (_, port) in zip(stack.replicas(svc), p.replica_ports(svc), strict=True)
    ] + ([f"worker={p.metrics_port('worker')}"] if stack.worker else [])
    rows += [
        ("metrics ports", ", ".join(metrics)),
        ("PostgreSQL (owner)", stack.database_url),
        ("Redis", stack.redis_url),
        ("data dir", str(stack.root)),
        ("logs", str(stack.logs_dir)),
    ]
    width = max(len(label) for label, _ in rows)
    lines = ["agentmesh dev stack is up", ""]
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    inner = max(len(line) for line in lines)
    border = "+" + "-" * (inner + 2) + "+"
    box = [border, *[f"| {line:<{inner}} |" for line in lines], border]
    # Commands go below the box, unframed, so they can be copied and pasted as they are.
    commands = [
        "dev token:",
        "  export TOKEN=$(.venv/bin/agentmesh token --tenant acme)",
        "try:",
        f'  curl -H "authorization: Bearer $TOKEN" http://{ext}/v1/agents',
        '  .venv/bin/grpcurl -plaintext -H "authorization: Bearer $TOKEN" \\',
        f"      -protoset {stack.descriptor_set} \\",
        f"      {ext} agentmesh.v1.AgentService/ListAgents",
        "Ctrl-C stops everything.",
    ]
    return "\n".join([*box, *commands])


def envoy_access_line(name: str, line: str) -> bool:
    """Envoy's access log (one JSON line per request, health checks included): kept in
    ``logs/envoy.log``, not echoed, so the console shows the services' own logs."""
    return name == "envoy" and line.startswith("{") and '"listener"' in line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentmesh.devstack", description=__doc__)
    parser.add_argument("--root", type=Path, default=None, help="state dir (default <repo>/.data)")
    parser.add_argument(
        "--services",
        default=",".join(SERVICES),
        help=f"comma-separated subset of {','.join(SERVICES)}",
    )
    parser.add_argument("--no-worker", action="store_true", help="do not run the Dramatiq worker")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--quiet", action="store_true", help="logs to files only, not the console")
    parser.add_argument(
        "--embedder",
        choices=EMBEDDERS,
        default="minilm",
        help="Memory's embedder (default minilm: the local model, so semantic search"
        " matches synonyms; hash is faster and knows no meaning; openai needs"
        " AGENTMESH_MEMORY_EMBEDDER_URL)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        choices=range(1, 10),
        metavar="N",
        help="replicas of each service behind Envoy (default 1); replica k listens on its"
        " first replica's ports + 100*(k-1)",
    )
    args = parser.parse_args(argv)

    root = args.root or paths.repo_root() / ".data"
    stack = DevStack(
        root,
        StackPorts().with_replicas(args.replicas),
        services=[s for s in args.services.split(",") if s],
        worker=not args.no_worker,
        echo=None if args.quiet else ConsoleEcho(sys.stderr, muted=envoy_access_line),
        log_level=args.log_level,
        extra_env={"AGENTMESH_MEMORY_EMBEDDER": args.embedder},
    )

    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    # Handled, not KeyboardInterrupt: the stop sequence must not be cut in half by a
    # second Ctrl-C. Children run in their own sessions, so only this process gets it.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        stack.start()
    except (StackError, OSError, RuntimeError, ValueError, TimeoutError) as exc:
        print(f"\nagentmesh dev stack failed to start: {exc}", file=sys.stderr)
        return 1
    print(_banner(stack), file=sys.stderr, flush=True)

    status = 0
    while not stopping.wait(0.5):
        dead = stack.exited_children()
        if dead:
            for name, code in dead.items():
                print(
                    f"\n{name} exited unexpectedly with status {code}; stopping the stack.\n"
                    f"--- last lines of {stack.logs_dir / (name + '.log')} ---\n"
                    f"{stack.log_tail(name)}",
                    file=sys.stderr,
                )
            status = 1
            break
    print("\nstopping the agentmesh dev stack ...", file=sys.stderr, flush=True)
    try:
        stack.stop()
    except StackError as exc:
        print(f"error while stopping: {exc}", file=sys.stderr)
        return 1
    print("stopped.", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
