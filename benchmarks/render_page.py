"""The user guide's measured pages, rendered from benchmarks/results/*.json: the benchmarks page
(every figure with its command, date, commit and machine), the local recipe's results, the dump's
two rankings, the README's result table, and the guide's pictures (copies of results/*.png).
Never edited by hand; tests/test_docs.py fails when a page and the JSON disagree.
Usage: python benchmarks/render_page.py
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs"
REGENERATE = "python benchmarks/render_page.py"
HEADER = ("benchmark", "command", "date", "commit", "machine")
README_BLOCK = re.compile(r"(<!-- results table: rendered by benchmarks/render_page.py -->\n)(.*?)(<!-- end of results table -->)", re.DOTALL)
SOURCE_NAMES = {"arena": "arena", "hh_rlhf_harmless_test": "hh_rlhf", "llmeval2": "llmeval2", "pandalm_testset": "pandalm"}


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _provenance(record: dict, name: str) -> str:
    return (f"measured by `{record.get('command', 'not recorded')}` on {record.get('date', 'an unrecorded date')} (commit "
            f"{record.get('commit', 'not recorded')}, {record.get('machine', 'machine not recorded')}; `benchmarks/results/{name}.json`)")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
        return text if len(text) <= 160 else text[:157] + "..."
    return str(value)


def _rows(record: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Every figure of a record, nested keys joined with '.', lists of runs left to the JSON file."""
    rows = []
    for key, value in record.items():
        if not prefix and key in HEADER:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and len(json.dumps(value)) > 160:
            rows += _rows(value, f"{name}.")
        elif isinstance(value, list) and len(json.dumps(value)) > 160:
            rows.append((name, f"{len(value)} entries (see the JSON file)"))
        else:
            rows.append((name, _cell(value)))
    return rows


