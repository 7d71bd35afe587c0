"""Pseudolabels made by `prefscale pseudolabel` train a model through `prefscale train` as they are."""

import os

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_commands

from prefscale.data.folds import assign_folds
from prefscale.io import write_table

pytestmark = pytest.mark.slow


def test_pseudolabels_train_without_conversion(tmp_path, alpacaeval, battles_path, tiny_bert_path):
    write_table(assign_folds(pq.read_table(battles_path).slice(0, 48), 2), tmp_path / "run" / "battles.parquet")
    config = {
        "name": "pl", "output_dir": str(tmp_path / "run"), "data": {"train": ["unused"]}, "text": {"max_length": 48},
        "model": {"path": tiny_bert_path},
        "score": {"block_rows": 32, "cpus_per_actor": 0.5, "format_cpus": 0.25, "threads_per_actor": 1},
        "pseudolabel": {"rows": 40, "scorers": ["base"]},
        "train": {"student": {"folds": [0], "batch_size": 8, "checkpoint_every": 100, "tta": False,
                              "extra_train": [str(tmp_path / "run" / "pseudolabels.parquet")]}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    _, made, trained = run_commands([["data", "pairs", str(alpacaeval), "--out", str(tmp_path / "pairs.parquet"), "--max-instructions", "1"],
                                     ["pseudolabel", "--config", str(tmp_path / "c.yaml"), "--input", str(tmp_path / "pairs.parquet")],
                                     ["train", "--config", str(tmp_path / "c.yaml")]],
                                    env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    made = made["stages"]["pseudolabel"]
    assert made["pseudolabeled"] == 40 and made["scoring"]["base"]["scored"] == 40
    fold = trained["stages"]["train:student"]["folds"][0]
    labeled = sum(1 for f in pq.read_table(tmp_path / "run" / "battles.parquet").column("fold").to_pylist() if f != 0)
    assert fold["train_rows"] == labeled + 40  # every pseudolabel trained alongside the labeled folds
