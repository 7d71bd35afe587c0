"""The resource plan of a recipe: per stage and per kind of process, the accelerator memory, host
memory and disk it needs, and the node type that can hold it.

Every model figure comes from ``shapes.size_model`` (the real architecture on the meta device).
What the plan adds on top is written here once, with where each constant comes from:

- training worker: weights at the run's precision, LoRA adapters (fp32), AdamW's two fp32
  moments per trainable parameter, DDP's gradient buckets (one more fp32 copy, when workers > 1),
  and the traced peak of one training step (activations, transients, gradients); on its host the
  process runtime, the largest checkpoint shard while loading, and its fold's token ids (flat int32
  arrays: about 10 bytes a token for both orders).
- scoring actor: the base at the scoring precision, each fold adapter it holds, and the traced
  peak of one batch of ``score.max_tokens`` tokens; on its host the runtime and a shard.
- merge task: the averaged model streamed tensor by tensor (``models/averaging.py``): three fp32
  copies of the largest weight (base, mean update, sum), one output shard and the fold adapters'
  pages; its disk holds the base and the output.
- driver: the runtime and the battles table it reads (1.5 x its uncompressed size).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prefscale.config import Config, LoraConfig, ModelConfig, TrainRunConfig
from prefscale.plan.hardware import GB, GIB, NodeType
from prefscale.plan.shapes import ADAPTER_BYTES, ModelSize, size_model

CPU_RUNTIME = 0.6 * GIB  # RSS of a Ray worker with torch, transformers, peft, Ray Data/Train imported (measured here: 0.55 GiB)
GPU_RUNTIME = 3.0 * GIB  # the same with torch's CUDA libraries mapped (assumed: typical of a CUDA 12 torch process; no GPU here)
CUDA_CONTEXT = 1.5 * GB  # CUDA context, cuBLAS workspace and allocator slack per GPU process (assumed, not measured here)
# What an allocator holds beyond the live tensors: glibc's malloc keeps what torch frees in its arenas,
# so a CPU process's RSS peaks at about twice the traced peak (measured here: MiniLM, 16 x 128 tokens,
# traced 0.57 GiB, RSS 1.1 GiB above the loaded model); CUDA's caching allocator rounds and keeps blocks
# (assumed 20%).
CPU_ALLOCATOR_SLACK = 1.0
GPU_ALLOCATOR_SLACK = 0.2
SHARD = 5 * GB  # the largest checkpoint shard a loader holds on the host at once (hub checkpoints ship <= 5 GB shards)
# Bytes per token held, both orders (measured here with tracemalloc; tests/test_models_train.py):
# a training fold keeps flat int32 arrays (9.3); a scoring block is tokenized into Python lists (106).
FOLD_TOKEN_BYTES = 10
BLOCK_TOKEN_BYTES = 106
CHARS_PER_TOKEN = 4.0  # to turn a battle's text bytes into tokens, before a tokenizer has seen it
DEFAULT_ROWS = 100_000  # battles assumed where the inputs cannot be read
DEFAULT_ROW_BYTES = 8_000  # text bytes per battle assumed where the inputs cannot be read


@dataclass
class Process:
    """One kind of process a stage starts, ``count`` of them at once."""

    stage: str
    kind: str  # training worker, scoring actor, merge task, driver
    count: int
    gpus_each: float
    gpu_gb: float  # accelerator memory per process (0: none)
    host_gib: float  # host memory per process
    disk_gb: float  # local disk per node the process runs on (model cache, staging)
    accelerator: str | None = None  # the accelerator type the config asks for
    detail: dict = field(default_factory=dict)  # the terms, in GB, that the totals add up
    node_type: str | None = None  # the smallest node type that holds it (filled by check)


@dataclass(frozen=True)
class DataSize:
    battles: int
    text_bytes_per_battle: float
    assumed: bool  # the inputs could not be read: the figures are the defaults above


def data_size(config: Config) -> DataSize:
    """Battles and text bytes per battle of the training inputs, from Parquet footers only."""
    import pyarrow.parquet as pq

    from prefscale.data.schema import TEXT_COLUMNS
    from prefscale.io import resolve

    rows = text = 0
    try:
        for uri in config.data.train:
            fs, path = resolve(uri)
            with fs.open_input_file(path) as handle:
                meta = pq.ParquetFile(handle).metadata
            rows += meta.num_rows
            names = [meta.schema.column(i).path.split(".")[0] for i in range(meta.num_columns)]
            text += sum(meta.row_group(g).column(i).total_uncompressed_size for g in range(meta.num_row_groups)
                        for i, name in enumerate(names) if name in TEXT_COLUMNS)
    except Exception:  # noqa: BLE001 - CSV/JSON inputs, unreadable paths: plan with the stated defaults
        return DataSize(DEFAULT_ROWS, DEFAULT_ROW_BYTES, assumed=True)
    return DataSize(rows, text / max(rows, 1), assumed=False)


def _gb(value: float) -> float:
    return round(value / GB, 2)


def _gib(value: float) -> float:
    return round(value / GIB, 2)


def _mean_tokens(data: DataSize, max_length: int) -> float:
    return min(max_length, data.text_bytes_per_battle / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class TrainedRun:
    """What sizing a train run needs, whichever config (this one, an earlier one, a scoring record) trained it."""

    name: str
    run: TrainRunConfig
    model: ModelConfig
    length: int  # tokens per battle


def trained_run(config: Config, name: str) -> TrainedRun:
    from prefscale.score.scoring_model import text_for, train_run_model_config

    return TrainedRun(name, config.train[name], train_run_model_config(config, name), text_for(config, config.train[name].max_length).max_length)


def run_size(trained: TrainedRun, max_tokens: int) -> ModelSize:
    """A train run's model as its workers train it and its fold adapters score (``max_tokens`` per scoring batch)."""
    run, base, length = trained.run, trained.model, trained.length
    return size_model(base.path, base.precision, run.lora, run.batch_size, length, run.gradient_checkpointing,
                      _score_batch(max_tokens, length), length, base.trust_remote_code)


