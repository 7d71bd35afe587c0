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
    assert summaries[0]["rows"] == pq.read_metadata(kaggle_sample).num_rows and summaries[0]["reasons"] == {"unparseable_json": summaries[0]["rejected"]}
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


def _every_parser(parser):
    yield parser
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for sub in action.choices.values():
                yield from _every_parser(sub)


def test_every_option_has_help_and_shows_its_default():
    for parser in _every_parser(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.dest in ("help", "version") or action.help == "==SUPPRESS==" or hasattr(action, "_name_parser_map"):
                continue
            assert action.help, f"{parser.prog} {'/'.join(action.option_strings) or action.dest} has no help text"
            if action.option_strings and action.default not in (None, False):
                assert "default" in formatter._get_help_string(action), f"{parser.prog} {action.option_strings} hides its default"


def test_bare_command_groups_and_version_print_help(capsys):
    assert main([]) == 0 and "usage: prefscale" in capsys.readouterr().out
    assert main(["data"]) == 0 and "validate" in capsys.readouterr().out
    assert main(["config"]) == 0 and "reference" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == "prefscale 0.1.0"


@pytest.mark.parametrize("argv, message", [
    (["data", "pairs", "long.parquet", "--out", "p.parquet", "--max-instructions", "-3"], "--max-instructions: must be at least 1, got -3"),
    (["data", "pairs", "long.parquet", "--out", "p.parquet", "--sample-fraction", "0"], "--sample-fraction: must be in (0, 1], got 0.0"),
    (["data", "split", "a.parquet", "--out", "b.parquet", "--folds", "1"], "--folds: must be at least 2, got 1"),
    (["data", "validate", "a.parquet", "--max-chars", "-5"], "--max-chars: must be at least 1, got -5"),
    (["score", "--config", "c.yaml", "--rows", "ten"], "--rows: expected a whole number, got 'ten'"),
])
def test_numeric_options_are_range_checked_by_the_parser(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_stats_prints_a_table_and_json_only_when_asked(capsys, kaggle_sample):
    assert main(["data", "stats", str(kaggle_sample)]) == 0
    table = capsys.readouterr().out
    assert "prior log loss" in table and "unparseable_json" in table and not table.lstrip().startswith("{")
    assert run_json(capsys, "data", "stats", str(kaggle_sample))["rows"] == pq.read_metadata(kaggle_sample).num_rows


def test_unwritable_output_is_one_line(tmp_path, capsys, kaggle_sample):
    plain = tmp_path / "plain"
    plain.write_text("a file, so no folder can be made under it (even for root)")
    assert main(["data", "validate", str(kaggle_sample), "--out", str(plain / "clean.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prefscale: error:") and str(plain) in err and "\n" not in err


def test_config_schema_and_reference_are_current(capsys):
    from prefscale.config_reference import REGENERATE, config_reference

    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"data", "train", "stack", "tracking"} <= set(schema["properties"]) and schema["required"] == ["name", "data"]
    docs = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "CONFIG.md")
    with open(docs, encoding="utf-8") as handle:
        assert handle.read() == config_reference(), f"docs/CONFIG.md is stale; regenerate it: {REGENERATE}"


def test_every_config_field_has_a_description():
    import inspect

    import prefscale.config as config

    sections = [c for _, c in inspect.getmembers(config, inspect.isclass) if issubclass(c, config.Section) and c.__module__ == config.__name__]
    missing = [f"{c.__name__}.{name}" for c in sections for name, field in c.model_fields.items() if not field.description]
    assert len(sections) > 10 and not missing


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_knows_the_commands(capsys, shell):
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "prefscale" in script and "pseudolabel" in script and "--run-dir" in script


def test_a_newcomers_first_commands_say_what_they_mean(tmp_path, capsys, alpacaeval, kaggle_sample):
    """config check in words, data validate on a long table pointing at data pairs, data stats naming
    the arena rows as the report does, data pairs counting the instructions it paired."""
    assert main(["config", "check", "configs/local.yaml"]) == 0
    assert capsys.readouterr().out.strip() == "configs/local.yaml: valid (run name local)"
    assert main(["data", "validate", str(alpacaeval), "--out", str(tmp_path / "v.parquet")]) == 2
    assert f"prefscale data pairs {alpacaeval} --out battles.parquet" in capsys.readouterr().err
    assert main(["data", "stats", str(kaggle_sample), "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["datasets"]) == ["arena"]
    assert main(["data", "pairs", str(alpacaeval), "--out", str(tmp_path / "p.parquet"), "--max-instructions", "2", "--json"]) == 0
    paired = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert paired["instructions"] == 2 and paired["instructions_in_input"] > 2
