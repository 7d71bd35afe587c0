"""`prefscale`: one subcommand per stage. With --json the last stdout line is a JSON summary."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from typing import Any

from prefscale import __version__
from prefscale.data.schema import TIE_PROTOCOLS
from prefscale.errors import PrefscaleError


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if action.option_strings and shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _int_at_least(minimum: int):
    """An integer option checked by the parser: a bad value is a usage error naming the option."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _fraction(text: str) -> float:
    """A share in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got '{text}'") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


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
    from prefscale.config import PairsConfig
    from prefscale.data.files import make_pairs

    options = PairsConfig(swap=args.swap, sample_fraction=args.sample_fraction, max_pairs_per_instruction=args.max_pairs_per_instruction,
                          max_instructions=args.max_instructions, seed=args.seed)
    return make_pairs(args.input, args.out, options)


def cmd_stats(args: argparse.Namespace) -> dict[str, Any] | None:
    from prefscale.data.files import stats

    summary = stats(args.input)
    if args.json:
        return summary
    print(stats_table(summary))
    return None


def stats_table(summary: dict[str, Any]) -> str:
    """`data stats` for people: one aligned line per figure, counts with their shares."""
    rows = summary["rows"] or 1
    lines = [("input", summary["input"]), ("rows", f"{summary['rows']:,}"),
             ("clean", f"{summary['clean']:,} ({summary['clean'] / rows:.1%})"), ("rejected", f"{summary['rejected']:,}"),
             *((f"  {reason}", f"{count:,}") for reason, count in sorted(summary["reasons"].items())),
             ("labeled", f"{summary['labeled']:,}"), ("unlabeled", f"{summary['unlabeled']:,}")]
    if summary["label_share"]:
        lines.append(("label share", "  ".join(f"{k} {v:.1%}" for k, v in summary["label_share"].items())))
        lines.append(("prior log loss", f"{summary['prior_log_loss']:.4f}"))
    for title, counts in (("flags", summary["flags"]), ("folds", summary["folds"]), ("datasets", summary["datasets"])):
        if counts:
            lines.append((title, ""))
            lines += [(f"  {key}", f"{count:,}") for key, count in sorted(counts.items())]
    width = max(len(key) for key, _ in lines)
    return "\n".join(f"{key:<{width}}  {value}".rstrip() for key, value in lines)


def _configs(args: argparse.Namespace, **sections: dict[str, Any]) -> list:
    """Every --config of a command that takes several (a teacher's, then its student's), in order."""
    return [_config(args, path, **sections) for path in args.config]


def _config(args: argparse.Namespace, path: str | None = None, **sections: dict[str, Any]):
    """The config of --config (made a smoke run by --smoke), moved to --run-dir, with command-line overrides of sections' keys."""
    from prefscale.config import load_config

    config = load_config(path or args.config)
    if args.smoke:
        from prefscale.smoke.recipe import enter_smoke_environment, smoke_config

        enter_smoke_environment(config)
        config = smoke_config(config, cluster=args.address)
    update: dict[str, Any] = {"output_dir": args.run_dir} if args.run_dir else {}
    if args.address:
        sections = {**sections, "ray": {**sections.get("ray", {}), "address": args.address}}
    for section, values in sections.items():
        values = {key: value for key, value in values.items() if value is not None}
        if values:
            update[section] = getattr(config, section).model_copy(update=values)
    return config.model_copy(update=update) if update else config


