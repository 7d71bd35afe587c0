"""The fault matrix: each bad input or fault, and what prefscale must do about it.

| case                                             | expected outcome                                                    |
|--------------------------------------------------|---------------------------------------------------------------------|
| rerun with the same config                       | finished members are reused (not refitted)                          |
| a member's config changed between runs           | its outputs deleted, refitted; the log names `config members.<name>`|
| only a resource key changed (CPUs, actors)       | outputs reused                                                      |
| a training input file changed                    | every unit downstream of the data recomputed, naming the file       |
| a teacher's config changed                       | the teacher, its students and the stack are stale; the rest is not  |
| only a train run's `tta` changed                 | its held-out folds rescored; adapters and checkpoints kept          |
| `workers` changed, the effective batch not       | the trained model kept                                              |
| a key that changes trained weights               | one line asking for --allow-retrain; with it, retrained             |
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
| a second writer on a run directory               | one line naming the live owner, exit 2; nothing written             |
| a lock left by a dead process                    | taken over, saying so; two racing for it: never two owners (50 races)|
| a finished run's file changed or deleted         | predict refuses, naming it (tests/test_pipeline.py)                 |
| disk full (a write error mid-output)             | one line, exit 2; no output and no temporary file left              |
| the driver killed mid-write (SIGKILL)            | no output at the final path; a rerun writes it whole                |
| a Train worker killed mid-fold                   | resumes from its checkpoint, restored step > 0 (tests/test_train_ray.py) |
| a rerun after training finished                  | finished folds skipped (tests/test_train_ray.py)                    |
| a scoring actor killed                           | restarted, every row once (tests/test_score_engine.py)              |
| a worker node killed mid-scoring                 | no row lost or duplicated (tests/test_node_faults.py)               |
| an unwritable --out                              | one line, exit 2 (tests/test_cli.py)                                |
"""

import json
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefscale.cli import main
from prefscale.config import Config, MemberConfig, RayConfig
from prefscale.fingerprints import outputs_of, scope, fingerprint, unit_parts
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

    def with_teacher(**keys):
        return config.model_copy(update={"train": {**config.train, "teacher": config.train["teacher"].model_copy(update=keys)}})

    same_batch = with_teacher(workers=4, batch_size=4, gradient_checkpointing=True)  # 4 x 4 = the default 1 x 16
    assert all(fingerprint(same_batch, u) == before[u] for u in units)  # the effective batch, not its factors
    assert fingerprint(with_teacher(workers=4), "train:teacher") != before["train:teacher"]  # 64 battles a step: retrained
    assert fingerprint(with_teacher(average="factors"), "train:student") == before["train:student"]  # the averaged model feeds no unit
    scopes = {scope(k) for k, v in unit_parts(with_teacher(tta=False), "train:teacher").items() if unit_parts(config, "train:teacher")[k] != v}
    assert scopes == {"scoring"} and set(outputs_of(config, "train:teacher", scopes=scopes)) == {config.layout.oof("teacher"),
                                                                                                 config.layout.oof_scores("teacher")}

    # Every rerun rewrites the split's battles.parquet: no unit may depend on that file's mtime (the pseudolabels'
    # dedup against the labeled set depends on the data stage instead).
    split = Path(config.layout.battles)
    split.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1]}), split)
    with_pseudolabels = [*units, "pseudolabel"]
    made = {u: fingerprint(config, u) for u in with_pseudolabels}
    pq.write_table(pa.table({"id": [1, 3]}), split)
    assert {u: fingerprint(config, u) for u in with_pseudolabels} == made

    pq.write_table(pa.table({"id": [1, 2]}), source)  # the file changed (size, mtime)
    assert all(fingerprint(config, u) != made[u] for u in with_pseudolabels)
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


def _battle(i, prompt="hi", a="hello", b="hey", labels=(1.0, 0.0, 0.0)):
    row = {"id": i, "prompt": json.dumps([prompt]), "response_a": json.dumps([a]), "response_b": json.dumps([b])}
    return {**row, **dict(zip(("winner_model_a", "winner_model_b", "winner_tie"), labels))} if labels else row


