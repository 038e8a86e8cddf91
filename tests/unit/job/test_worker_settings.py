"""The worker's own settings and its boot: loaded in the entry point, nothing at import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from agentmesh.core.settings import ConfigError
from agentmesh.job.settings import WorkerSettings
from agentmesh.job.worker import dramatiq_args

pytestmark = pytest.mark.unit


def test_threads_default_to_8_and_are_range_checked() -> None:
    assert WorkerSettings.from_env({}).threads == 8
    assert WorkerSettings.from_env({"AGENTMESH_WORKER_THREADS": "2"}).threads == 2
    for bad in ("0", "257", "many"):
        with pytest.raises(ConfigError, match="AGENTMESH_WORKER_THREADS"):
            WorkerSettings.from_env({"AGENTMESH_WORKER_THREADS": bad})


def test_dramatiq_runs_the_boot_function_as_its_broker() -> None:
    args = dramatiq_args(3)
    assert args[0] == "agentmesh.job.worker:boot"
    assert args[args.index("--threads") + 1] == "3"
    module, _, function = args[0].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_importing_the_worker_modules_configures_no_broker() -> None:
    # A fresh interpreter: this test process may have set a broker elsewhere.
    code = (
        "import dramatiq.broker as b\n"
        "import agentmesh.job.actors, agentmesh.job.worker, agentmesh.job.broker\n"
        "assert b.global_broker is None, b.global_broker\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": ""}, timeout=60)
