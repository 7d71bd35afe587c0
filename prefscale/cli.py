"""`prefscale`: one subcommand per stage. With --json the last stdout line is a JSON summary."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from prefscale.data.schema import TIE_PROTOCOLS
from prefscale.errors import PrefscaleError


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last stdout line")


def _sibling(out: str, suffix: str) -> str:
    root, ext = os.path.splitext(out)
    return f"{root}.{suffix}{ext or '.parquet'}"


def _never_an_input(outputs: list[str], inputs: list[str]) -> None:
    """Refuse an output path that names an input: a command never overwrites what it reads."""
    readers = {os.path.realpath(p) for p in inputs if "://" not in p}
    for out in outputs:
        if "://" not in out and os.path.realpath(out) in readers:
            raise PrefscaleError(f"{out} is an input of this command; write the output somewhere else (inputs are never overwritten)")


def cmd_validate(args: argparse.Namespace) -> dict[str, Any]:
    from prefscale.config import ValidationConfig
    from prefscale.data.files import validate_file

    stem = os.path.basename(args.input.rstrip("/")).split(".")[0]
    out = args.out or f"{stem}.clean.parquet"  # the working directory, not the (maybe shared, read-only) data folder
    rejects = args.rejects or _sibling(out, "rejects")
    _never_an_input([out, rejects], [args.input])
    return validate_file(args.input, out, rejects, ValidationConfig(lenient_json=args.lenient, max_chars=args.max_chars))


def cmd_split(args: argparse.Namespace) -> dict[str, Any]:
    from prefscale.data.files import split

    rejects = args.rejects or _sibling(args.out, "duplicates")
    _never_an_input([args.out, rejects], args.inputs)
    return split(args.inputs, args.out, rejects, folds=args.folds, seed=args.seed, dedup=args.dedup, merge_labels=not args.no_merge)


def cmd_pairs(args: argparse.Namespace) -> dict[str, Any]:
    from pydantic import ValidationError

    from prefscale.config import PairsConfig
    from prefscale.data.files import make_pairs

    try:
        options = PairsConfig(swap=args.swap, sample_fraction=args.sample_fraction, max_pairs_per_instruction=args.max_pairs_per_instruction,
                              max_instructions=args.max_instructions, seed=args.seed)
    except ValidationError as exc:
        raise PrefscaleError("; ".join(f"--{'-'.join(str(e['loc'][0]).split('_'))}: {e['msg']}" for e in exc.errors())) from None
    return make_pairs(args.input, args.out, options)


def cmd_stats(args: argparse.Namespace) -> dict[str, Any]:
    from prefscale.data.files import stats

    return stats(args.input)


def _config(args: argparse.Namespace, **sections: dict[str, Any]):
    """The config of --config, moved to --run-dir, with command-line overrides of whole sections' keys."""
    from prefscale.config import load_config

    config = load_config(args.config)
    update: dict[str, Any] = {"output_dir": args.run_dir} if args.run_dir else {}
    for section, values in sections.items():
        values = {key: value for key, value in values.items() if value is not None}
        if values:
            update[section] = getattr(config, section).model_copy(update=values)
    return config.model_copy(update=update) if update else config


def _stages(args: argparse.Namespace, config, names: list[str] | None) -> dict[str, Any]:
    from prefscale.pipeline import run_stages

    return run_stages(config, names, log=_log(args))


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    return _stages(args, _config(args), None)


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args, score={"input": args.input, "output": args.out, "rows": args.rows, "tta": False if args.no_tta else None})
    return _stages(args, config, ["score"])


def cmd_pseudolabel(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args, pseudolabel={"input": args.input, "scores": args.scores, "output": args.out, "rows": args.rows})
    return _stages(args, config, ["pseudolabel"])


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args)
    if not config.train:
        raise PrefscaleError("the config has no train section; add one (see configs/local.yaml)")
    if args.only:
        if args.only not in config.train:
            raise PrefscaleError(f"no train run named '{args.only}'; the config has {', '.join(config.train)}")
        late = args.only in config.train_phases()[1]
        config = config.model_copy(update={"train": {args.only: config.train[args.only]}})
        return _stages(args, config, ["students"] if late else ["train"])  # a student alone reads the pseudolabels already made
    return _stages(args, config, ["train", "pseudolabel", "students"] if config.train_phases()[1] else ["train"])


def cmd_members(args: argparse.Namespace) -> dict[str, Any]:
    return _stages(args, _config(args), ["members"])


def cmd_stack(args: argparse.Namespace) -> dict[str, Any]:
    return _stages(args, _config(args), ["stack", "report"])


def cmd_doctor(args: argparse.Namespace) -> dict[str, Any]:
    from prefscale.doctor import doctor

    config = _config(args, ray={"address": args.address})
    summary = doctor(config)
    for problem in summary["problems"]:
        print(f"prefscale doctor: {problem}", file=sys.stderr)
    if summary["problems"]:
        raise PrefscaleError(f"doctor found {len(summary['problems'])} problem(s), one per line above; fix them before submitting")
    return summary


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from prefscale.predict import predict

    return predict(args.run_dir, args.input, args.out, log=_log(args), ties=args.ties)


def _log(args: argparse.Namespace):
    return lambda line: print(line, file=sys.stderr if args.json else sys.stdout, flush=True)


def cmd_config_check(args: argparse.Namespace) -> dict[str, Any]:
    from prefscale.config import load_config

    checked = {path: load_config(path).name for path in args.configs}
    return {"valid": checked}