def test_mixed_schema_parquet_directory_is_unified_by_column_name(tmp_path, capsys):
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.Table.from_pylist([_battle(i, labels=None) for i in range(3)]), parts / "a-unlabeled.parquet")
    pq.write_table(pa.Table.from_pylist([_battle(i) for i in range(3, 8)]), parts / "b-labeled.parquet")
    summary, clean, _ = _validate(capsys, parts, tmp_path)
    labeled = [row["id"] for row in clean.to_pylist() if row["winner_model_a"] is not None]
    assert summary["clean"] == 8 and sorted(labeled) == [3, 4, 5, 6, 7]


def test_unifiable_schemas_or_one_line_naming_the_file(tmp_path, capsys):
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.Table.from_pylist([_battle(1)]), parts / "a.parquet")
    pq.write_table(pa.Table.from_pylist([{**_battle(2), "winner_model_a": "yes"}]), parts / "b.parquet")
    assert main(["data", "validate", str(parts), "--out", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "b.parquet has columns whose types clash" in err and not (tmp_path / "o.parquet").exists()


def test_a_lone_surrogate_is_rejected_and_split_still_works(tmp_path, capsys):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([_battle(1), {**_battle(2), "response_a": '["half an emoji \\ud83d"]'}, _battle(3, a="other")]), source)
    summary, clean, rejects = _validate(capsys, source, tmp_path)
    assert summary["clean"] == 2 and rejects.column("reject_reason").to_pylist() == ["bad_text"]
    assert main(["data", "split", str(tmp_path / "clean.parquet"), "--out", str(tmp_path / "battles.parquet"), "--folds", "2"]) == 0


def test_one_broken_json_line_is_rejected_with_its_true_line_number(tmp_path, capsys):
    lines = [json.dumps(_battle(i)) for i in range(20_000)]
    lines[14_999] = '{"id": 15000, "prompt": "cut off'
    lines[17_000] = json.dumps(_battle(17_000))[:-1].encode().decode() + ', "note": "bad byte"}'
    source = tmp_path / "in.jsonl"
    data = "\n".join(lines).encode()
    data = data.replace(b'bad byte', b'bad \xff byte')
    source.write_bytes(data)
    summary, clean, rejects = _validate(capsys, source, tmp_path)
    assert summary["rows"] == 20_000 and summary["clean"] == 19_998
    found = dict(zip(rejects.column("reject_reason").to_pylist(), rejects.column("reject_detail").to_pylist()))
    assert found["unparseable_line"].startswith("line 15000:") and found["bad_text"].startswith("line 17001: note")


def test_csv_with_a_byte_order_mark_and_an_invalid_byte(tmp_path, capsys):
    import csv
    import io

    rows = [_battle(i) for i in range(4)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    data = ("\ufeff" + text.getvalue()).encode("utf-8").replace(b'hey""', b'he\xffy""', 1)
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    summary, clean, rejects = _validate(capsys, source, tmp_path)
    assert summary["rows"] == 4 and summary["clean"] == 3
    assert rejects.column("reject_reason").to_pylist() == ["bad_text"] and "row 1: column response_b" in rejects.column("reject_detail")[0].as_py()


def test_empty_and_unvalidated_inputs_to_split(tmp_path, capsys):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist([_battle(1)]).slice(0, 0), empty)
    summary, clean, _ = _validate(capsys, empty, tmp_path)
    assert summary["rows"] == 0 and clean.num_rows == 0
    assert main(["data", "split", str(tmp_path / "clean.parquet"), "--out", str(tmp_path / "b.parquet")]) == 2
    assert "nothing to split" in capsys.readouterr().err
    assert main(["data", "split", str(empty), "--out", str(tmp_path / "b.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not validated" in err and "prefscale data validate" in err and "\n" not in err and not (tmp_path / "b.parquet").exists()


def test_the_same_id_in_two_inputs_is_rejected(tmp_path, capsys):
    cleaned = []
    for name, battles in (("one", [_battle(1), _battle(2, a="x")]), ("two", [_battle(2, prompt="another question"), _battle(3, a="y")])):
        pq.write_table(pa.Table.from_pylist(battles), tmp_path / f"{name}.parquet")
        out = tmp_path / f"{name}.clean.parquet"
        assert main(["data", "validate", str(tmp_path / f"{name}.parquet"), "--out", str(out)]) == 0
        cleaned.append(str(out))
    capsys.readouterr()
    assert main(["data", "split", *cleaned, "--out", str(tmp_path / "battles.parquet"), "--folds", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rejects = pq.read_table(tmp_path / "battles.duplicates.parquet")
    assert summary["duplicate_ids"] == 1 and rejects.column("reject_reason").to_pylist() == ["duplicate_id"]
    assert sorted(pq.read_table(tmp_path / "battles.parquet").column("id").to_pylist()) == [1, 2, 3]


def test_pairs_output_without_extension_reads_back(tmp_path, capsys):
    long = tmp_path / "long.parquet"
    pq.write_table(pa.table({"instruction": ["i"] * 3, "generator": list("abc"), "output": list("xyz")}), long)
    assert main(["data", "pairs", str(long), "--out", str(tmp_path / "pairs")]) == 0
    capsys.readouterr()
    assert main(["data", "stats", str(tmp_path / "pairs"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 3


def test_a_second_writer_is_refused_and_a_dead_owners_lock_taken_over(tmp_path, capsys, battles_path):
    import subprocess
    import sys

    import yaml

    from prefscale.locks import OWNER_NAME, exclusive

    run_dir = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "lock", "output_dir": str(run_dir), "data": {"train": [battles_path]},
                                      "members": {"tfidf": {"kind": "tfidf"}}}))
    with exclusive(str(run_dir)):
        assert main(["members", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run_dir} is being written by" in err and "\n" not in err and not (run_dir / "battles.parquet").exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (run_dir / OWNER_NAME).write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": int(dead), "started": 0}))
    lines: list[str] = []
    with exclusive(str(run_dir), lines.append):
        assert json.loads((run_dir / OWNER_NAME).read_text())["pid"] == os.getpid()
    assert lines and "taking over a stale lock" in lines[0] and not (run_dir / OWNER_NAME).exists()


def _race_for_the_lock(directory: str, rank: int, rounds: int, barrier, holders, overlaps, won) -> None:
    """One of two processes: each round, a dead owner's lock is left, then both try to take it."""
    from prefscale.errors import PrefscaleError
    from prefscale.locks import OWNER_NAME, exclusive

    for _ in range(rounds):
        barrier.wait()
        if rank == 0:
            with open(os.path.join(directory, OWNER_NAME), "w") as handle:
                json.dump({"host": "elsewhere", "pid": 1, "started": 0}, handle)
        barrier.wait()
        try:
            with exclusive(directory, log=lambda line: None):
                with holders.get_lock():
                    holders.value += 1
                    overlaps.value += holders.value > 1
                won.value += 1
                __import__("time").sleep(0.005)
                with holders.get_lock():
                    holders.value -= 1
        except PrefscaleError:
            pass


def test_fifty_races_for_a_dead_owners_lock_never_give_two_owners(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    barrier, holders, overlaps, won = context.Barrier(2), context.Value("i", 0), context.Value("i", 0), context.Value("i", 0)
    racers = [context.Process(target=_race_for_the_lock, args=(str(tmp_path), rank, 50, barrier, holders, overlaps, won)) for rank in (0, 1)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(120)
    assert [r.exitcode for r in racers] == [0, 0]
    assert overlaps.value == 0 and won.value >= 50  # every round someone took it over; never two at once


def test_disk_full_leaves_nothing_behind(tmp_path, capsys, monkeypatch, kaggle_sample):
    import errno

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    out = tmp_path / "out"
    code = main(["data", "validate", str(kaggle_sample), "--out", str(out / "clean.parquet")])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # above it only the progress bar's erased line
    assert code == 2 and last.startswith("prefscale: error: No space left on device; free some space")
    assert not out.exists() or os.listdir(out) == []


def test_a_driver_killed_mid_write_leaves_no_output_and_a_rerun_finishes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    source = tmp_path / "many.jsonl"
    source.write_text("\n".join(json.dumps(_battle(i)) for i in range(200_000)))
    out = tmp_path / "clean.parquet"
    command = [sys.executable, "-m", "prefscale.cli", "data", "validate", str(source), "--out", str(out), "--json"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    assert driver.poll() is None, "validation finished before it could be killed; make the input larger"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not out.exists()  # only a hidden temporary part, never a truncated output under the real name
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert pq.read_metadata(out).num_rows == 200_000


def test_a_scoring_change_rescores_and_a_training_change_asks_before_deleting_trained_models(tmp_path, ray_local, battles_path, tiny_bert_path):
    from prefscale.errors import PrefscaleError
    from prefscale.pipeline import run_stages

    source = tmp_path / "b.parquet"
    pq.write_table(pq.read_table(battles_path).slice(0, 60), source)
    teacher = {"model": {"path": tiny_bert_path}, "folds": [0], "max_rows": 16, "batch_size": 8, "checkpoint_every": 100, "tta": False,
               "cpus_per_worker": 0.5, "average": "none", "max_length": 48}
    config = Config.model_validate({"name": "fp", "output_dir": str(tmp_path / "run"), "data": {"train": [str(source)], "folds": 3},
                                    "train": {"teacher": teacher}, "score": {"cpus_per_actor": 0.5, "format_cpus": 0.25},
                                    "tracking": {"enabled": False}})
    run_stages(config, ["train"], log=lambda line: None)
    adapter = Path(config.layout.fold_adapter("teacher", 0)) / "adapter_model.safetensors"
    made = adapter.stat().st_mtime_ns
    lines: list[str] = []
    flipped = config.model_copy(update={"train": {"teacher": config.train["teacher"].model_copy(update={"tta": True})}})
    summary = run_stages(flipped, ["train"], log=lines.append)["stages"]["train:teacher"]
    assert adapter.stat().st_mtime_ns == made and summary["folds"][0]["skipped"] == "already trained"  # kept, not retrained
    assert summary["swap_flip_share"] is not None  # rescored in both orders
    assert any("config train.teacher scoring" in line and "rescoring" in line for line in lines), lines
    assert os.listdir(config.layout.checkpoints)  # the checkpoints stay too

    bigger = flipped.model_copy(update={"train": {"teacher": flipped.train["teacher"].model_copy(update={"batch_size": 16})}})
    with pytest.raises(PrefscaleError, match=r"\[train:teacher\] was trained from a different config train.teacher; .* --allow-retrain"):
        run_stages(bigger, ["train"], log=lambda line: None)
    assert adapter.stat().st_mtime_ns == made
    run_stages(bigger, ["train"], log=lambda line: None, allow_retrain=True)
    assert adapter.stat().st_mtime_ns != made  # retrained because asked


def test_the_manifest_check_hashes_only_files_whose_size_or_mtime_changed(tmp_path):
    import hashlib

    from prefscale.errors import PrefscaleError
    from prefscale.io import write_json
    from prefscale.manifest import verify

    config = Config.model_validate({"name": "m", "output_dir": str(tmp_path), "data": {"train": ["x"]}})
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x01" * 4096)
    info = weights.stat()
    write_json({"files": {"weights.bin": hashlib.sha256(weights.read_bytes()).hexdigest()},
                "identity": {"weights.bin": [info.st_size, info.st_mtime_ns]}}, config.layout.manifest)
    assert verify(config) == 0 and verify(config, full=True) == 1  # predict: no re-hash; predict --verify: every file
    weights.write_bytes(b"\x02" * 4096)  # same size, new mtime
    with pytest.raises(PrefscaleError, match="changed: weights.bin"):
        verify(config)


def test_a_sealed_run_still_verifies_after_its_directory_moves(tmp_path, monkeypatch):
    """Models are named by absolute path; the manifest keys them relative to the run directory."""
    from prefscale.manifest import _key, verify

    monkeypatch.chdir(tmp_path)
    config = Config.model_validate({"name": "m", "output_dir": "runs/a", "data": {"train": ["x"]}})
    (tmp_path / "runs" / "a" / "models").mkdir(parents=True)
    weights = tmp_path / "runs" / "a" / "models" / "weights.bin"
    weights.write_bytes(b"\x01" * 64)
    assert _key(config, str(weights)) == _key(config, "runs/a/models/weights.bin") == "models/weights.bin"
    from prefscale.io import write_json
    from prefscale.manifest import sha256

    write_json({"files": {"models/weights.bin": sha256(str(weights))}, "identity": {}}, config.layout.manifest)
    (tmp_path / "runs" / "a").rename(tmp_path / "runs" / "b")
    moved = Config.model_validate({"name": "m", "output_dir": "runs/b", "data": {"train": ["x"]}})
    assert verify(moved) == 1
