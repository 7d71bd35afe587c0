"""`prefscale submit`: a recipe (or teachers then their student) as one Ray job on a running cluster.

What `ray job submit --working-dir . -- python ray_jobs/pipeline.py --config ...` does, with what
that command leaves to the user made part of it: the repository is uploaded without the
virtual environment, runs and caches; the job's runtime environment carries the hub token from
the submitter's environment (HF_TOKEN), so autoscaled nodes can fetch gated models without any
config file holding it; and the job is named after its configs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from prefscale.errors import PrefscaleError

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = "ray_jobs/pipeline.py"
# Never uploaded: environments, runs, caches (the working_dir upload is capped at 500 MiB by Ray).
EXCLUDES = [".venv", ".venv-*", ".git", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis"]
FORWARDED_ENV = ("HF_TOKEN",)  # from the submitter's environment into the job's, never from a config


def job_runtime_env(working_dir: str = str(REPO)) -> dict[str, Any]:
    env_vars = {"TOKENIZERS_PARALLELISM": "false", **{name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}}
    return {"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env_vars}


def submit(address: str, configs: list[str], wait: bool = False, log=print) -> dict[str, Any]:
    """Submit the configs, in order, as one job; with ``wait``, follow it to its end."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    missing = [c for c in configs if not os.path.exists(c)]
    if missing:
        raise PrefscaleError(f"config not found: {', '.join(missing)}; pass files from configs/")
    inside = [c for c in configs if not os.path.abspath(c).startswith(str(REPO) + os.sep)]
    if inside:
        raise PrefscaleError(f"{', '.join(inside)} is outside the repository, which is what the job uploads; copy it under configs/")
    relative = [os.path.relpath(os.path.abspath(c), REPO) for c in configs]
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise PrefscaleError(f"cannot reach the Ray dashboard at {address}: {str(exc).splitlines()[0]}; open the tunnel "
                             f"(ray dashboard cluster.yaml, or kubectl port-forward) or fix --address") from None
    entrypoint = f"python {ENTRYPOINT} --config {' '.join(relative)}"
    job = client.submit_job(entrypoint=entrypoint, runtime_env=job_runtime_env())
    log(f"submitted {job}: {entrypoint}")
    log(f"  follow it: ray job logs --follow --address {address} {job}")
    summary: dict[str, Any] = {"job": job, "entrypoint": entrypoint, "address": address}
    if not wait:
        return summary
    shown = 0
    while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        logs = client.get_job_logs(job)
        sys.stderr.write(logs[shown:])
        shown = len(logs)
        time.sleep(5)
    sys.stderr.write(client.get_job_logs(job)[shown:])
    summary["status"] = str(status)
    if status != JobStatus.SUCCEEDED:
        raise PrefscaleError(f"job {job} ended {status}; its log is above (ray job logs --address {address} {job})")
    return summary