def _stage_parser(commands: Any, name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
    """A stage command: reads --config, may move the run directory with --run-dir."""
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    parser.add_argument("--run-dir", help="run directory (default: the config's output_dir, else runs/<name>)")
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefscale", description="Predict human preferences between chatbot answers, on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="validate, split, pair and describe battle data").add_subparsers(dest="data_command", required=True)

    p = data.add_parser("validate", help="split an input into clean battles and rejects with reasons")
    p.add_argument("input", help="Parquet, CSV, JSONL or Arena JSON; local path or URI (s3://, gs://, file://)")
    p.add_argument("--out", help="clean Parquet (default: <input name>.clean.parquet in the working directory)")
    p.add_argument("--rejects", help="rejects Parquet (default: OUT.rejects.parquet)")
    p.add_argument("--lenient", action="store_true", help="salvage unparseable JSON text as one raw turn (flagged)")
    p.add_argument("--max-chars", type=int, default=200_000, help="reject battles with more text than this")
    p.set_defaults(func=cmd_validate)

    p = data.add_parser("split", help="deduplicate clean battles and assign prompt-grouped folds")
    p.add_argument("inputs", nargs="+", help="clean Parquet files from 'data validate'")
    p.add_argument("--out", required=True, help="battles Parquet with a fold column")
    p.add_argument("--rejects", help="duplicates Parquet (default: OUT.duplicates.parquet)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dedup", choices=["none", "exact", "swap"], default="swap")
    p.add_argument("--no-merge", action="store_true", help="keep the first duplicate's label instead of averaging votes")
    p.set_defaults(func=cmd_split)

    p = data.add_parser("pairs", help="unlabeled battles from a long (instruction, generator, output) table")
    p.add_argument("input")
    p.add_argument("--out", required=True)
    p.add_argument("--swap", action="store_true", help="also write every pair with A and B swapped")
    p.add_argument("--sample-fraction", type=float, default=1.0)
    p.add_argument("--max-pairs-per-instruction", type=int)
    p.add_argument("--max-instructions", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pairs)

    p = data.add_parser("stats", help="rows, rejects, label balance, prior log loss, folds")
    p.add_argument("input")
    p.set_defaults(func=cmd_stats)

    _stage_parser(commands, "run", "run the whole recipe from a config (the main job)", cmd_run)

    p = _stage_parser(commands, "score", "score battles with the config's models on a Ray Data actor pool (resumable)", cmd_score)
    p.add_argument("--input", help="battles Parquet (default: score.input or <run_dir>/battles.parquet)")
    p.add_argument("--out", help="output directory of Parquet parts (default: score.output)")
    p.add_argument("--rows", type=int, help="score only the first N battles")
    p.add_argument("--no-tta", action="store_true", help="skip the A/B-swapped pass")

    p = _stage_parser(commands, "pseudolabel", "soft labels for unlabeled battles from one or more models (scores them unless --scores)", cmd_pseudolabel)
    p.add_argument("--input", help="unlabeled battles (default: pseudolabel.input or <run_dir>/unlabeled_pairs.parquet)")
    p.add_argument("--scores", nargs="+", help="existing score directories to average instead of scoring")
    p.add_argument("--out", help="pseudolabel Parquet (default: pseudolabel.output)")
    p.add_argument("--rows", type=int, help="pseudolabel only the first N battles")

    p = _stage_parser(commands, "train", "K-fold training on Ray Train with OOF logits (teachers, then distilled students)", cmd_train)
    p.add_argument("--only", help="train only this named run from the config's train section")

    _stage_parser(commands, "members", "fit the cheap members (features, TF-IDF) per fold: OOF logits + all-data fits", cmd_members)

    _stage_parser(commands, "stack", "stack and calibrate the members' OOF logits (nested CV), then write the report", cmd_stack)

    p = _stage_parser(commands, "doctor", "check a recipe before submitting it: inputs, models (no weights downloaded), cluster resources, "
                                         "GPUs, shared run directory", cmd_doctor)
    p.add_argument("--address", help="the Ray cluster to check ('auto': the running one; 'local': start one here); default: ray.address")

    p = commands.add_parser("predict", help="apply a finished run's ensemble to new battles; writes a Kaggle submission CSV")
    p.add_argument("--run-dir", required=True, help="run directory of a finished `prefscale run`")
    p.add_argument("--input", required=True, help="battles in any supported format (labels optional: log loss is printed when present)")
    p.add_argument("--out", required=True, help="submission CSV: id, winner_model_a, winner_model_b, winner_tie")
    p.add_argument("--ties", choices=TIE_PROTOCOLS,
                   help="could the new battles' judges answer tie? 'none' puts no mass on tie (a `ties` column wins); "
                        "default: the run's data.ties by source, else allowed")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser("config", help="check configs").add_subparsers(dest="config_command", required=True)
    p = p.add_parser("check", help="validate YAML configs against the typed schema")
    p.add_argument("configs", nargs="+")
    p.set_defaults(func=cmd_config_check)

    for sub in _all_subparsers(parser):
        _add_json(sub)
    return parser


def _all_subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                nested = _all_subparsers(sub)
                found += nested or [sub]
    return found


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        result = args.func(args)
    except PrefscaleError as exc:
        print(f"prefscale: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefscale: interrupted; outputs are written atomically, so rerun to finish", file=sys.stderr)
        return 130
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    print(json.dumps(result, indent=None if args.json else 2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
