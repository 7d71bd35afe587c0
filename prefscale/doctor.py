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
from prefscale.ray_runtime import session

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


def _cluster_problems(config: Config, grows: bool) -> list[str]:
    """What the cluster as it is now cannot do. A cluster this process joined may still grow (its
    autoscaler adds nodes when the stages ask), so its missing resources are not refused here."""
    import ray

    from prefscale.devices import check_gpu_nodes
    from prefscale.score.engine import pools_fit
    from prefscale.score.scoring_model import configured_models

    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    problems = []
    if not grows and (problem := pools_fit(len(configured_models(config)), config.score, resources)):
        problems.append(f"score: {problem}")
    for name, run in config.train.items():
        cpus, gpus = run.workers * run.cpus_per_worker, run.workers * (1 if run.use_gpu else 0)
        if not grows and (cpus > resources.get("CPU", 0) or gpus > resources.get("GPU", 0)):
            problems.append(f"train.{name}: {run.workers} workers need {cpus:g} CPUs and {gpus:g} GPUs but the cluster has "
                            f"{resources.get('CPU', 0):g} and {resources.get('GPU', 0):g}; lower workers / cpus_per_worker or add nodes")
    if resources.get("GPU") and (config.score.gpus_per_actor or any(run.use_gpu for run in config.train.values())):
        try:
            check_gpu_nodes("this recipe's GPU work")
        except PrefscaleError as exc:
            problems.append(str(exc))
    problems += _shared_run_dir(config, nodes)
    return problems


def _shared_run_dir(config: Config, nodes: list[dict]) -> list[str]:
    """The run directory must be one filesystem every node mounts (models and checkpoints go there)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if "://" in config.run_dir:
        return _object_store_run_dir(config.run_dir, nodes)
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


def _probe_object_store(run_dir: str) -> str | None:
    """Write and delete a marker under the run directory from this node: the error, or None."""
    import socket

    from prefscale.io import remove, write_bytes

    marker = f"{run_dir.rstrip('/')}/.prefscale-doctor-{uuid.uuid4().hex[:8]}"
    try:
        write_bytes(b"", marker)
        remove(marker)
    except Exception as exc:  # noqa: BLE001 - credentials, network, permissions: each is "cannot write it"
        return f"{socket.gethostname()}: {str(exc).splitlines()[0]}"
    return None


def _object_store_run_dir(run_dir: str, nodes: list[dict]) -> list[str]:
    """Every node can write the run directory (its own credentials, its own network path)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_probe_object_store)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(run_dir) for n in nodes]
    failed = [p for p in ray.get(refs, timeout=120) if p]
    return [f"run directory {run_dir} is not writable from every node ({'; '.join(failed)}); fix the nodes' credentials or the URI"] if failed else []


def _needed_runs(config: Config, earlier: set[str]) -> list[str]:
    """Runs this config reads but does not make: each must be trained by an earlier config of the
    command, or already be in the run directory."""
    from prefscale.score.scoring_model import configured_models, read_scoring_record

    layout, problems = config.layout, []
    here = set(config.train) | set(config.members)
    advice = f"run its config first on {config.run_dir}, or name it before this one (prefscale run --config TEACHER.yaml THIS.yaml)"
    for name, run in config.train.items():
        for teacher in run.distill.teachers if run.distill else []:
            if teacher not in here and teacher not in earlier and not _readable(layout.oof(teacher)):
                problems.append(f"train.{name} distills from '{teacher}', which this config does not train and {config.run_dir} does not hold; {advice}")
    if config.data.unlabeled and config.train:
        scorers = here | {m.name for m in configured_models(config)}
        for scorer in config.pseudolabel_scorers():
            if scorer not in scorers and scorer not in earlier and read_scoring_record(config, scorer) is None:
                problems.append(f"pseudolabel.scorers names '{scorer}', which this config does not train and {config.run_dir} does not hold; {advice}")
    return problems


