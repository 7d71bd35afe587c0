"""Bad input everywhere: one line naming the problem and the fix, a non-zero exit, no partial output."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from prefscale.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def leftovers(directory):
    return [p for p in os.listdir(directory) if ".tmp-" in p]


def write_config(tmp_path, **sections):
    config = {"name": "bad", "output_dir": str(tmp_path / "run"), "data": {"train": [str(tmp_path / "x.parquet")]}, **sections}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return str(tmp_path / "c.yaml")


def test_unknown_config_key(tmp_path, capsys):
    path = write_config(tmp_path, scroe={"rows": 1})
    code, err = run(capsys, "score", "--config", path)
    assert code == 2 and "unknown key 'scroe'" in err and path in err


def test_missing_input_file(tmp_path, capsys):
    code, err = run(capsys, "data", "validate", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "o.parquet"))
    assert code == 2 and "input not found" in err
    assert not os.path.exists(tmp_path / "o.parquet")


def test_unreadable_parquet(tmp_path, capsys):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")
    code, err = run(capsys, "data", "validate", str(tmp_path / "broken.parquet"), "--out", str(tmp_path / "o.parquet"))
    assert code == 2 and "cannot read" in err and not leftovers(tmp_path)


def test_wrong_schema(tmp_path, capsys):
    pq.write_table(pa.table({"id": [1], "question": ["q"]}), tmp_path / "wrong.parquet")
    code, err = run(capsys, "data", "validate", str(tmp_path / "wrong.parquet"), "--out", str(tmp_path / "o.parquet"))
    assert code == 2 and "lacks column(s) prompt, response_a, response_b" in err and not os.path.exists(tmp_path / "o.parquet")


def test_model_path_without_weights(tmp_path, capsys, battles_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    from prefscale.errors import PrefscaleError
    from prefscale.models.loading import resolve_model_path

    with pytest.raises(PrefscaleError, match="no .safetensors weights"):
        resolve_model_path(str(tmp_path / "model"))
    with pytest.raises(PrefscaleError, match="model directory not found"):
        resolve_model_path(str(tmp_path / "missing"))


def test_gpu_recipe_on_a_cluster_without_gpus(tmp_path, capsys, ray_local, battles_path, tiny_bert_path):
    """`prefscale train` on raw data first validates and splits it, then refuses the GPU run."""
    pq.write_table(pq.read_table(battles_path).slice(0, 16), tmp_path / "x.parquet")
    path = write_config(tmp_path, model={"path": tiny_bert_path}, train={"big": {"use_gpu": True, "folds": [0]}})
    code, err = run(capsys, "train", "--config", path)
    assert code == 2 and "train.big's 1 workers need 1 CPU, 1 GPU but this local Ray has 2 CPU, 0 GPU" in err, err
    assert pq.read_table(tmp_path / "run" / "battles.parquet").num_rows == 16  # the data stages ran
    assert not os.path.exists(tmp_path / "run" / "oof")


def test_unreachable_cluster_address(tmp_path, capsys):
    import subprocess
    import sys

    path = write_config(tmp_path, ray={"address": "127.0.0.1:1"})
    pq.write_table(pa.table({"id": [1], "prompt": ['["q"]'], "response_a": ['["a"]'], "response_b": ['["b"]']}), tmp_path / "b.parquet")
    result = subprocess.run([sys.executable, "-m", "prefscale.cli", "score", "--config", path, "--input", str(tmp_path / "b.parquet")],
                            capture_output=True, text=True, timeout=180, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 2
    assert "cannot reach Ray at 127.0.0.1:1" in result.stderr.strip().splitlines()[-1]


def test_predict_from_a_directory_that_is_not_a_finished_run(tmp_path, capsys):
    code, err = run(capsys, "predict", "--run-dir", str(tmp_path), "--input", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "s.csv"))
    assert code == 2 and "not a finished run" in err and "prefscale run" in err and not os.path.exists(tmp_path / "s.csv")


def test_stack_member_without_oof_logits(tmp_path, capsys, battles_path):
    os.makedirs(tmp_path / "run")
    pq.write_table(pq.read_table(battles_path).slice(0, 50), tmp_path / "run" / "battles.parquet")
    path = write_config(tmp_path, members={"features": {"kind": "features"}}, stack={"members": ["features"]}, ray={"num_cpus": 1})
    code, err = run(capsys, "stack", "--config", path)
    assert code == 2 and "has no OOF logits" in err and "train it first" in err and not os.path.exists(tmp_path / "run" / "stack")


def test_stack_naming_an_unknown_member(tmp_path, capsys):
    path = write_config(tmp_path, members={"features": {"kind": "features"}}, stack={"members": ["featurs"]})
    code, err = run(capsys, "stack", "--config", path)
    assert code == 2 and "featurs" in err and "neither members nor train runs" in err


def test_validate_never_writes_into_or_over_its_input(tmp_path, capsys, monkeypatch, kaggle_sample):
    data = tmp_path / "data"
    data.mkdir()
    source = data / "battles.parquet"
    source.write_bytes(kaggle_sample.read_bytes())
    before = source.read_bytes()
    code, err = run(capsys, "data", "validate", str(source), "--out", str(source))
    assert code == 2 and "is an input of this command" in err and source.read_bytes() == before
    code, err = run(capsys, "data", "split", str(source), "--out", str(source))
    assert code == 2 and "is an input of this command" in err and source.read_bytes() == before
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run(capsys, "data", "validate", str(source))[0] == 0
    assert sorted(os.listdir(data)) == ["battles.parquet"]  # nothing written beside the input
    assert sorted(os.listdir(work)) == ["battles.clean.parquet", "battles.clean.rejects.parquet"]


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, human_pairs):
    """A Parquet file cut short, a CSV with an unclosed quote, a JSON Lines file cut mid-object."""
    folder = tmp_path_factory.mktemp("broken")
    (folder / "cut.parquet").write_bytes(human_pairs.read_bytes()[:3000])
    (folder / "unclosed.csv").write_text('id,prompt,response_a,response_b\n1,"never closed,a,b\n')
    (folder / "cut.jsonl").write_text('{"id": 1, "prompt": "[\\"q\\"]", "response_a": "[\\"a\\"]", "response_b": "[\\"b\\"]"}\n{"id": 2, "pro\n')
    return folder


@pytest.mark.parametrize("name", ["cut.parquet", "unclosed.csv", "cut.jsonl"])
@pytest.mark.parametrize("command", ["data validate", "data stats", "data pairs", "leaderboard"])
def test_a_corrupt_input_is_one_line_naming_it(tmp_path, capsys, broken_files, name, command):
    path = str(broken_files / name)
    argv = {"data validate": ["data", "validate", path, "--out", str(tmp_path / "o.parquet")], "data stats": ["data", "stats", path],
            "data pairs": ["data", "pairs", path, "--out", str(tmp_path / "p.parquet")],
            "leaderboard": ["leaderboard", "--battles", path, "--out", str(tmp_path / "lb")]}[command]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    if code == 0:  # a JSON Lines file cut mid-line: that line is rejected (unparseable_line), the rest read
        assert name == "cut.jsonl" and command in ("data validate", "data stats")
        return
    assert code == 2 and len([line for line in err if line.startswith("prefscale: error:")]) == 1 and "Traceback" not in "\n".join(err)
    assert path in err[-1] or name in err[-1], err[-1]


def test_a_corrupt_input_to_score_and_pseudolabel_is_one_line(tmp_path, broken_files, tiny_bert_path):
    import subprocess
    import sys

    path = write_config(tmp_path, model={"path": tiny_bert_path}, score={"cpus_per_actor": 0.5, "format_cpus": 0.25}, ray={"num_cpus": 2},
                        tracking={"enabled": False})
    cut = str(broken_files / "cut.parquet")
    for argv in (["score", "--config", path, "--input", cut], ["pseudolabel", "--config", path, "--input", cut, "--out", str(tmp_path / "pl.parquet")]):
        result = subprocess.run([sys.executable, "-m", "prefscale.cli", *argv], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert cut in result.stderr.strip().splitlines()[-1]


def test_predict_never_overwrites_its_input_or_a_file_it_did_not_write(tmp_path, capsys):
    source = tmp_path / "battles.csv"
    source.write_text("id,prompt,response_a,response_b\n1,q,a,b\n")
    code, err = run(capsys, "predict", "--run-dir", str(tmp_path), "--input", str(source), "--out", str(source))
    assert code == 2 and "is an input of this command" in err and source.read_text().startswith("id,prompt")
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own,work\n")
    code, err = run(capsys, "predict", "--run-dir", str(tmp_path), "--input", str(source), "--out", str(notes))
    assert code == 2 and "is not a submission predict wrote" in err and "--overwrite" in err and notes.read_text() == "my,own,work\n"


def test_a_battle_to_predict_is_never_rejected_for_its_label_or_length():
    from prefscale.config import ValidationConfig
    from prefscale.data.validate import Rejected, check_row

    long = {"id": 1, "prompt": '["q"]', "response_a": '["' + "a" * 300 + '"]', "response_b": '["b"]'}
    options = ValidationConfig(max_chars=100)
    with pytest.raises(Rejected, match="characters > limit"):
        check_row(long, options)  # training data: rejected (too_long)
    assert "too_long" in check_row(long, options, predicting=True)["flags"]  # to predict: kept, flagged, cut by the token budget
    tie = {"id": 2, "prompt": '["q"]', "response_a": '["a"]', "response_b": '["b"]', "winner_model_a": 0, "winner_model_b": 0,
           "winner_tie": 1, "ties": "none"}
    with pytest.raises(Rejected, match="labeled tie"):
        check_row(tie, ValidationConfig())
    kept = check_row(tie, ValidationConfig(), predicting=True)
    assert kept["winner_tie"] is None and "unscored_label" in kept["flags"]  # predicted by the model; only its score left out
