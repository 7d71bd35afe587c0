"""The training loop, run by every Ray Train worker (and, for benchmarks, by a plain process).

One function, ``run_training``, holds the whole loop; ``train_loop_per_worker`` only binds it
to Ray Train (rank, DDP, checkpoint restore and report). Checkpoints hold the trainable
tensors (adapters + head) as safetensors, optimizer and scheduler state (loaded back with
``weights_only=True``) and the position in the data, so a restarted worker resumes exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prefscale.text.formatter import TextOptions


@dataclass
class TrainSettings:
    model_path: str
    train_path: str
    fold: int | None = None
    precision: str = "fp32"
    lora: dict = field(default_factory=lambda: {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"})
    text: dict = field(default_factory=lambda: asdict(TextOptions()))
    trust_remote_code: bool = False
    extra_train: list[str] = field(default_factory=list)
    teachers: list[str] = field(default_factory=list)
    teacher_weights: list[float] = field(default_factory=list)
    ce_weight: float = 1.0
    temperature: float = 1.0
    cosine_weight: float = 0.0
    epochs: float = 1.0
    lr: float = 2e-4
    weight_decay: float = 0.01
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    schedule: str = "linear"
    swap_prob: float = 0.5
    autocast: str = "none"  # none | bf16 | fp16
    max_rows: int | None = None
    checkpoint_every: int = 50  # optimizer steps
    seed: int = 0
    use_gpu: bool = False
    gradient_checkpointing: bool = False
    fsdp: bool = False
    head_init: str = "prior"  # prior: the head starts at the training labels' class balance | random
    eval_rows: int = 0  # > 0: log loss on this many held-out-fold battles at every checkpoint (Ray Tune's metric)


def _batches(rows, settings: TrainSettings, epoch: int, world: int, rank: int):
    """This rank's batches for an epoch: a seeded shuffle, sharded, then per-row random swaps."""
    rng = np.random.default_rng(settings.seed * 1000 + epoch)
    order = rng.permutation(len(rows))[rank::world]
    swaps = rng.random(len(rows)) < settings.swap_prob
    full_batches = max(len(order) // settings.batch_size, 1)  # the ragged tail waits for the next epoch
    for start in range(0, full_batches * settings.batch_size, settings.batch_size):
        index = order[start : start + settings.batch_size]
        yield index, swaps[index]


def heldout_log_loss(model, rows, pad: int, device, settings: TrainSettings) -> float:
    """Log loss of the live model on held-out rows; leaves it in training mode.

    A quantized model on CPU is evaluated with autograd on: bitsandbytes repacks 4-bit weights
    on a CPU no-grad forward, after which training silently gets zero gradients.
    """
    import torch

    from prefscale.metrics import log_loss
    from prefscale.score.batching import pad_batch

    quantized_on_cpu = settings.precision in ("int8", "nf4") and device.type == "cpu"
    model.eval()
    probs = []
    with torch.set_grad_enabled(quantized_on_cpu):
        for start in range(0, len(rows), settings.batch_size):
            ids, mask = pad_batch(rows.input_ids[start : start + settings.batch_size], pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            probs.append(torch.softmax(logits, -1).detach().cpu().numpy())
    model.train()
    return log_loss(rows.labels, np.concatenate(probs))


def swap_balanced_prior(labels: np.ndarray, swap_prob: float) -> np.ndarray:
    """The class balance training actually sees: a swapped row's A and B labels trade places."""
    from prefscale.text.swap import SWAP_ORDER

    mean = labels.mean(axis=0)
    return (1 - swap_prob) * mean + swap_prob * mean[SWAP_ORDER]


def steps_per_epoch(rows: int, settings: TrainSettings, world: int) -> int:
    per_rank = rows // world
    return max(per_rank // settings.batch_size, 1)


def run_training(settings: TrainSettings, *, rank: int = 0, world: int = 1, local_rank: int = 0, wrap: Callable | None = None,
                 restore: str | None = None, report: Callable[[dict, str | None], None] | None = None) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import get_scheduler

    from prefscale.models.loading import load_tokenizer
    from prefscale.models.lora import LoraSettings, build_trainable, load_trainable_state, trainable_state, unwrap_ddp
    from prefscale.score.batching import pad_batch
    from prefscale.text.formatter import BattleFormatter
    from prefscale.text.swap import SWAP_ORDER
    from prefscale.train.data import build_rows, select_heldout, select_rows
    from prefscale.train.losses import LossWeights, distillation_loss

    torch.manual_seed(settings.seed)
    device = torch.device(f"cuda:{local_rank}" if settings.use_gpu and torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(settings.model_path, settings.trust_remote_code)
    formatter = BattleFormatter(tokenizer, TextOptions(**{**settings.text, "weights": tuple(settings.text.get("weights", (1, 1, 1)))}))
    rows = build_rows(select_rows(settings.train_path, settings.fold, settings.extra_train, settings.max_rows, settings.seed), formatter, settings.teachers)

    heldout = None
    if settings.eval_rows and settings.fold is not None:
        heldout = build_rows(select_heldout(settings.train_path, settings.fold, settings.eval_rows, settings.seed), formatter, [])

    model = build_trainable(settings.model_path, settings.precision, LoraSettings(**settings.lora), settings.trust_remote_code,
                            device_map={"": device.index if device.type == "cuda" else "cpu"}, gradient_checkpointing=settings.gradient_checkpointing,
                            fsdp=settings.fsdp, class_prior=swap_balanced_prior(rows.labels, settings.swap_prob) if settings.head_init == "prior" else None)
    if settings.precision in ("fp32", "bf16", "fp16"):
        model.to(device)
    model = wrap(model) if wrap else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    per_epoch = steps_per_epoch(len(rows), settings, world)
    total_micro = int(np.ceil(settings.epochs * per_epoch))
    total_steps = max(total_micro // settings.grad_accum, 1)
    scheduler = get_scheduler(settings.schedule, optimizer, num_warmup_steps=int(settings.warmup_ratio * total_steps), num_training_steps=total_steps)
    weights = LossWeights(settings.ce_weight, tuple(settings.teacher_weights), settings.temperature, settings.cosine_weight)

    micro = 0
    if restore:
        load_trainable_state(model, load_file(os.path.join(restore, "trainable.safetensors")))
        optimizer.load_state_dict(torch.load(os.path.join(restore, "optimizer.pt"), weights_only=True))
        scheduler.load_state_dict(torch.load(os.path.join(restore, "scheduler.pt"), weights_only=True))
        micro = json.load(open(os.path.join(restore, "state.json")))["micro_step"]

    pad = tokenizer.pad_token_id
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.autocast)
    model.train()
    started, seen, losses = time.perf_counter(), 0, []

    def save_and_report(metrics: dict) -> None:
        directory = None
        if heldout is not None and rank == 0:
            metrics["heldout_log_loss"] = heldout_log_loss(unwrap_ddp(model), heldout, pad, device, settings)
        if rank == 0:
            directory = tempfile.mkdtemp(prefix="prefscale-ckpt-")
            save_file(trainable_state(model), os.path.join(directory, "trainable.safetensors"))
            torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
            torch.save(scheduler.state_dict(), os.path.join(directory, "scheduler.pt"))
            with open(os.path.join(directory, "state.json"), "w") as handle:
                json.dump({"micro_step": micro, **metrics}, handle)
        if report:
            report(metrics, directory)

    while micro < total_micro:
        epoch, offset = divmod(micro, per_epoch)
        for step_in_epoch, (index, swap) in enumerate(_batches(rows, settings, epoch, world, rank)):
            if step_in_epoch < offset:
                continue
            if micro >= total_micro or step_in_epoch >= per_epoch:
                break
            sequences = [rows.swapped_ids[i] if s else rows.input_ids[i] for i, s in zip(index, swap, strict=True)]
            ids, mask = pad_batch(sequences, pad)
            flip = lambda a: np.where(swap[:, None], a[index][:, SWAP_ORDER], a[index])
            labels = torch.tensor(flip(rows.labels), device=device)
            teachers = [torch.tensor(flip(t), device=device) for t in rows.teachers]
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            loss = distillation_loss(logits, labels, teachers, weights)
            (loss / settings.grad_accum).backward()
            losses.append(float(loss.detach()))
            seen += len(sequences)
            micro += 1
            if micro % settings.grad_accum == 0 or micro == total_micro:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step = micro // settings.grad_accum
                if step % settings.checkpoint_every == 0 and micro < total_micro:
                    save_and_report({"step": step, "loss": float(np.mean(losses[-20:]))})
    seconds = time.perf_counter() - started
    metrics = {"step": total_steps, "loss": float(np.mean(losses[-20:])) if losses else None, "samples": seen, "train_rows": len(rows),
               "samples_per_s": seen / seconds if seconds else None, "done": True}
    save_and_report(metrics)
    return metrics


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entrypoint: binds run_training to the worker's rank, DDP and checkpoints."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    settings = TrainSettings(**config)
    checkpoint = ray.train.get_checkpoint()

    def report(metrics: dict, directory: str | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if directory else None)

    def wrap(model):
        if ctx.get_world_size() == 1:
            return model
        if settings.fsdp:
            return ray.train.torch.prepare_model(model, parallel_strategy="fsdp", parallel_strategy_kwargs={"use_orig_params": True})
        # Quantized models were placed with device_map={"": local_rank}; DDP must not move them.
        quantized = settings.precision in ("int8", "nf4")
        return ray.train.torch.prepare_model(model, move_to_device=not quantized)

    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as restore:
        run_training(settings, rank=ctx.get_world_rank(), world=ctx.get_world_size(), local_rank=ctx.get_local_rank(),
                     wrap=wrap, restore=restore, report=report)

