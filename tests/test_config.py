from pathlib import Path

import pytest

from prefscale.config import load_config
from prefscale.errors import PrefscaleError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    assert load_config(path).name


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named_with_the_file(tmp_path):
    path = write(tmp_path, "name: x\ndata:\n  train: [a.parquet]\n  foldz: 3\n")
    with pytest.raises(PrefscaleError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "unknown key 'data.foldz'" in message and "\n" not in message


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(PrefscaleError, match=r"key 'data.folds': Input should be a valid integer"):
        load_config(write(tmp_path, "name: x\ndata:\n  train: [a.parquet]\n  folds: many\n"))


def test_bad_template_and_yaml_and_missing_file(tmp_path):
    with pytest.raises(PrefscaleError, match="text.template"):
        load_config(write(tmp_path, "name: x\ndata: {train: [a]}\ntext: {template: '{prompt} only'}\n"))
    with pytest.raises(PrefscaleError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(PrefscaleError, match="config not found"):
        load_config(tmp_path / "missing.yaml")


def test_train_runs_are_ordered_teachers_first(tmp_path):
    config = load_config(write(tmp_path, "name: x\ndata: {train: [a]}\ntrain:\n  student: {distill: {teachers: [teacher]}}\n  teacher: {}\n"))
    assert config.train_order() == ["teacher", "student"]
    with pytest.raises(PrefscaleError, match="cycle"):  # caught when the config loads, not when training reaches it
        load_config(write(tmp_path, "name: x\ndata: {train: [a]}\ntrain:\n  a: {distill: {teachers: [b]}}\n  b: {distill: {teachers: [a]}}\n"))


def test_the_local_recipe_runs_teachers_then_pseudolabels_then_students(tmp_path):
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "local.yaml")
    assert config.train_phases() == (["teacher"], ["student"])
    assert config.pseudolabel_scorers() == ["teacher"]  # the teachers label the dump, not the student

    from prefscale.pipeline import STAGE_NAMES

    assert STAGE_NAMES.index("train") < STAGE_NAMES.index("pseudolabel") < STAGE_NAMES.index("students") < STAGE_NAMES.index("stack")
    student = "    student: {distill: {teachers: [teacher]}, pseudolabels: true}\n"
    base = "name: x\ndata:\n  train: [a.parquet]\n  unlabeled: u.parquet\ntrain:\n    teacher: {}\n" + student
    with pytest.raises(PrefscaleError, match="pseudolabel.scorers names \\['student'\\]"):
        load_config(write(tmp_path, base + "pseudolabel: {scorers: [student]}\n"))
    with pytest.raises(PrefscaleError, match="nothing to pseudolabel"):
        load_config(write(tmp_path, base.replace("  unlabeled: u.parquet\n", "")))
