"""Helpers shared by the benchmark scripts: paths, results, and whole-process-tree memory."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"


def machine() -> str:
    """What a speed depends on: the CPU's model and vector width differ between this project's machines."""
    model, vector = platform.processor() or platform.machine(), "AVX2"
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        vector = "AVX-512" if " avx512f" in info else "AVX2" if " avx2" in info else "no AVX2"
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()}, {model}, {vector}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU"


def commit() -> str:
    """The commit the benchmark ran on, with '+changes' when the working tree differed from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+changes" if dirty else head


def write_result(name: str, record: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "commit": commit(), **record}
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


class TreeMemory:
    """Samples a process and all its descendants (a whole in-process Ray cluster).

    RSS summed over processes counts shared memory (the object store) once per process that
    maps it, so PSS (shared pages split between their users) is recorded as the honest total.
    """

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    info = proc.memory_full_info()
                    rss += info.rss
                    pss += info.pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(procs))
            time.sleep(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(command: list[str], env: dict | None = None) -> tuple[dict, TreeMemory, float]:
    """Run a prefscale CLI command with --json; return its summary, memory peaks and wall time."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", **(env or {})})
    with TreeMemory(proc.pid) as memory:
        out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), memory, time.perf_counter() - started
