"""Run h2load (Debian `nghttp2-client`) once and read its result.

h2load prints a summary (requests/s, counts, bytes, min/max/mean latency); with
``--log-file`` it also writes one row per request (start µs, HTTP status, µs to the end of
the response), from which this module computes real percentiles. Its own CPU time is read
from the kernel (``wait4``), so a bench can say how much of the machine the load generator
took.

h2load counts any HTTP 200 as a success, including a gRPC call that ended with
``grpc-status != 0``: callers must check correctness separately (see ``core.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

_FINISHED: Final = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS: Final = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS: Final = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_TRAFFIC: Final = re.compile(
    r"traffic: \S+ \((\d+)\) total, \S+ \((\d+)\) headers .*?, \S+ \((\d+)\) data"
)


class H2loadError(RuntimeError):
    """h2load is missing, failed, timed out, or printed something this module cannot read."""


@dataclass(frozen=True)
class Load:
    """What one h2load run sends, and how hard."""

    url: str
    clients: int
    """Connections (`-c`)."""
    streams: int
    """Requests in flight per connection (`-m`; HTTP/1.1: pipelined, keep it 1)."""
    requests: int
    """`-n`: the run stops after this many requests (count bound)."""
    headers: Sequence[tuple[str, str]] = ()
    body: bytes | None = None
    """Request body (`-d`); h2load then sends POST."""
    http1: bool = False
    """`--h1`: HTTP/1.1 instead of HTTP/2 with prior knowledge (h2c)."""
    timeout_s: float = 60.0
    """Time bound: h2load is killed (by PID) after this long."""

    @property
    def in_flight(self) -> int:
        return self.clients * self.streams


@dataclass(frozen=True)
class Result:
    """One h2load run: its summary, latency percentiles from the per-request log, CPU."""

    argv: list[str]
    wall_s: float
    """h2load's own measured duration (first request to last response)."""
    rps: float
    total: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_non_2xx: int
    header_bytes: int
    data_bytes: int
    """Response body bytes (HTTP/2 DATA frame payloads, or HTTP/1.1 bodies)."""
    latency_us: dict[str, float] = field(default_factory=dict)
    """min, p50, p90, p99, p99.9, max, mean over the 2xx rows of the log, in µs."""
    cpu_s: float = 0.0
    """h2load's user + system CPU time."""

    @property
    def errors(self) -> int:
        """Requests that did not end with a 2xx response."""
        return self.total - self.status_2xx

    @property
    def data_bytes_per_ok(self) -> float:
        return self.data_bytes / self.status_2xx if self.status_2xx else 0.0


def find_h2load() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise H2loadError(
            "h2load is not installed: `apt-get install -y nghttp2-client` (`make bench` does it)"
        )
    return path


def version() -> str:
    out = subprocess.run(
        [find_h2load(), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    return out.stdout.strip()


def argv_for(load: Load, log_file: Path | None, body_file: Path | None) -> list[str]:
    argv = [
        find_h2load(),
        "-n",
        str(load.requests),
        "-c",
        str(load.clients),
        "-m",
        str(load.streams),
        "-t",
        "1",  # one load-generator thread: 2 cores are shared with the server and Envoy
    ]
    if load.http1:
        argv.append("--h1")
    for name, value in load.headers:
        argv += ["-H", f"{name}: {value}"]
    if body_file is not None:
        argv += ["-d", str(body_file)]
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    argv.append(load.url)
    return argv


def run(load: Load, *, keep_log: Path | None = None) -> Result:
    """Run h2load for `load`; raises H2loadError if it fails or overruns its time bound."""
    if load.requests < load.clients:
        raise ValueError(f"h2load needs -n ({load.requests}) >= -c ({load.clients})")
    with tempfile.TemporaryDirectory(prefix="agentmesh-h2load-") as tmp:
        tmpdir = Path(tmp)
        body_file = None
        if load.body is not None:
            body_file = tmpdir / "body.bin"
            body_file.write_bytes(load.body)
        log_file = tmpdir / "requests.tsv"
        out_file = tmpdir / "stdout.txt"
        argv = argv_for(load, log_file, body_file)
        stdout, status, cpu_s = _run_bounded(argv, out_file, load.timeout_s)
        if status != 0:
            raise H2loadError(f"h2load exited with {status}: {' '.join(argv)}\n{stdout}")
        result = parse(stdout, argv)
        latencies = read_latencies(log_file)
        if keep_log is not None:
            shutil.copyfile(log_file, keep_log)
    return dataclasses.replace(result, latency_us=summarize(latencies), cpu_s=cpu_s)


def _run_bounded(argv: list[str], out_file: Path, timeout_s: float) -> tuple[str, int, float]:
    """Run argv with stdout to a file; kill it by PID after `timeout_s`. Returns
    (stdout, exit status, user+system CPU seconds)."""
    with out_file.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    try:
        # wait4 reaps the child and returns its rusage: h2load's own CPU time.
        _, wait_status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        proc.returncode = -1  # reaped above; keep Popen from waiting on it again
    text = out_file.read_text(errors="replace")
    if timed_out.is_set():
        raise H2loadError(f"h2load overran its {timeout_s:.0f} s bound: {' '.join(argv)}\n{text}")
    return text, os.waitstatus_to_exitcode(wait_status), usage.ru_utime + usage.ru_stime


def parse(stdout: str, argv: list[str]) -> Result:
    """Read h2load's summary."""
    finished = _FINISHED.search(stdout)
    requests = _REQUESTS.search(stdout)
    status = _STATUS.search(stdout)
    traffic = _TRAFFIC.search(stdout)
    if not (finished and requests and status and traffic):
        raise H2loadError(f"cannot parse h2load output of {' '.join(argv)}:\n{stdout}")
    wall = float(finished.group(1)) / (1000.0 if finished.group(2) == "ms" else 1.0)
    total, _started, _done, succeeded, failed, errored, timeout = map(int, requests.groups())
    s2xx, s3xx, s4xx, s5xx = map(int, status.groups())
    return Result(
        argv=argv,
        wall_s=wall,
        rps=float(finished.group(3)),
        total=total,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=s2xx,
        status_non_2xx=s3xx + s4xx + s5xx,
        header_bytes=int(traffic.group(2)),
        data_bytes=int(traffic.group(3)),
    )


def read_latencies(log_file: Path) -> list[float]:
    """µs to the end of each 2xx response, from h2load's `--log-file`."""
    values: list[float] = []
    if not log_file.exists():
        return values
    with log_file.open() as rows:
        for row in rows:
            cols = row.split("\t")
            if len(cols) >= 3 and cols[1].startswith("2"):
                values.append(float(cols[2]))
    return values


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(latencies_us: Sequence[float]) -> dict[str, float]:
    values = sorted(latencies_us)
    if not values:
        return {}
    return {
        "count": float(len(values)),
        "min": values[0],
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "p99.9": percentile(values, 99.9),
        "max": values[-1],
        "mean": sum(values) / len(values),
    }
