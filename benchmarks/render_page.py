"""docs/benchmarks.md, rendered from benchmarks/results/*.json: every figure with its command, date,
commit and machine. Never edited by hand; tests/test_docs.py fails when the page and the JSON disagree.
Usage: python benchmarks/render_page.py > docs/benchmarks.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REGENERATE = "python benchmarks/render_page.py > docs/benchmarks.md"
HEADER = ("benchmark", "command", "date", "commit", "machine")


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


def render() -> str:
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


def render_rankings() -> str:
    """docs/dump-leaderboard.md: the AlpacaEval dump's two rankings side by side and the style coefficients."""
    record = json.loads((RESULTS / "dump_leaderboard.json").read_text())
    style = record.get("style_control")
    lines = ["# The AlpacaEval dump, ranked two ways", "",
             f"Rendered from `benchmarks/results/dump_leaderboard.json` by `{REGENERATE_RANKINGS}`; measured by `{record['command']}` "
             f"on {record['date']} (commit {record.get('commit', 'not recorded')}, {record['machine']}).", ""]
    if not style:
        return "\n".join([*lines, "This result predates style control; rerun the benchmark."]) + "\n"
    lines += [f"{record['battles']:,} battles of {record['models']} chatbots, scored through the cascade, ranked by Davidson's "
              f"Bradley-Terry model with ties, once plain and once with style covariates (see [the leaderboard](leaderboard.md)). "
              f"Rank correlation with mean answer length: plain {record['spearman_rating_vs_mean_length']}, style-controlled "
              f"{record.get('spearman_style_rating_vs_mean_length')}; between the two rankings {style['spearman_plain_vs_style']}.", "",
              "| rank | plain | rating (95% interval) | style-controlled | rating (95% interval) |", "|---|---|---|---|---|"]
    for k, (plain, styled) in enumerate(zip(style["top10_plain"], style["top10_style_controlled"], strict=True), start=1):
        lines.append(f"| {k} | {plain['model']} | {plain['rating']} ({plain['low']}, {plain['high']}) | {styled['model']} | "
                     f"{styled['rating']} ({styled['low']}, {styled['high']}) |")
    lines += ["", "Style coefficients (per unit of each covariate's spread; positive: more of it wins):", "",
              "| feature | coefficient | 95% interval |", "|---|---|---|"]
    lines += [f"| {c['feature']} | {c['coefficient']} | ({c['low']}, {c['high']}) |" for c in style["coefficients"]]
    lines += ["", *(f"- {note}" for note in style["notes"]), "", "![both rankings](img/dump_leaderboard.png)"]
    return "\n".join(lines).rstrip() + "\n"


REGENERATE_RANKINGS = "python benchmarks/render_page.py --rankings > docs/dump-leaderboard.md"


if __name__ == "__main__":
    sys.stdout.write(render_rankings() if "--rankings" in sys.argv else render())