def _stages(args: argparse.Namespace, config, names: list[str] | None) -> dict[str, Any]:
    from prefscale.pipeline import run_stages

    return run_stages(config, names, log=_log(args), allow_retrain=getattr(args, "allow_retrain", False))


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    """Each config in turn on its run directory: the teachers' recipes, then the student's."""
    summaries = [_stages(args, config, None) for config in _configs(args)]
    return summaries[0] if len(summaries) == 1 else {"runs": summaries}


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args, score={"input": args.input, "output": args.out, "rows": args.rows, "tta": False if args.no_tta else None})
    if args.cascade:  # the finished run's fitted cascade instead of the config's models
        return _cascade(args, config.layout.root, config.score.input or config.layout.battles, config.score.output or config.layout.scores("cascade"))
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

    from prefscale.plan.resources import plan_table

    summary = doctor(_configs(args), args.nodes)
    for recipe in summary.get("recipes", [summary]):
        if recipe.get("plan"):
            print(f"resource plan of {recipe['config']}:\n{plan_table(recipe['plan'])}", file=sys.stderr)
    for problem in summary["problems"]:
        print(f"prefscale doctor: {problem}", file=sys.stderr)
    if summary["problems"]:
        if args.json:  # the plan and every finding, even when the recipe cannot run as it is
            print(json.dumps(summary, default=str))
        raise PrefscaleError(f"doctor found {len(summary['problems'])} problem(s), one per line above; fix them before submitting")
    return summary


def cmd_submit(args: argparse.Namespace) -> dict[str, Any]:
    from prefscale.submit import submit

    return submit(args.address, args.config, wait=args.wait, log=_log(args))


SUBMISSION_HEADER = "id,winner_model_a,winner_model_b,winner_tie"


def _replaceable(out: str) -> bool:
    """Only a submission predict wrote may be replaced without --overwrite."""
    if "://" in out or not os.path.exists(out):
        return True
    with open(out, encoding="utf-8", errors="replace") as handle:
        return handle.readline().strip() == SUBMISSION_HEADER


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from prefscale.predict import predict

    _never_an_input([args.out], [args.input])
    if not args.overwrite and not _replaceable(args.out):
        raise PrefscaleError(f"{args.out} exists and is not a submission predict wrote; choose another --out, or pass --overwrite to replace it")
    return predict(args.run_dir, args.input, args.out, log=_log(args), ties=args.ties, verify_all=args.verify)


def _log(args: argparse.Namespace):
    """Progress lines go to stderr: stdout holds only the command's result."""
    return lambda line: print(line, file=sys.stderr, flush=True)


def cmd_config_check(args: argparse.Namespace) -> dict[str, Any] | None:
    from prefscale.config import load_config

    checked = {path: load_config(path).name for path in args.configs}
    if args.json:
        return {"valid": checked}
    for path, name in checked.items():
        print(f"{path}: valid (run name {name})")
    return None


def cmd_config_schema(args: argparse.Namespace) -> None:
    from prefscale.config import Config

    print(json.dumps(Config.model_json_schema(), indent=2))


def cmd_config_reference(args: argparse.Namespace) -> None:
    from prefscale.config_reference import config_reference

    print(config_reference(), end="")


def cmd_cli_reference(args: argparse.Namespace) -> None:
    from prefscale.cli_reference import cli_reference

    print(cli_reference(build_parser()), end="")


def cmd_compare(args: argparse.Namespace) -> dict[str, Any] | None:
    from prefscale.predict import compare

    if args.prompt is not None or args.a is not None or args.b is not None:
        if None in (args.prompt, args.a, args.b):
            raise PrefscaleError("give all of --prompt, --a and --b (or none, and battles as JSON Lines on stdin)")
        battles = [{"prompt": args.prompt, "response_a": args.a, "response_b": args.b, **({"ties": args.ties} if args.ties else {})}]
    else:
        battles = _battles_from_stdin(args.ties)
    results = compare(args.run_dir, battles, log=_log(args))
    if args.json:
        return {"battles": results}
    for result in results:
        print(_comparison_lines(result))
    return None


def _battles_from_stdin(ties: str | None) -> list[dict[str, Any]]:
    if sys.stdin.isatty():
        raise PrefscaleError("no battle given: pass --prompt, --a and --b, or pipe JSON Lines battles into stdin")
    battles = []
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            battle = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PrefscaleError(f"stdin line {number}: not JSON ({exc.msg}); give one battle object per line") from None
        if not isinstance(battle, dict):
            raise PrefscaleError(f"stdin line {number}: expected an object with prompt, response_a, response_b")
        battles.append({**({"ties": ties} if ties else {}), **battle})
    if not battles:
        raise PrefscaleError("stdin held no battles; give one JSON object per line with prompt, response_a, response_b")
    return battles


