import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefscale.cli import _all_subparsers, build_parser, main


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_help_everywhere(capsys):
    parser = build_parser()
    commands = [[]] + [sub.prog.split()[1:] for sub in _all_subparsers(parser)]
    assert ["data", "validate"] in commands and ["run"] in commands
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*command, "--help"])
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_validate_split_stats_on_real_data(tmp_path, capsys, kaggle_sample, human_pairs):
    summaries = []
    for path in (kaggle_sample, human_pairs):
        out, rejects = tmp_path / f"{path.stem}.clean.parquet", tmp_path / f"{path.stem}.rejects.parquet"
        summary = run_json(capsys, "data", "validate", str(path), "--out", str(out), "--rejects", str(rejects))
        assert summary["clean"] + summary["rejected"] == summary["rows"] == pq.read_metadata(path).num_rows
        assert pq.read_metadata(out).num_rows == summary["clean"] and pq.read_metadata(rejects).num_rows == summary["rejected"]
        summaries.append(summary)
    assert summaries[0]["rows"] == 806 and summaries[0]["reasons"] == {"unparseable_json": summaries[0]["rejected"]}
    rejected = pq.read_table(tmp_path / "arena_kaggle_sample.rejects.parquet")
    assert all(rejected.column("text_truncated_512").to_pylist())

    split = run_json(capsys, "data", "split", *(str(tmp_path / f"{p.stem}.clean.parquet") for p in (kaggle_sample, human_pairs)),
                     "--out", str(tmp_path / "battles.parquet"), "--folds", "4")
    assert split["kept"] + split["duplicates"] == sum(s["clean"] for s in summaries)
    assert len(split["fold_sizes"]) == 4 and sum(split["fold_sizes"]) == split["kept"]

    stats = run_json(capsys, "data", "stats", str(tmp_path / "battles.parquet"))
    assert stats["labeled"] == split["kept"] and sorted(stats["folds"]) == ["0", "1", "2", "3"]
    assert 0.9 < stats["prior_log_loss"] < 1.0987  # few ties in hh_rlhf pull it below uniform
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_pairs_command(tmp_path, capsys):
    long = tmp_path / "long.parquet"
    pq.write_table(pa.table({"instruction": ["i"] * 5, "generator": list("abcde"), "output": list("vwxyz")}), long)
    summary = run_json(capsys, "data", "pairs", str(long), "--out", str(tmp_path / "p.parquet"), "--swap")
    assert summary["pairs_written"] == 20 == pq.read_metadata(tmp_path / "p.parquet").num_rows


def test_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "missing.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prefscale: error: input not found") and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_console_script_and_config_check():
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "config", "check", "configs/local.yaml", "--json"],
                            capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["valid"] == {"configs/local.yaml": "local"}
