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
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
from pydantic import BaseModel, ConfigDict

from prefscale.config import ModelConfig, TextConfig, TrainRunConfig
from prefscale.data.schema import SWAP_ORDER
from prefscale.memory import peak_rss_bytes
from prefscale.metrics import class_prior

TRAINABLE_FILE = "trainable.safetensors"  # in every checkpoint: the adapters and head, what a restarted worker loads
STATE_FILE = "state.json"  # in every checkpoint: the fold, the position in its data and the metrics so far


def load_trainable(checkpoint_dir: str) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(checkpoint_dir, TRAINABLE_FILE))


def checkpoint_state(checkpoint_dir: str) -> dict:
    """A checkpoint's (or a fold adapter's) fold, data position and metrics (train_rows, samples, loss, resumed_from_step, ...)."""
    from prefscale.io import read_json

    return read_json(f"{checkpoint_dir.rstrip('/')}/{STATE_FILE}")


PROGRESS_EVERY_S = 10.0  # rank 0 prints its step count to stderr this often (Ray forwards it to the driver)


class FoldJob(BaseModel):
    """One fold's training: the run's own config section, plus what the stage resolved for it.

    Crosses the Ray boundary as ``model_dump()`` and comes back with ``model_validate``, so
    every default lives once, in the config.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: TrainRunConfig
    model: ModelConfig  # run.model or the config's top-level model
    text: TextConfig  # the config's text section with run.max_length applied
    battles: str  # absolute path of the battles with their fold column
    fold: int | None = None  # None: train on every battle (benchmarks)
    teachers: list[str] = []  # OOF paths of run.distill.teachers, in order
    extra_train: list[str] = []  # absolute paths of run.extra_train
    eval_rows: int = 0  # > 0: log loss on this many held-out-fold battles at every checkpoint (Ray Tune's metric)
    rehearse_gpus: bool = False  # ray.rehearse_gpus: placed on GPUs, computed on the CPU where no CUDA device is visible

    @property
    def seed(self) -> int:
        return self.run.seed + (self.fold or 0)

    def loss_weights(self):
        from prefscale.train.losses import LossWeights

        distill = self.run.distill
        if distill is None:
            return LossWeights(1.0, (), 1.0, 0.0)
        return LossWeights(distill.ce_weight, tuple(distill.weights or [1.0] * len(distill.teachers)), distill.temperature, distill.cosine_weight)


def _batches(rows, job: FoldJob, epoch: int, world: int, rank: int):
    """This rank's batches for an epoch: a seeded shuffle, sharded, then per-row random swaps."""
    rng = np.random.default_rng(job.seed * 1000 + epoch)
    order = rng.permutation(len(rows))[rank::world]
    swaps = rng.random(len(rows)) < job.run.swap_prob
    batch_size = job.run.batch_size
    full_batches = max(len(order) // batch_size, 1)  # the ragged tail waits for the next epoch
    for start in range(0, full_batches * batch_size, batch_size):
        index = order[start : start + batch_size]
        yield index, swaps[index]


def heldout_log_loss(model, rows, pad: int, device, job: FoldJob) -> float:
    """Log loss of the live model on held-out rows; leaves it in training mode.

    A quantized model on CPU is evaluated with autograd on: bitsandbytes repacks 4-bit weights
    on a CPU no-grad forward, after which training silently gets zero gradients.
    """
    import torch

    from prefscale.batching import pad_batch
    from prefscale.metrics import log_loss

    quantized_on_cpu = job.model.precision in ("int8", "nf4") and device.type == "cpu"
    batch_size = job.run.batch_size
    model.eval()
    probs = []
    with torch.set_grad_enabled(quantized_on_cpu):
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_batch(rows.input_ids[start : start + batch_size], pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            probs.append(torch.softmax(logits, -1).detach().cpu().numpy())
    model.train()
    return log_loss(rows.labels, np.concatenate(probs), rows.ties)


def swap_balanced_prior(labels: np.ndarray, ties: np.ndarray, swap_prob: float) -> np.ndarray:
    """The class balance training actually sees (under each row's protocol): a swapped row's A and B labels trade places."""
    mean = class_prior(labels, ties)
    return (1 - swap_prob) * mean + swap_prob * mean[SWAP_ORDER]


def steps_per_epoch(rows: int, batch_size: int, world: int) -> int:
    per_rank = rows // world
    return max(per_rank // batch_size, 1)


def run_training(job: FoldJob, *, rank: int = 0, world: int = 1, device=None, wrap: Callable | None = None,
                 restore: str | None = None, report: Callable[[dict, str | None], None] | None = None) -> dict[str, Any]:
    """One fold's loop on ``device`` (default: the GPU the run asked for, else the CPU)."""
    import torch
    from safetensors.torch import save_file
    from transformers import get_scheduler

    from prefscale.batching import pad_batch
    from prefscale.devices import torch_device
    from prefscale.models.loading import load_tokenizer
    from prefscale.models.lora import (
        build_trainable,
        load_trainable_state,
        save_adapter,
        trainable_state,
        unwrap_ddp,
    )
    from prefscale.text.formatter import BattleFormatter
    from prefscale.train.data import build_rows, select_heldout, select_rows
    from prefscale.train.losses import distillation_loss

    run, model_config = job.run, job.model
    rss_at_start = psutil.Process().memory_info().rss
    torch.manual_seed(job.seed)
    device = device or torch_device(run.use_gpu, "a training worker (use_gpu: true)", rehearse=job.rehearse_gpus)
    tokenizer = load_tokenizer(model_config.path, model_config.trust_remote_code)
    formatter = BattleFormatter(tokenizer, job.text)
    rows = build_rows(select_rows(job.battles, job.fold, job.extra_train, run.max_rows, job.seed), formatter, job.teachers)

    heldout = None
    if job.eval_rows and job.fold is not None:
        heldout = build_rows(select_heldout(job.battles, job.fold, job.eval_rows, job.seed), formatter, [])

    model = build_trainable(model_config.path, model_config.precision, run.lora, model_config.trust_remote_code,
                            device_map={"": device.index if device.type == "cuda" else "cpu"}, gradient_checkpointing=run.gradient_checkpointing,
                            class_prior=swap_balanced_prior(rows.labels, rows.ties, run.swap_prob) if run.head_init == "prior" else None)
    if model_config.precision in ("fp32", "bf16", "fp16"):
        model.to(device)
    model = wrap(model) if wrap else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=run.lr, weight_decay=run.weight_decay)
    per_epoch = steps_per_epoch(len(rows), run.batch_size, world)
    total_micro = int(np.ceil(run.epochs * per_epoch))
    total_steps = max(total_micro // run.grad_accum, 1)
    scheduler = get_scheduler(run.schedule, optimizer, num_warmup_steps=int(run.warmup_ratio * total_steps), num_training_steps=total_steps)
    weights = job.loss_weights()

    # fp16 compute needs loss scaling, or small gradients underflow to zero; bf16 has fp32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=run.autocast == "fp16")
    micro = 0
    if restore:
        load_trainable_state(model, load_trainable(restore))
        optimizer.load_state_dict(torch.load(os.path.join(restore, "optimizer.pt"), weights_only=True))
        scheduler.load_state_dict(torch.load(os.path.join(restore, "scheduler.pt"), weights_only=True))
        if scaler.is_enabled() and os.path.exists(os.path.join(restore, SCALER_FILE)):
            scaler.load_state_dict(torch.load(os.path.join(restore, SCALER_FILE), weights_only=True))
        micro = checkpoint_state(restore)["micro_step"]
    resumed_from_step = micro // run.grad_accum  # > 0: a restarted worker went on from its checkpoint

    pad = tokenizer.pad_token_id
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.autocast)
    model.train()
    started, seen, losses = time.perf_counter(), 0, []

    def save_and_report(metrics: dict) -> None:
        directory = None
        if heldout is not None and rank == 0:
            metrics["heldout_log_loss"] = heldout_log_loss(unwrap_ddp(model), heldout, pad, device, job)
        if rank == 0:
            directory = tempfile.mkdtemp(prefix="prefscale-ckpt-")
            save_file(trainable_state(model), os.path.join(directory, TRAINABLE_FILE))
            torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
            torch.save(scheduler.state_dict(), os.path.join(directory, "scheduler.pt"))
            if scaler.is_enabled():
                torch.save(scaler.state_dict(), os.path.join(directory, SCALER_FILE))
            with open(os.path.join(directory, STATE_FILE), "w") as handle:
                json.dump({"micro_step": micro, "fold": job.fold, **metrics}, handle)
            if metrics.get("done"):  # the fold's result: peft's adapter files, scored over the base as trained
                save_adapter(model, directory, tokenizer_from=model_config.path)
        try:
            if report:
                report(metrics, directory)  # Ray Train persists the checkpoint inside report()
        finally:
            if directory:
                shutil.rmtree(directory, ignore_errors=True)  # adapters + optimizer state: gigabytes each for a 70B run

    noted = time.perf_counter()
    while micro < total_micro:
        epoch, offset = divmod(micro, per_epoch)
        for step_in_epoch, (index, swap) in enumerate(_batches(rows, job, epoch, world, rank)):
            if step_in_epoch < offset:
                continue
            if micro >= total_micro or step_in_epoch >= per_epoch:
                break
            sequences = [rows.swapped_ids[i] if s else rows.input_ids[i] for i, s in zip(index, swap, strict=True)]
            ids, mask = pad_batch(sequences, pad)
            flip = lambda a: np.where(swap[:, None], a[index][:, SWAP_ORDER], a[index])
            labels = torch.tensor(flip(rows.labels), device=device)
            teachers = [torch.tensor(flip(t), device=device) for t in rows.teachers]
            steps_now = (micro + 1) % run.grad_accum == 0 or micro + 1 == total_micro
            # DDP all-reduces gradients in backward; between optimizer steps they only accumulate locally.
            synced = contextlib.nullcontext() if steps_now or not hasattr(model, "no_sync") else model.no_sync()
            with synced:
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    # use_cache=False: a classifier's forward builds no KV cache
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
                loss = distillation_loss(logits, labels, teachers, weights, torch.tensor(rows.ties[index], device=device))
                scaler.scale(loss / run.grad_accum).backward()
            losses.append(float(loss.detach()))
            seen += len(sequences)
            micro += 1
            if steps_now:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step = micro // run.grad_accum
                if rank == 0 and (time.perf_counter() - noted >= PROGRESS_EVERY_S or micro == total_micro):
                    noted = time.perf_counter()
                    fold = "all battles" if job.fold is None else f"fold {job.fold}"
                    print(f"train {fold}: step {step}/{total_steps}, loss {np.mean(losses[-20:]):.4f}", file=sys.stderr, flush=True)
                if step % run.checkpoint_every == 0 and micro < total_micro:
                    save_and_report({"step": step, "loss": float(np.mean(losses[-20:]))})
    seconds = time.perf_counter() - started
    metrics = {"step": total_steps, "loss": float(np.mean(losses[-20:])) if losses else None, "samples": seen, "train_rows": len(rows),
               "samples_per_s": seen / seconds if seconds else None, "resumed_from_step": resumed_from_step, "done": True,
               "peak_rss_gib": round(peak_rss_bytes() / 2**30, 3), "rss_at_start_gib": round(rss_at_start / 2**30, 3),
               "attention": attention_implementation(unwrap_ddp(model))}
    save_and_report(metrics)
    return metrics


SCALER_FILE = "scaler.pt"  # fp16 autocast's loss-scaler state
RESUME_ONLY = {TRAINABLE_FILE, "optimizer.pt", "scheduler.pt", SCALER_FILE}  # what only a restarted worker needs


def keep_adapter(checkpoint_dir: str, adapter_dir: str) -> None:
    """A finished fold's adapter files and metrics, copied atomically to where scoring and averaging read them."""
    from prefscale.io import atomic_dir

    with atomic_dir(adapter_dir) as staged:
        for name in os.listdir(checkpoint_dir):
            if name not in RESUME_ONLY and os.path.isfile(os.path.join(checkpoint_dir, name)):
                shutil.copy(os.path.join(checkpoint_dir, name), os.path.join(staged, name))


def release_memory() -> None:
    """Free what a finished fold left: Python garbage, the CUDA cache, and the heap pages glibc keeps."""
    import ctypes
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def attention_implementation(model) -> str | None:
    """The attention kernel the model runs (sdpa, flash_attention_2, eager), as its config records it."""
    config = getattr(model, "config", None) or getattr(getattr(model, "base_model", None), "config", None)
    return getattr(config, "_attn_implementation", None)


def worker_device(job: FoldJob):
    """The device Ray Train gave this worker (its GPU, whatever index CUDA_VISIBLE_DEVICES makes it),
    the CPU for CPU runs and rehearsals, or a loud error where a GPU was given and CUDA cannot see it."""
    import torch

    from prefscale.devices import torch_device

    if job.run.use_gpu and torch.cuda.is_available():
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch_device(job.run.use_gpu, "a training worker (use_gpu: true)", rehearse=job.rehearse_gpus)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entrypoint: the folds of ``config["jobs"]`` in turn, on one worker group (one
    start-up per run, not per fold), each bound to the worker's rank, DDP and checkpoints.

    Rank 0 copies each finished fold's tensors to its adapter directory (``config["adapters"]``,
    on storage every node sees). A restarted group skips the folds whose adapter exists and
    resumes the fold its latest checkpoint belongs to.
    """
    import ray.train
    import ray.train.torch

    from prefscale.io import finished
    from prefscale.ray_runtime import quiet_libraries

    quiet_libraries()
    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as restore:
        restored_fold = checkpoint_state(restore).get("fold") if restore else None
        for job_config, adapter in zip(config["jobs"], config["adapters"], strict=True):
            job = FoldJob.model_validate(job_config)
            if finished(adapter):
                continue

            def report(metrics: dict, directory: str | None, adapter: str = adapter) -> None:
                if directory and metrics.get("done"):
                    keep_adapter(directory, adapter)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if directory else None)

            device = worker_device(job)

            def wrap(model, job: FoldJob = job, device=device):
                if ctx.get_world_size() == 1:
                    return model
                if device.type == "cpu":  # gloo: a CPU run, or a rehearsal on logical GPUs
                    import torch

                    return torch.nn.parallel.DistributedDataParallel(model)
                # Quantized models were placed with device_map={"": device}; DDP must not move them.
                quantized = job.model.precision in ("int8", "nf4")
                return ray.train.torch.prepare_model(model, move_to_device=not quantized)

            run_training(job, rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=device,
                         wrap=wrap, restore=restore if restored_fold == job.fold else None, report=report)
            release_memory()  # the fold's model, optimizer and batches are garbage now: give them back before the next fold