def _comparison_lines(result: dict[str, Any]) -> str:
    title = f"battle {result['id']}"
    if "rejected" in result:
        return f"{title}: not predicted ({result['rejected']})"
    rows = [("ensemble", result["ensemble"]), *result["members"].items()]
    width = max(len(title), *(len(name) + 2 for name, _ in rows))
    lines = [f"{title:<{width}} {'A':>6} {'B':>6} {'tie':>6}"]
    lines += [f"{'  ' + name:<{width}} {p['a']:6.3f} {p['b']:6.3f} {p['tie']:6.3f}" for name, p in rows]
    return "\n".join(lines)


def cmd_leaderboard(args: argparse.Namespace) -> dict[str, Any]:
    from prefscale.leaderboard_files import write_leaderboard

    _never_an_input([args.out], [args.battles, *(args.scores or [])])
    if args.run_dir:
        from prefscale.cascade.ranking import rank_with_run

        if args.scores:
            raise PrefscaleError("give --run-dir (score the battles through its cascade) or --scores (already scored), not both")
        return rank_with_run(args.run_dir, args.battles, args.out, args.send_fraction, args.bootstrap, args.group_by, args.seed, _log(args),
                             args.style_control)
    return write_leaderboard(args.battles, args.scores or [], args.out, bootstrap=args.bootstrap, group_by=args.group_by, seed=args.seed,
                             style_control=args.style_control)


def cmd_cascade(args: argparse.Namespace) -> dict[str, Any]:
    return _cascade(args, args.run_dir, args.input, args.out)


def _cascade(args: argparse.Namespace, run_dir: str, input_uri: str, out: str) -> dict[str, Any]:
    from prefscale.cascade.run import run_cascade
    from prefscale.predict import load_run
    from prefscale.ray_runtime import ensure_ray

    _never_an_input([out], [input_uri])
    config, stacked = load_run(run_dir)
    ensure_ray(config.ray)
    return run_cascade(config, stacked, input_uri, out, args.send_fraction, args.rows, log=_log(args))


def cmd_completion(args: argparse.Namespace) -> None:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))


def _prints_help(parser: argparse.ArgumentParser):
    """What a bare command or command group does: print its help (exit 0)."""
    def show(args: argparse.Namespace) -> None:
        parser.print_help()
    return show


def _stage_parser(commands: Any, name: str, help_text: str, func: Any, several: bool = False) -> argparse.ArgumentParser:
    """A stage command: reads --config (``several``: configs run in turn on one run directory), may move the run directory with --run-dir."""
    parser = commands.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
    if several:
        parser.add_argument("--config", required=True, nargs="+", action="extend", help="YAML recipes, in order (`--config A B` or "
                                                                       "`--config A --config B`): each config's runs may use the runs of the configs "
                                                                       "before it (teachers, then their student)")
    else:
        parser.add_argument("--config", required=True, help="YAML recipe (see configs/ and docs/CONFIG.md)")
    parser.add_argument("--run-dir", help="run directory (default: the config's output_dir, else runs/<name>)")
    parser.add_argument("--smoke", action="store_true", help="the recipe end to end on this machine before submitting it: every key kept, "
                        "tiny models of its architectures under its hub ids, generated battles, CPUs; run dir runs/smoke/<output_dir name>/run")
    parser.add_argument("--allow-retrain", action="store_true", help="let a config change delete trained models and checkpoints "
                                                                     "(without it, such a change stops with one line; scoring-only changes never need it)")
    parser.add_argument("--address", help="the Ray cluster to use, over ray.address ('auto': the running one; 'local': start one here); "
                                          "with --smoke, the smoke run goes there keeping its GPU and accelerator asks, computed on CPU "
                                          "where a node has no CUDA (a rehearsal of placement and autoscaling)")
    parser.set_defaults(func=func)
    return parser