def render_benchmarks() -> str:
    """docs/benchmarks.md: every results file, every figure."""
    lines = ["# Benchmarks", "", f"Rendered from `benchmarks/results/*.json` by `{REGENERATE}`; each script in `benchmarks/` writes its file.",
             "Speeds are of one machine on one day: compare the figures within one file (each was measured in one run), not across files.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        lines += [f"## {path.stem}", "", record.get("benchmark", ""), ""]
        lines += [f"- command: `{record.get('command', 'not recorded')}`", f"- date: {record.get('date', 'not recorded')}",
                  f"- commit: {record.get('commit', 'not recorded')}", f"- machine: {record.get('machine', 'not recorded')}",
                  f"- file: `benchmarks/results/{path.name}`", ""]
        rows = _rows(record)
        if rows:
            escape = lambda text: text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
            lines += ["| figure | value |", "|---|---|", *(f"| {escape(k)} | {escape(v)} |" for k, v in rows), ""]
    return "\n".join(lines).rstrip() + "\n"


def results_table(stacking: dict, full: bool = False) -> str:
    """Log loss out of fold, overall and per source, against each source's own prior (README and results page)."""
    table, sources = stacking["table"], list(stacking["datasets"])
    header = ["model", "all", *(f"{SOURCE_NAMES.get(s, s)} ({stacking['datasets'][s]:,})" for s in sources)]
    rows = [("class prior (out of fold, pooled)", "class prior (out of fold)")] if full else []
    rows += [("source prior (out of fold): the bar per source", "source prior (out of fold)"), ("features member", "features"),
             ("TF-IDF member", "tfidf"), ("MiniLM student (distilled, pseudolabels, folds averaged)", "student")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, key in rows:
        row = table[key]
        lines.append(f"| {label} | {row['log_loss']:.4f} | " + " | ".join(f"{row['per_dataset'][s]:.4f}" for s in sources) + " |")
    teacher = stacking.get("recipe", {}).get("train_runs", {}).get("teacher")
    if full and teacher:
        lines.append(f"| MiniLM teacher (it teaches; not stacked) | {teacher['oof_log_loss']:.4f} |" + " |" * len(sources))
    final = table["ensemble (final)"]
    lines.append(f"| **stacked ensemble** | **{final['log_loss']:.4f}** | " + " | ".join(f"**{final['per_dataset'][s]:.4f}**" for s in sources) + " |")
    return "\n".join(lines) + "\n"


def _style_table(reliance: dict) -> list[str]:
    features = list(next(iter(reliance["sets"].values())))
    lines = ["| predictions | " + " | ".join(f"{f}: coefficient (ratio to humans, 95% interval)" for f in features) + " |",
             "|" + "---|" * (len(features) + 1)]
    for name, coefficients in reliance["sets"].items():
        cells = []
        for feature in features:
            c = coefficients[feature]
            ratio = "" if name == reliance["reference"] else f" ({c['ratio_to_reference']}, {c['ratio_low']} to {c['ratio_high']})"
            cells.append(f"{c['coefficient']}{ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _transfer_table(transfer: dict) -> list[str]:
    columns = list(transfer["mean"])
    lines = ["| left-out source | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for source, row in transfer["per_source"].items():
        lines.append(f"| {SOURCE_NAMES.get(source, source)} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{transfer['mean'][c]:.4f}**" for c in columns) + " |")
    return lines


def render_results() -> str:
    """docs/results.md: what `make demo` measured."""
    stacking, demo, precision = _load("stacking"), _load("demo"), _load("precision")
    targets = stacking["targets"]
    lines = ["# Results of the local recipe", "",
             f"Rendered by `{REGENERATE}` from the benchmark files named below; every figure is in [the benchmarks page](benchmarks.md).", "",
             "## Log loss, out of fold", "",
             f"`make demo`'s run, restacked and reported by the benchmark: {_provenance(stacking, 'stacking')}. All {stacking['rows']:,} "
             "labeled battles of `../shared/data`, out of fold (nested cross-validation for the ensemble), each battle under its label "
             "protocol (the forced-choice `hh_rlhf` battles are scored by P(winner | not a tie)). A source's own out-of-fold prior is the "
             "bar a model must clear on it: the pooled prior is easy to beat by recognising the source.", "",
             results_table(stacking, full=True).rstrip(), ""]
    best = targets["ensemble_gain_vs_best_member"]
    per_source = targets["every_source_below_its_own_prior"]
    below = [SOURCE_NAMES.get(s, s) for s, t in per_source.items() if t["met"]]
    lines += [f"- The ensemble is {best['value']} below its best member ({best['best_member']}); target {best['target']}: "
              f"{'met' if best['met'] else 'not met'}.",
              f"- It is below its own source's prior on {len(below)} of {len(per_source)} sources"
              + (f" ({', '.join(below)})." if below else "."),
              f"- Calibration never made it worse ({targets['calibration_never_worse']['stacked']} stacked, "
              f"{targets['calibration_never_worse']['calibrated']} calibrated); Ray Tune's blend search ended "
              f"{targets['tune_within_0.001_of_powell']['value']} from Powell's.", ""]
    flips = {m: stacking["table"][m].get("swap_flip_share") for m in ("features", "tfidf", "student")}
    shown = ", ".join(f"{m} {v}" for m, v in flips.items() if v is not None)
    if shown:
        lines += [f"Swap-flip share (how often exchanging A and B flips the verdict, which a preference model should rarely do): {shown}.", ""]
    if demo:
        runs = demo["runs"]
        stages = sorted({s for r in runs.values() for s in r["stage_seconds"]}, key=lambda s: -max(r["stage_seconds"].get(s, 0) for r in runs.values()))
        lines += ["## Time", "", f"The whole recipe, one run after the other: {_provenance(demo, 'demo')}.", "",
                  "| stage | " + " | ".join(f"scoring at {p} (s)" for p in runs) + " |", "|" + "---|" * (len(runs) + 1)]
        lines += [f"| {s} | " + " | ".join(str(r["stage_seconds"].get(s, "")) for r in runs.values()) + " |" for s in stages]
        lines += ["| **end to end** | " + " | ".join(f"**{r['wall_s']}** ({r['wall_s'] / 60:.1f} min)" for r in runs.values()) + " |", ""]
        if "int8_speedup_end_to_end" in demo:
            shipped = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())["score"].get("precision")
            moved = runs["int8"]["ensemble_log_loss"] - runs["fp32"]["ensemble_log_loss"]
            lines += [f"Scoring at int8 makes the whole recipe {demo['int8_speedup_end_to_end']}x as fast. The OOF log losses of the two runs: "
                      + "; ".join(f"{p}: " + ", ".join(f"{k} {v}" for k, v in r["oof_log_loss"].items()) + f", ensemble {r['ensemble_log_loss']}"
                                  for p, r in runs.items()) + f". End to end the ensemble moves by {moved:+.4f}: the student learns from the "
                      "teacher's held-out scores and pseudolabels, so the scoring precision also changes what it is trained on (the "
                      f"next section holds the trained folds fixed). `configs/local.yaml` scores at {shipped}.", ""]
    if precision:
        lines += ["## int8 against fp32", "", f"The same trained folds scored both ways: {_provenance(precision, 'precision')}.", "",
                  "| held-out folds of | fp32 | int8 | int8 - fp32 | largest / p99 / mean probability change |", "|---|---|---|---|---|"]
        for name, r in precision["runs"].items():
            lines.append(f"| {name} | {r['fp32_oof_log_loss']} | {r['int8_oof_log_loss']} | {r['int8_minus_fp32']:+} | "
                         f"{r['largest_probability_change']} / {r['p99_probability_change']} / {r['mean_probability_change']} |")
        e = precision["ensemble_nested_cv"]
        lines += [f"| stacked ensemble (restacked) | {e['fp32']} | {e['int8']} | {e['int8_minus_fp32']:+} | |", "",
                  f"Targets: each train run within {precision['targets']['train_run']}, the ensemble within {precision['targets']['ensemble']}: "
                  f"{'met' if precision['met'] else 'not met'}.", ""]
    reliance = stacking.get("style_reliance")
    if reliance:
        lines += ["## Style reliance", "",
                  f"Style coefficients fitted without model strengths on the {reliance['battles']:,} labeled battles, from the human labels and "
                  f"from each member's and the ensemble's out-of-fold predictions, with one bootstrap over {reliance['groups']:,} prompts "
                  f"({reliance['bootstrap']} resamples) shared by every row, so each ratio to the humans' has an interval "
                  "(see [the leaderboard](leaderboard.md)). A ratio far above 1 is a model that learned 'longer wins' beyond what people showed.", "",
                  *_style_table(reliance), ""]
    transfer = stacking.get("leave_one_source_out")
    if transfer:
        verdict = targets.get("leave_one_source_out_ensemble_beats_its_prior", {})
        lines += ["## Across sources", "",
                  "Each source left out in turn: the cheap members and their stack refitted on the other three and scored on it (neural runs "
                  "are not refitted per source: that would multiply their cost by four), against the prior of the other sources. "
                  "'unseen-source mixture' mixes the ensemble with that prior at the weight an inner leave-one-source-out picks "
                  f"(fitted on all four sources: {transfer['unseen_weight']}).", "", *_transfer_table(transfer), "",
                  f"On a source it never saw, the best of the ensemble and the mixture {'beats' if verdict.get('met') else 'does not beat'} "
                  f"the prior ({min(verdict.get('ensemble', 9), verdict.get('unseen_source_mixture', 9))} against {verdict.get('prior')}): "
                  + ("what these sources reward does not carry from one to another yet." if not verdict.get("met") else "it transfers."), ""]
    lines += ["## Pictures", "", "The ensemble's reliability diagram (`report/reliability.png`) and the cascade's log loss against the share "
              "sent past its first stage (`report/cascade.png`), from the same run:", "",
              "![reliability diagram](img/local_reliability.png)", "", "![cascade curve](img/local_cascade.png)"]
    return "\n".join(lines).rstrip() + "\n"


def render_rankings() -> str:
    """docs/dump-leaderboard.md: the AlpacaEval dump's two rankings side by side and the style coefficients."""
    record = _load("dump_leaderboard")
    style = record.get("style_control")
    lines = ["# The AlpacaEval dump, ranked two ways", "", f"Rendered by `{REGENERATE}`; {_provenance(record, 'dump_leaderboard')}.", ""]
    if not style:
        return "\n".join([*lines, "This result predates style control; rerun the benchmark."]) + "\n"
    seconds = record["seconds"]
    lines += [f"{record['battles']:,} battles of {record['models']} chatbots, one command (`prefscale leaderboard --run-dir`): "
              f"{record['wall_s']} s wall (target {record['target_wall_s']} s; pairs {seconds['pairs']} s, cascade {seconds['cascade']} s at "
              f"{record['cascade_rows_per_s']:,.0f} battles/s, fits {seconds['leaderboard']} s), whole process tree peak PSS "
              f"{record['peak_pss_gib']} GiB (target {record['target_peak_gib']} GiB). Routing: {record['cascade']['routing']}, battles decided "
              "per stage: " + ", ".join(f"{k} {v:,}" for k, v in record["cascade"]["decided_by_stage"].items()) + ".", "",
              "Both rankings come from Davidson's Bradley-Terry model with ties, once plain and once with style covariates "
              f"(see [the method](leaderboard.md)). Rank correlation with mean answer length: plain {record['spearman_rating_vs_mean_length']}, "
              f"style-controlled {record.get('spearman_style_rating_vs_mean_length')}; between the two rankings {style['spearman_plain_vs_style']}.", "",
              "| rank | plain | rating (95% interval) | style-controlled | rating (95% interval) |", "|---|---|---|---|---|"]
    for k, (plain, styled) in enumerate(zip(style["top10_plain"], style["top10_style_controlled"], strict=True), start=1):
        lines.append(f"| {k} | {plain['model']} | {plain['rating']} ({plain['low']}, {plain['high']}) | {styled['model']} | "
                     f"{styled['rating']} ({styled['low']}, {styled['high']}) |")
    lines += ["", "Style coefficients (per unit of each covariate's spread; positive: more of it wins):", "",
              "| feature | coefficient | 95% interval |", "|---|---|---|"]
    lines += [f"| {c['feature']} | {c['coefficient']} | ({c['low']}, {c['high']}) |" for c in style["coefficients"]]
    lines += ["", *(f"- {note}" for note in style["notes"]), "", "![both rankings](img/dump_leaderboard.png)"]
    return "\n".join(lines).rstrip() + "\n"


def readme(current: str) -> str:
    """README.md with its results table re-rendered from stacking.json."""
    if not README_BLOCK.search(current):
        raise SystemExit("README.md has no results-table markers")
    return README_BLOCK.sub(lambda m: m.group(1) + results_table(_load("stacking")) + m.group(3), current)


PAGES = {DOCS / "benchmarks.md": render_benchmarks, DOCS / "results.md": render_results, DOCS / "dump-leaderboard.md": render_rankings}


def stale() -> list[str]:
    """Generated files that differ from what the results render to."""
    found = [str(p.relative_to(REPO)) for p, render in PAGES.items() if not p.exists() or p.read_text() != render()]
    if (REPO / "README.md").read_text() != readme((REPO / "README.md").read_text()):
        found.append("README.md")
    for picture in RESULTS.glob("*.png"):
        copy = DOCS / "img" / picture.name
        if not copy.exists() or copy.read_bytes() != picture.read_bytes():
            found.append(str(copy.relative_to(REPO)))
    return found


def main() -> None:
    for path, render in PAGES.items():
        path.write_text(render())
    (REPO / "README.md").write_text(readme((REPO / "README.md").read_text()))
    (DOCS / "img").mkdir(exist_ok=True)
    for picture in RESULTS.glob("*.png"):
        shutil.copyfile(picture, DOCS / "img" / picture.name)
    print("\n".join(str(p.relative_to(REPO)) for p in PAGES) + "\nREADME.md\ndocs/img/", file=sys.stderr)


if __name__ == "__main__":
    main()
