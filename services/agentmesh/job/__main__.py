"""``python -m agentmesh.job``: run the Job service until SIGTERM."""

from agentmesh.core.entrypoint import run_service
from agentmesh.job.app import build_job
from agentmesh.job.settings import JobSettings

if __name__ == "__main__":
    run_service("job", build_job, JobSettings.from_env)