def _group(commands: Any, name: str, help_text: str) -> Any:
    """A command group (data, config): bare, it prints its help."""
    parser = commands.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
    parser.set_defaults(func=_prints_help(parser))
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def _command(commands: Any, name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefscale", description="Predict human preferences between chatbot answers, on Ray.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own log lines (INFO from the driver, warnings from its "
                                                              "workers, C++ errors); by default only prefscale's progress and errors")
    parser.set_defaults(func=_prints_help(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    data = _group(commands, "data", "validate, split, pair and describe battle data")

    p = _command(data, "validate", "split an input into clean battles and rejects with reasons", cmd_validate)
    p.add_argument("input", help="Parquet, CSV, JSONL or Arena JSON; local path or URI (s3://, gs://, file://)")
    p.add_argument("--out", help="clean Parquet (default: <input name>.clean.parquet in the working directory)")
    p.add_argument("--rejects", help="rejects Parquet (default: OUT.rejects.parquet)")
    p.add_argument("--lenient", action="store_true", help="salvage unparseable JSON text as one raw turn (flagged)")
    p.add_argument("--max-chars", type=_int_at_least(1), default=200_000, help="reject battles with more text than this")

    p = _command(data, "split", "deduplicate clean battles and assign prompt-grouped folds", cmd_split)
    p.add_argument("inputs", nargs="+", help="clean Parquet files from 'data validate'")
    p.add_argument("--out", required=True, help="battles Parquet with a fold column")
    p.add_argument("--rejects", help="duplicates Parquet (default: OUT.duplicates.parquet)")
    p.add_argument("--folds", type=_int_at_least(2), default=5, help="number of prompt-grouped folds")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the fold assignment")
    p.add_argument("--dedup", choices=["none", "exact", "swap"], default="swap",
                   help="drop duplicate battles: exact (same texts in the same order) or swap (also A/B swapped)")
    p.add_argument("--no-merge", action="store_true", help="keep the first duplicate's label instead of averaging votes")

    p = _command(data, "pairs", "unlabeled battles from a long (instruction, generator, output) table", cmd_pairs)
    p.add_argument("input", help="long table: one row per (instruction, generator, output), e.g. an AlpacaEval dump")
    p.add_argument("--out", required=True, help="battles Parquet file to write")
    p.add_argument("--swap", action="store_true", help="also write every pair with A and B swapped")
    p.add_argument("--sample-fraction", type=_fraction, default=1.0, help="keep each pair with this probability (seeded, stable)")
    p.add_argument("--max-pairs-per-instruction", type=_int_at_least(1), help="cap the pairs of one instruction (default: all)")
    p.add_argument("--max-instructions", type=_int_at_least(1), help="use only the first N instructions (default: all)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the sampling")

    p = _command(data, "stats", "rows, rejects, label balance, prior log loss, folds", cmd_stats)
    p.add_argument("input", help="battles in any supported format (raw, clean or split)")

    _stage_parser(commands, "run", "run the whole recipe from a config, or several configs in turn (the main job)", cmd_run, several=True)

    p = _stage_parser(commands, "score", "score battles with the config's models on a Ray Data actor pool (resumable)", cmd_score)
    p.add_argument("--input", help="battles Parquet (default: score.input or <run_dir>/battles.parquet)")
    p.add_argument("--out", help="output directory of Parquet parts (default: score.output)")
    p.add_argument("--rows", type=_int_at_least(1), help="score only the first N battles")
    p.add_argument("--no-tta", action="store_true", help="skip the A/B-swapped pass")
    p.add_argument("--cascade", action="store_true", help="score through the finished run's uncertainty cascade (report/cascade.json) "
                   "instead of score.models; output default <run_dir>/scores/cascade")
    p.add_argument("--send-fraction", type=_fraction, help="with --cascade: send each block's most uncertain share on at every stage")

    p = _stage_parser(commands, "pseudolabel", "soft labels for unlabeled battles from one or more models (scores them unless --scores)", cmd_pseudolabel)
    p.add_argument("--input", help="unlabeled battles (default: pseudolabel.input or <run_dir>/unlabeled_pairs.parquet)")
    p.add_argument("--scores", nargs="+", help="existing score directories (or cascade outputs) to average instead of scoring")
    p.add_argument("--out", help="pseudolabel Parquet (default: pseudolabel.output)")
    p.add_argument("--rows", type=_int_at_least(1), help="pseudolabel only the first N battles")

    p = _stage_parser(commands, "train", "K-fold training on Ray Train with OOF logits (teachers, then distilled students)", cmd_train)
    p.add_argument("--only", help="train only this named run from the config's train section")

    _stage_parser(commands, "members", "fit the cheap members (features, TF-IDF) per fold: OOF logits + all-data fits", cmd_members)

    _stage_parser(commands, "stack", "stack and calibrate the members' OOF logits (nested CV), then write the report", cmd_stack)

    p = _stage_parser(commands, "doctor", "check a recipe before submitting it: inputs, models (no weights downloaded), the runs it needs, "
                                         "the resource plan of every stage, cluster resources, GPUs, shared run directory", cmd_doctor,
                      several=True)
    p.add_argument("--nodes", help="check the resource plan against this cluster file's node types (cluster.yaml or k8s/rayjob.yaml) "
                                   "instead of contacting a cluster")

    p = _command(commands, "submit", "submit configs, in order (teachers, then their student), as one Ray job to a running cluster: "
                                     "the repository as its working directory, HF_TOKEN from your environment", cmd_submit)
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (`ray dashboard cluster.yaml` tunnels it)")
    p.add_argument("--config", required=True, nargs="+", action="extend", help="YAML recipes under configs/, in order")
    p.add_argument("--wait", action="store_true", help="follow the job's log until it ends; exit 2 unless it succeeded")

    p = _command(commands, "predict", "apply a finished run's ensemble to new battles; writes a Kaggle submission CSV", cmd_predict)
    p.add_argument("--run-dir", required=True, help="run directory of a finished `prefscale run`")
    p.add_argument("--input", required=True, help="battles in any supported format (labels optional: log loss is printed when present)")
    p.add_argument("--out", required=True, help="submission CSV: id, winner_model_a, winner_model_b, winner_tie")
    p.add_argument("--ties", choices=TIE_PROTOCOLS,
                   help="could the new battles' judges answer tie? 'none' puts no mass on tie (a `ties` column wins); "
                        "default: the run's data.ties by source, else allowed")
    p.add_argument("--verify", action="store_true", help="hash every file of the finished run against its manifest (default: only the "
                                                         "files whose size or modification time changed since it was sealed)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even when it is not a submission predict wrote")

    p = _command(commands, "cascade", "score battles through a finished run's uncertainty cascade: cheap stages for confident "
                                      "battles, expensive ones only for the rest", cmd_cascade)
    p.add_argument("--run-dir", required=True, help="run directory of a finished `prefscale run` whose config has a cascade section")
    p.add_argument("--input", required=True, help="battles as Parquet in the battle schema (prefscale data pairs / data validate)")
    p.add_argument("--out", required=True, help="output directory of Parquet parts, one row per battle (resumable by id)")
    p.add_argument("--send-fraction", type=_fraction, help="a compute budget: each block's most uncertain share goes on at every boundary "
                                                           "(default: the thresholds fitted on OOF)")
    p.add_argument("--rows", type=_int_at_least(1), help="only the first N battles")

    p = _command(commands, "compare", "a finished run's A / B / tie probabilities, and each member's, for one battle "
                                      "(or JSON Lines battles on stdin); nothing is written", cmd_compare)
    p.add_argument("--run-dir", required=True, help="run directory of a finished `prefscale run`")
    p.add_argument("--prompt", help="the user's prompt (text)")
    p.add_argument("--a", help="response A (text)")
    p.add_argument("--b", help="response B (text)")
    p.add_argument("--ties", choices=TIE_PROTOCOLS, help="'none': the judge could not answer tie (default: allowed)")

    p = _command(commands, "leaderboard", "rank the chatbots of scored or labeled battles: Bradley-Terry strengths with ties "
                                          "(Davidson), bootstrap intervals, a win-rate matrix", cmd_leaderboard)
    p.add_argument("--battles", required=True, help="battles with model_a, model_b (and labels, or pseudolabels' soft labels)")
    p.add_argument("--scores", nargs="+", help="score directories (prefscale score) whose probabilities rank the models; several are "
                                               "averaged (default: the battles' labels)")
    p.add_argument("--out", required=True, help="directory for leaderboard.{parquet,csv,md,png}, win_rate.parquet, rejects.parquet")
    p.add_argument("--run-dir", help="a finished run with a cascade: score the battles through it first (a long table "
                                     "instruction, generator, output is made into every pair)")
    p.add_argument("--send-fraction", type=_fraction, help="with --run-dir: a compute budget, each block's most uncertain share goes "
                                                           "on at every cascade boundary (default: the thresholds fitted on OOF)")
    p.add_argument("--bootstrap", type=_int_at_least(0), default=200, help="bootstrap resamples of the groups for the intervals")
    p.add_argument("--group-by", default="prompt", help="column whose values are resampled together (the instruction)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the bootstrap")
    p.add_argument("--style-control", choices=["off", "on", "both"], default="both",
                   help="also fit the strengths with style covariates (answer length, markdown headers, list items, bold; Chatbot Arena's "
                        "style control): 'both' ranks by the plain fit with the style-controlled rating beside it, 'on' by the latter alone")

    config = _group(commands, "config", "check configs, print their schema and reference")
    p = _command(config, "check", "validate YAML configs against the typed schema", cmd_config_check)
    p.add_argument("configs", nargs="+", help="YAML config files")
    _command(config, "schema", "print the JSON Schema of the typed config", cmd_config_schema)
    _command(config, "reference", "print the config reference (docs/CONFIG.md) generated from the typed config", cmd_config_reference)
    _command(config, "cli-reference", "print the command reference (docs/cli.md) generated from these parsers", cmd_cli_reference)

    p = _command(commands, "completion", "print a shell completion script: eval \"$(prefscale completion bash)\"", cmd_completion)
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")

    for sub in _all_subparsers(parser):
        if sub.get_default("func") not in (cmd_config_schema, cmd_config_reference, cmd_cli_reference, cmd_completion):
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
    from prefscale.ray_runtime import VERBOSE, quiet_libraries

    if args.verbose:
        os.environ[VERBOSE] = "1"
    quiet_libraries()
    started = time.perf_counter()
    try:
        result = args.func(args)
    except PrefscaleError as exc:
        print(f"prefscale: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unreadable input or an unwritable --out: say which, without a traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        advice = "free some space or write elsewhere; outputs are atomic, so rerun to finish" if exc.errno == errno.ENOSPC \
            else "check the path and its permissions"
        print(f"prefscale: error: {exc.strerror or exc}{where}; {advice}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefscale: interrupted; outputs are written atomically, so rerun to finish", file=sys.stderr)
        return 130
    except Exception as exc:  # a corrupt or truncated input file: pyarrow's error, on one line
        import pyarrow as pa

        if not isinstance(exc, pa.ArrowException):
            raise
        print(f"prefscale: error: cannot read an input: {' '.join(str(exc).split())[:500]}; is the file complete, and in the format its "
              f"name says (Parquet, CSV, JSON Lines)?", file=sys.stderr)
        return 2
    if result is not None:  # None: the command printed its own output
        result["elapsed_s"] = round(time.perf_counter() - started, 2)
        print(json.dumps(result, indent=None if args.json else 2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
