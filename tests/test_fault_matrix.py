"""The fault matrix: each bad input or fault, and what prefscale must do about it.

| case                                             | expected outcome                                                    |
|--------------------------------------------------|---------------------------------------------------------------------|
| rerun with the same config                       | finished members are reused (not refitted)                          |
| a member's config changed between runs           | its outputs deleted, refitted; the log names `config members.<name>`|
| only a resource key changed (CPUs, actors)       | outputs reused                                                      |
| a training input file changed                    | every unit downstream of the data recomputed, naming the file       |
| a teacher's config changed                       | the teacher, its students and the stack are stale; the rest is not  |
| a directory replaced while a reader could look   | the path always holds a whole copy (atomic swap)                    |
| a Parquet directory whose files differ in schema | unified by column name: labeled rows keep their labels              |
| two files' schemas cannot be unified             | one line naming the file                                            |
| a lone UTF-16 surrogate in a text cell           | that row rejected `bad_text`; split and predict work                |
| one broken line in a JSON Lines file             | that line rejected `unparseable_line` with its true line number     |
| a CSV with a UTF-8 byte-order mark               | read like one without                                               |
| one invalid UTF-8 byte in a CSV                  | that row rejected `bad_text`; the others kept                       |
| empty input                                      | validate writes 0 rows; split says there is nothing to split        |
| `data split` on unvalidated data                 | one line: validate first                                            |
| the same id in two inputs                        | the second rejected `duplicate_id` in split's rejects               |
| `data pairs --out` without .parquet              | the file reads back (Parquet recognised by its magic bytes)         |
| an unwritable --out                              | one line, exit 2 (tests/test_cli.py)                                |
"""

import json
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefscale.cli import main
from prefscale.config import Config, MemberConfig, RayConfig
from prefscale.fingerprints import fingerprint, unit_parts
from prefscale.io import atomic_dir

pytestmark = pytest.mark.slow


def _members_config(tmp_path, battles_input, **tfidf) -> Config:
    return Config(name="fp", output_dir=str(tmp_path / "run"), data={"train": [str(battles_input)], "folds": 2},
                  members={"tfidf": MemberConfig(kind="tfidf", params={"max_features": 500, **tfidf})}, ray=RayConfig(num_cpus=2))


def test_outputs_are_reused_only_when_config_and_inputs_match(tmp_path, ray_local, battles_path):
    from prefscale.pipeline import run_stages

    lines: list[str] = []
    config = _members_config(tmp_path, battles_path)
    first = run_stages(config, ["members"], log=lines.append)["stages"]["member:tfidf"]
    assert "skipped" not in first
    again = run_stages(config, ["members"], log=lines.append)["stages"]["member:tfidf"]
    assert again["skipped"] and again["oof_log_loss"] == first["oof_log_loss"]  # same config: reused

    resources = config.model_copy(update={"ray": RayConfig(num_cpus=1)})
    assert run_stages(resources, ["members"], log=lines.append)["stages"]["member:tfidf"]["skipped"]  # CPUs change no result

    lines.clear()
    changed = _members_config(tmp_path, battles_path, max_features=300)
    redone = run_stages(changed, ["members"], log=lines.append)["stages"]["member:tfidf"]
    assert "skipped" not in redone
    assert any("[member:tfidf] its outputs were made from a different config members.tfidf" in line for line in lines)


def test_a_changed_input_file_or_teacher_makes_everything_downstream_stale(tmp_path):
    source = tmp_path / "battles.parquet"
    pq.write_table(pa.table({"id": [1]}), source)
    config = Config.model_validate({
        "name": "fp", "output_dir": str(tmp_path / "run"), "data": {"train": [str(source)]}, "members": {"tfidf": {"kind": "tfidf"}},
        "train": {"teacher": {}, "student": {"distill": {"teachers": ["teacher"]}}, "other": {}}, "stack": {}})
    units = ["data", "member:tfidf", "train:teacher", "train:student", "train:other", "stack", "report"]
    before = {u: fingerprint(config, u) for u in units}

    teacher = config.train["teacher"].model_copy(update={"lr": 1e-3})
    retuned = config.model_copy(update={"train": {**config.train, "teacher": teacher}})
    stale = {u for u in units if fingerprint(retuned, u) != before[u]}
    assert stale == {"train:teacher", "train:student", "stack", "report"}

    faster = config.model_copy(update={"train": {**config.train, "teacher": config.train["teacher"].model_copy(update={"workers": 4})}})
    assert all(fingerprint(faster, u) == before[u] for u in units)  # workers: a resource key

    pq.write_table(pa.table({"id": [1, 2]}), source)  # the file changed (size, mtime)
    assert all(fingerprint(config, u) != before[u] for u in units)
    assert f"file {source}" in unit_parts(config, "data")


def test_directory_replacement_always_leaves_a_whole_copy(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(str(target)) as staged:
        for k in range(20):
            (open(os.path.join(staged, f"part{k}"), "w")).write("old")
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # a reader opening files by path, as a loader does
        k = 0
        while not stop.is_set():
            k = (k + 7) % 20
            try:
                with open(target / f"part{k}") as handle:
                    seen.append(handle.read())
            except FileNotFoundError:
                seen.append("missing")

    watcher = threading.Thread(target=watch)
    watcher.start()
    for _ in range(30):
        with atomic_dir(str(target)) as staged:
            for k in range(20):
                (open(os.path.join(staged, f"part{k}"), "w")).write("new")
    stop.set()
    watcher.join()
    assert len(seen) > 100 and set(seen) <= {"old", "new"}  # never missing, never half-written
    assert sorted(os.listdir(target)) == sorted(f"part{k}" for k in range(20))
    assert [p for p in os.listdir(tmp_path) if p != "model"] == []


def _validate(capsys, source, tmp_path):
    out, rejects = tmp_path / "clean.parquet", tmp_path / "rejects.parquet"
    assert main(["data", "validate", str(source), "--out", str(out), "--rejects", str(rejects), "--json"]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return summary, pq.read_table(out), pq.read_table(rejects)