def _recorded_runs(config: Config) -> dict:
    """Train runs an earlier command made on this run directory, sized from their scoring records."""
    from prefscale.config import ModelConfig, TrainRunConfig
    from prefscale.plan.resources import TrainedRun
    from prefscale.score.scoring_model import read_scoring_record

    found = {}
    for name in config.pseudolabel_scorers() if config.data.unlabeled else []:
        record = None if name in config.train else read_scoring_record(config, name)
        if record and "run" in record:
            found[name] = TrainedRun(name, TrainRunConfig.model_validate(record["run"]), ModelConfig.model_validate(record["model"]),
                                     record["text"]["max_length"])
    return found


def _plan(config: Config, earlier: dict, nodes, where: str, grows: bool) -> tuple[list[dict], list[str]]:
    """The recipe's resource plan and one line per process no node type holds."""
    from prefscale.plan.resources import as_json, check, plan

    try:
        processes = plan(config, {**_recorded_runs(config), **earlier})
    except PrefscaleError as exc:
        return [], [f"plan: {exc}"]
    problems = check(processes, nodes, where)
    if grows:  # a live cluster that can still add nodes: missing node types are the autoscaler's to add
        problems = [p for p in problems if "has no such node type" not in p]
    return as_json(processes), problems


def doctor(configs: list[Config], nodes_file: str | None = None) -> dict[str, Any]:
    """Every check's findings for a command's configs in order (teachers, then their student);
    ``problems`` lists one line per thing that would stop the job. With ``nodes_file`` (cluster.yaml
    or a RayJob) the plan is checked against its node types and no cluster is contacted."""
    from prefscale.plan.hardware import file_nodes
    from prefscale.plan.resources import trained_run

    nodes = file_nodes(nodes_file) if nodes_file else None
    recipes, problems, earlier = [], [], {}
    live: dict[str, Any] | None = None
    for config in configs:
        found = _config_findings(config, set(earlier))
        if nodes is None and live is None:
            live = _live_cluster(config)
        cluster_nodes, where, grows = (nodes, nodes_file, False) if nodes is not None else (live["nodes"], "the cluster", live["grows"])
        if cluster_nodes is not None:
            found["plan"], plan_problems = _plan(config, earlier, cluster_nodes, where, grows)
            found["problems"] += plan_problems
        if nodes is None:
            found["cluster"] = live["summary"]
            found["problems"] += live["problems"] + (_cluster_problems(config, live["grows"]) if live["nodes"] is not None else [])
        else:
            found["cluster"] = f"not contacted: planned against {nodes_file}"
        earlier.update({name: trained_run(config, name) for name in config.train})
        recipes.append(found)
        problems += found["problems"]
    if len(recipes) == 1:
        return recipes[0]
    return {"recipes": recipes, "problems": problems}


def _config_findings(config: Config, earlier: set[str]) -> dict[str, Any]:
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
    problems += _needed_runs(config, earlier)
    return {"config": config.name, "run_dir": config.run_dir, "inputs_checked": len(inputs), "replica_gib": replicas, "problems": problems}


def _live_cluster(config: Config) -> dict[str, Any]:
    """The cluster the config names (or a local one): its nodes, whether it can grow, and what stops reaching it."""
    from prefscale.plan.hardware import live_nodes
    from prefscale.ray_runtime import ensure_ray

    try:
        ensure_ray(config.ray)
    except PrefscaleError as exc:
        return {"nodes": None, "grows": False, "summary": None, "problems": [str(exc)]}
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    resources = ray.cluster_resources()
    return {"nodes": live_nodes(nodes), "grows": session()["joined"], "problems": [],
            "summary": {"nodes": len(nodes), "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0),
                        "address": ray.get_runtime_context().gcs_address, "joined": session()["joined"]}}


def _readable(uri: str) -> bool:
    try:
        return exists(uri)
    except Exception:  # noqa: BLE001 - unknown schemes, missing credentials: all mean "cannot read it"
        return False