def _score_batch(max_tokens: int, length: int) -> int:
    """Rows of a full scoring batch: the token budget filled with battles of ``length`` tokens."""
    return max(max_tokens // length, 1)


def training_worker(config: Config, name: str, data: DataSize) -> Process:
    trained = trained_run(config, name)
    run, base, length = trained.run, trained.model, trained.length
    size = run_size(trained, config.score.max_tokens)
    terms = {"weights": size.weight_bytes(base.precision, training=True), "adapters": size.trainable * ADAPTER_BYTES if run.lora.r else 0,
             "adamw": size.trainable * 8, "ddp_buckets": size.trainable * 4 if run.workers > 1 else 0,
             "activations_and_grads": size.train_peak}
    rows = data.battles * (config.data.folds - 1) / config.data.folds
    rows = min(rows, run.max_rows) if run.max_rows else rows
    host_terms = {"runtime": GPU_RUNTIME if run.use_gpu else CPU_RUNTIME, "loading": min(SHARD, size.parameters * size.stored_bytes),
                  "token_ids": rows * _mean_tokens(data, length) * FOLD_TOKEN_BYTES, "fold_texts": rows * data.text_bytes_per_battle}
    return _process(f"train:{name}", "training worker", run.workers, 1 if run.use_gpu else 0, terms, host_terms,
                    disk=size.parameters * size.stored_bytes + size.trainable * (ADAPTER_BYTES + 8 + ADAPTER_BYTES),
                    accelerator=run.accelerator_type if run.use_gpu else None)


def scoring_actor(config: Config, stage: str, size: ModelSize, precision: str, adapters: int, length: int, data: DataSize) -> Process:
    """An actor holding the base at ``precision`` and ``adapters`` LoRA adapters over it (0: a plain model)."""
    settings = config.score
    gpus = settings.gpus_per_actor
    # Adapters over a quantized base are scored as they were trained: the unquantized rest in fp32.
    terms = {"weights": size.weight_bytes(precision, training=bool(adapters)), "adapters": adapters * size.trainable * ADAPTER_BYTES,
             "activations": size.score_peak}
    host_terms = {"runtime": GPU_RUNTIME if gpus else CPU_RUNTIME, "loading": min(SHARD, size.parameters * size.stored_bytes),
                  "block": settings.block_rows * _mean_tokens(data, length) * BLOCK_TOKEN_BYTES}
    return _process(stage, "scoring actor", settings.actors, gpus, terms, host_terms, disk=size.parameters * size.stored_bytes,
                    accelerator=settings.accelerator_type if gpus else None)


def merge_task(config: Config, name: str) -> Process:
    from prefscale.models.averaging import MAX_SHARD, saved_dtype

    trained = trained_run(config, name)
    run, size = trained.run, run_size(trained, config.score.max_tokens)
    output = size.parameters * saved_dtype(trained.model.precision).itemsize
    folds = len(run.folds or range(config.data.folds))
    host_terms = {"runtime": CPU_RUNTIME, "largest_weight_x3": 3 * size.largest_linear * 4, "output_shard": min(MAX_SHARD, output),
                  "adapters_mapped": folds * size.trainable * ADAPTER_BYTES}
    return _process(f"train:{name}", "merge task", 1, 0, {}, host_terms, disk=size.parameters * size.stored_bytes + output,
                    accelerator=run.accelerator_type if run.use_gpu else None)


def driver(config: Config, data: DataSize) -> Process:
    return _process("all", "driver", 1, 0, {}, {"runtime": CPU_RUNTIME, "battles_table": 1.5 * data.battles * data.text_bytes_per_battle}, disk=0)


def _process(stage: str, kind: str, count: int, gpus: float, device: dict[str, float], host: dict[str, float], disk: float,
             accelerator: str | None = None) -> Process:
    on_host = not gpus  # a CPU process holds its "device" memory on the host
    traced = sum(v for k, v in device.items() if k.startswith("activations"))
    if traced:
        device = {**device, "allocator_slack": traced * (CPU_ALLOCATOR_SLACK if on_host else GPU_ALLOCATOR_SLACK)}
    device_total = sum(device.values()) + (CUDA_CONTEXT if gpus else 0)
    host_total = sum(host.values()) + (sum(device.values()) if on_host else 0)
    detail = {k: _gb(v) for k, v in {**device, **host}.items()}
    if gpus:
        detail["cuda_context"] = _gb(CUDA_CONTEXT)
    return Process(stage, kind, count, gpus, _gb(device_total) if gpus else 0.0, _gib(host_total), _gb(disk), accelerator, detail)


def _trained_scoring(config: Config, stage: str, trained: TrainedRun, folds: int, data: DataSize) -> Process:
    """A train run's fold adapters as one pass of ``config`` scores them (all folds in one actor when packed)."""
    adapters = (folds if config.score.pack_models else 1) if trained.run.lora.r else 0
    return scoring_actor(config, stage, run_size(trained, config.score.max_tokens), trained.model.precision, adapters, trained.length, data)


def plan(config: Config, earlier: dict[str, TrainedRun] | None = None) -> list[Process]:
    """Every process kind of the recipe, stage by stage (sizes only: nothing is loaded). ``earlier``:
    train runs of configs before this one on the run directory (a student's teachers)."""
    from prefscale.layout import RunLayout
    from prefscale.score.scoring_model import text_for

    data = data_size(config)
    folds = config.data.folds
    processes = [driver(config, data)]
    for name in config.train_order():
        run = config.train[name]
        processes.append(training_worker(config, name, data))
        processes.append(_trained_scoring(config, f"train:{name}", trained_run(config, name), len(run.folds or range(folds)), data))
        if run.average != "none":
            processes.append(merge_task(config, name))
    if config.data.unlabeled and config.train:
        known = {**(earlier or {}), **{n: trained_run(config, n) for n in config.train}}
        for scorer in config.pseudolabel_scorers():
            if scorer in known:
                processes.append(_trained_scoring(config, "pseudolabel", known[scorer], folds, data))
    layout = RunLayout(config.run_dir)
    averaged = {layout.averaged(n): n for n in config.train}
    for model in config.score.models:
        base = model.path
        if model.path in averaged:  # made by the run: planned as the run's base, merged
            run_model = config.train[averaged[model.path]].model or config.model
            base = run_model.path
        length = text_for(config, model.max_length).max_length
        size = size_model(base, model.precision, LoraConfig(r=0), 0, 0, False, _score_batch(config.score.max_tokens, length), length,
                          model.trust_remote_code)
        processes.append(scoring_actor(config, "score", size, model.precision, 0, length, data))
    return processes


def _holders(process: Process, nodes: list[NodeType]) -> list[NodeType]:
    """Node types that offer what the process asks for (a GPU of the asked type; the driver: the head)."""
    if process.kind == "driver":
        return [n for n in nodes if n.head] or nodes
    if process.gpus_each:
        return [n for n in nodes if n.gpus and (process.accelerator is None or n.accelerator == process.accelerator)]
    if process.accelerator:  # a merge task goes beside the run's workers, where the base is cached
        return [n for n in nodes if n.accelerator == process.accelerator]
    return nodes


def _fits(process: Process, node: NodeType) -> bool:
    per_node = max(1, min(process.count, int(node.gpus // process.gpus_each))) if process.gpus_each else 1
    return process.gpu_gb <= node.gpu_gb * (1 if process.gpus_each >= 1 else process.gpus_each) + 1e-9 \
        and process.host_gib * per_node <= node.memory_gib


def check(processes: list[Process], nodes: list[NodeType], where: str) -> list[str]:
    """One line per process no node type can hold; fills each process's node_type."""
    problems = []
    for process in processes:
        holders = _holders(process, nodes)
        fitting = sorted((n for n in holders if _fits(process, n)), key=lambda n: (n.gpu_gb, n.memory_gib))
        too_small = [n for n in holders if n not in fitting]
        if fitting and too_small and process.gpus_each and not process.accelerator:
            # Ray may place it on any node with a GPU: every one of them must hold it, or the type must be named.
            process.node_type = fitting[0].name
            setting = "score.accelerator_type" if process.kind == "scoring actor" else f"train.{process.stage.split(':', 1)[-1]}.accelerator_type"
            problems.append(f"{process.stage}: a {process.kind} needs {process.gpu_gb:g} GB of GPU memory and may land on "
                            f"{', '.join(n.describe() for n in too_small)}, which cannot hold it; set {setting} to "
                            f"{' or '.join(sorted({n.accelerator for n in fitting if n.accelerator}))} (or drop that node type)")
            continue
        if fitting:
            process.node_type = fitting[0].name
            continue
        need = f"{process.gpu_gb:g} GB of GPU memory and {process.host_gib:g} GiB of host memory" if process.gpus_each else \
            f"{process.host_gib:g} GiB of host memory"
        if not holders:
            asked = f"a {process.accelerator} GPU" if process.accelerator else ("a GPU" if process.gpus_each else "a head node")
            problems.append(f"{process.stage}: a {process.kind} needs {need} on {asked}, but {where} has no such node type; add one")
            continue
        largest = max(holders, key=lambda n: (n.gpu_gb, n.memory_gib))
        problems.append(f"{process.stage}: a {process.kind} needs {need}, but the largest node type of {where} that can run it is "
                        f"{largest.describe()}; use a larger node type (or a lower precision, batch or token budget)")
    return problems


def as_json(processes: list[Process]) -> list[dict]:
    return [asdict(p) for p in processes]


def plan_table(processes: list[dict]) -> str:
    """The plan for people: one aligned line per process."""
    header = ("stage", "process", "count", "GPU GB", "host GiB", "disk GB", "node type")
    rows = [header] + [(p["stage"], p["kind"], str(p["count"]), f"{p['gpu_gb']:g}" if p["gpus_each"] else "-", f"{p['host_gib']:g}",
                        f"{p['disk_gb']:g}", p["node_type"] or "NONE FITS") for p in processes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
