"""`prefscale doctor`: check in seconds what a multi-day job needs, before it is submitted.

The config, every input it reads, every model it names (config and safetensors listing only,
no weights downloaded), the cluster's CPUs and GPUs against the recipe's actor pools and Train
workers, GPU nodes that can use their GPUs, and a run directory every node sees. Each problem
is one line; nothing is written except a marker file in the run directory, removed again.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from prefscale.config import Config
from prefscale.errors import PrefscaleError
from prefscale.io import absolute, exists

BYTES_PER_PARAMETER = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 0.5}


def _inside(path: str, directory: str) -> bool:
    return "://" not in path and os.path.abspath(path).startswith(os.path.abspath(directory) + os.sep)


def _inputs(config: Config) -> list[str]:
    """What the recipe reads and does not make itself (paths inside the run directory are its own)."""
    paths = [*config.data.train, *([config.data.unlabeled] if config.data.unlabeled else []),
             *(p for p in (config.score.input, config.pseudolabel.input) if p), *(p for run in config.train.values() for p in run.extra_train)]
    return [p for p in dict.fromkeys(paths) if not _inside(p, config.run_dir)]


def _models(config: Config) -> dict[str, str]:
    """Every model the recipe loads, by the precision it loads it at (models made by the run are skipped)."""
    named = {config.model.path: config.model.precision}
    named |= {run.model.path: run.model.precision for run in config.train.values() if run.model}
    named |= {m.path: m.precision for m in config.score.models}
    return {path: precision for path, precision in named.items() if not _inside(path, config.run_dir)}


def _stored_dtype(config_json: str) -> str:
    with open(config_json, encoding="utf-8") as handle:
        config = json.load(handle)
    return {"float16": "fp16", "bfloat16": "bf16"}.get(config.get("torch_dtype") or config.get("dtype"), "fp32")


def model_footprint(spec: str) -> tuple[int, str]:
    """Bytes of a model's safetensors weights and the dtype they are stored in, from file sizes,
    the hub cache or the hub's file listing plus its config.json: never the weights themselves."""
    from prefscale.models.loading import (
        HUB_ID,
        PACKAGE_PREFIX,
        hub_errors,
        resolve_model_path,
    )

    hub = HUB_ID.match(spec)
    if spec.startswith(PACKAGE_PREFIX) or not hub or os.path.exists(spec):
        folder = resolve_model_path(spec)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))
        return size, _stored_dtype(os.path.join(folder, "config.json"))
    from huggingface_hub import (
        HfApi,
        constants,
        hf_hub_download,
        try_to_load_from_cache,
    )

    repo, revision = hub["repo"], hub["revision"]
    cached = try_to_load_from_cache(repo, "config.json", revision=revision)
    if isinstance(cached, str):  # in the cache: read the snapshot, as the job will
        return model_footprint(os.path.dirname(cached))
    if constants.is_offline_mode():
        resolve_model_path(spec)  # raises the one-line "not in the hub cache" error
    with hub_errors(spec, repo, revision):
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
        config_json = hf_hub_download(repo, "config.json", revision=revision)
    sizes = [s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors")]
    if not sizes:
        raise PrefscaleError(f"{spec} has no .safetensors weights; prefscale never loads pickled weights")
    return sum(sizes), _stored_dtype(config_json)


def replica_gib(stored_bytes: int, stored_dtype: str, precision: str) -> float:
    """Memory of one loaded replica: parameters (stored bytes / stored bytes per parameter) x bytes per parameter."""
    return stored_bytes / BYTES_PER_PARAMETER[stored_dtype] * BYTES_PER_PARAMETER[precision] / 2**30


def _cluster_problems(config: Config) -> tuple[list[str], dict[str, Any]]:
    import ray

    from prefscale.devices import check_gpu_nodes
    from prefscale.score.engine import pools_fit
    from prefscale.score.scoring_model import configured_models

    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    found = {"nodes": len(nodes), "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0)}
    problems = []
    if problem := pools_fit(len(configured_models(config)), config.score, resources):
        problems.append(f"score: {problem}")
    for name, run in config.train.items():
        cpus, gpus = run.workers * run.cpus_per_worker, run.workers * (1 if run.use_gpu else 0)
        if cpus > resources.get("CPU", 0) or gpus > resources.get("GPU", 0):
            problems.append(f"train.{name}: {run.workers} workers need {cpus:g} CPUs and {gpus:g} GPUs but the cluster has "
                            f"{resources.get('CPU', 0):g} and {resources.get('GPU', 0):g}; lower workers / cpus_per_worker or add nodes")
    if resources.get("GPU") and (config.score.gpus_per_actor or any(run.use_gpu for run in config.train.values())):
        try:
            check_gpu_nodes("this recipe's GPU work")
        except PrefscaleError as exc:
            problems.append(str(exc))
    problems += _shared_run_dir(config, nodes)
    return problems, found


def _shared_run_dir(config: Config, nodes: list[dict]) -> list[str]:
    """The run directory must be one filesystem every node mounts (models and checkpoints go there)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if "://" in config.run_dir:
        return []  # object storage is reachable from every node by name
    run_dir = absolute(config.run_dir)
    existing = run_dir
    while not os.path.isdir(existing):  # creates nothing: the marker goes where the run directory will be made
        existing = os.path.dirname(existing)
    try:
        marker = os.path.join(existing, f".prefscale-doctor-{uuid.uuid4().hex[:8]}")
        open(marker, "w").close()
    except OSError as exc:
        return [f"run directory {run_dir} is not writable here ({existing}: {exc.strerror}); set output_dir to storage every node mounts"]
    try:
        sees = ray.remote(num_cpus=0)(os.path.exists)
        refs = {n["NodeManagerAddress"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
                for n in nodes}
        blind = [address for address, ref in refs.items() if not ray.get(ref, timeout=120)]
    finally:
        os.remove(marker)
    return [f"run directory {run_dir} is not visible from node(s) {', '.join(blind)}; set output_dir to storage every node mounts"] if blind else []


def doctor(config: Config) -> dict[str, Any]:
    """Every check's findings; ``problems`` lists one line per thing that would stop the job."""
    problems: list[str] = []
    inputs = _inputs(config)
    missing = [p for p in inputs if not _readable(p)]
    problems += [f"input not readable: {p}; fix the path or your storage credentials" for p in missing]
    replicas = {}
    for spec, precision in _models(config).items():
        try:
            replicas[spec] = round(replica_gib(*model_footprint(spec), precision), 2)
        except PrefscaleError as exc:
            problems.append(f"model {spec}: {exc}")
    summary: dict[str, Any] = {"config": config.name, "run_dir": config.run_dir, "inputs_checked": len(inputs),
                               "replica_gib": replicas}
    try:
        from prefscale.ray_runtime import ensure_ray

        ensure_ray(config.ray)
    except PrefscaleError as exc:
        problems.append(str(exc))
    else:
        cluster_problems, summary["cluster"] = _cluster_problems(config)
        problems += cluster_problems
    summary["problems"] = problems
    return summary


def _readable(uri: str) -> bool:
    try:
        return exists(uri)
    except Exception:  # noqa: BLE001 - unknown schemes, missing credentials: all mean "cannot read it"
        return False
