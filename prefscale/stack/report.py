"""The run report: per-member and ensemble OOF log loss and accuracy, per source beside that
source's own out-of-fold prior, and a reliability diagram before and after calibration.
Forced-choice sources are scored by P(winner | not a tie). Reads only the run's Parquet outputs.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa

from prefscale.artifacts import swap_flip_share
from prefscale.cascade.fit import cascade_markdown, cascade_plot, fit_cascade
from prefscale.config import CascadeConfig
from prefscale.data import schema
from prefscale.io import exists, read_json, read_table, write_bytes, write_json
from prefscale.layout import CHEAP_ENSEMBLE, ENSEMBLE, RunLayout
from prefscale.metrics import class_prior, log_loss, out_of_fold_prior, without_ties
from prefscale.stack.data import StackData, load_stack_data

CHEAP_ENSEMBLE_ROW = "ensemble of cheap members (final)"
ENSEMBLE_COLUMNS = {"ensemble (stacked)": "raw", "ensemble (calibrated)": "calibrated", "ensemble (final)": "final"}


def _scores(labels: np.ndarray, probs: np.ndarray, ties: np.ndarray) -> dict[str, float]:
    return {"log_loss": round(log_loss(labels, probs, ties), 4),
            "accuracy": round(float((labels.argmax(1) == without_ties(probs, ties).argmax(1)).mean()), 4)}


def source_prior(data: StackData) -> np.ndarray:
    """Each battle predicted by its own source's balance in the other folds: the baseline a
    model must beat on that source (the pooled prior is mostly the mix of sources)."""
    probs = np.empty(data.labels.shape)
    for source in np.unique(data.datasets):
        rows = data.datasets == source
        probs[rows] = out_of_fold_prior(data.labels[rows], data.folds[rows], data.ties[rows])
    return probs


def prediction_table(data: StackData, layout: RunLayout) -> dict[str, np.ndarray]:
    """Every member's and every ensemble stage's OOF probabilities, aligned with ``data.ids``."""
    predictions = {m: np.exp(data.logp[:, i]) for i, m in enumerate(data.members)}
    ensemble = read_table(layout.stack_file("oof.parquet")).to_pandas().set_index(schema.ID).loc[data.ids]
    for label, kind in ENSEMBLE_COLUMNS.items():
        predictions[label] = ensemble[[f"{kind}_{c}" for c in schema.CLASSES]].to_numpy()
    if exists(layout.stack_file("oof.parquet", CHEAP_ENSEMBLE)):  # fitted when a cascade starts with it
        cheap = read_table(layout.stack_file("oof.parquet", CHEAP_ENSEMBLE)).to_pandas().set_index(schema.ID).loc[data.ids]
        predictions[CHEAP_ENSEMBLE_ROW] = cheap[[f"final_{c}" for c in schema.CLASSES]].to_numpy()
    predictions["class prior"] = np.broadcast_to(class_prior(data.labels, data.ties), data.labels.shape)
    predictions["class prior (out of fold)"] = out_of_fold_prior(data.labels, data.folds, data.ties)
    predictions["source prior (out of fold)"] = source_prior(data)
    return predictions


def reliability_plot(labels: np.ndarray, before: np.ndarray, after: np.ndarray, path: str, bins: int = 10) -> None:
    """Top-label reliability: mean confidence against accuracy per confidence bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for axis, probs, title in ((axes[0], before, "before calibration"), (axes[1], after, "after calibration")):
        confidence, correct = probs.max(axis=1), labels.argmax(axis=1) == probs.argmax(axis=1)
        edges = np.linspace(1 / 3, 1.0, bins + 1)
        which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
        filled = [b for b in range(bins) if (which == b).any()]
        axis.plot([1 / 3, 1], [1 / 3, 1], "--", color="grey", label="perfect")
        axis.plot([confidence[which == b].mean() for b in filled], [correct[which == b].mean() for b in filled], "o-",
                  label=f"log loss {log_loss(labels, probs):.4f}")
        axis.set(title=title, xlabel="confidence of the predicted class", xlim=(0.3, 1), ylim=(0, 1))
        axis.legend(loc="upper left")
    axes[0].set_ylabel("accuracy")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    plt.close(figure)
    write_bytes(png.getvalue(), path)


def cascade_stage_probs(data: StackData, layout: RunLayout, predictions: dict[str, np.ndarray], stages: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each cascade stage's OOF probabilities (a stacked member's, the final ensemble's, or a train
    run's own OOF), and which battles have all of them: a run trained on some folds only fits
    the cascade on those folds' battles."""
    found = {**predictions, ENSEMBLE: predictions["ensemble (final)"]}
    if CHEAP_ENSEMBLE_ROW in predictions:
        found[CHEAP_ENSEMBLE] = predictions[CHEAP_ENSEMBLE_ROW]
    probs, rows = {}, np.ones(len(data.ids), dtype=bool)
    for stage in stages:
        if stage in found:
            probs[stage] = found[stage]
            continue
        oof = read_table(layout.oof(stage), columns=[schema.ID, *schema.PROBS]).to_pandas().set_index(schema.ID)
        aligned = oof.reindex(data.ids)[list(schema.PROBS)].to_numpy(dtype=np.float64)
        probs[stage] = aligned
        rows &= ~np.isnan(aligned).any(axis=1)
    return {stage: p[rows] for stage, p in probs.items()}, rows


def write_report(layout: RunLayout, members: list[str], cascade: CascadeConfig | None = None) -> dict[str, Any]:
    """report.json and report.md from the run's OOF and stack outputs (no model is fitted here;
    the cascade's thresholds are chosen on those OOF predictions)."""
    data = load_stack_data(layout, members)
    predictions = prediction_table(data, layout)
    cascade_fit = None
    if cascade is not None:
        stage_probs, rows = cascade_stage_probs(data, layout, predictions, cascade.stages)
        cascade_fit = fit_cascade(stage_probs, data.labels[rows], data.ties[rows], cascade)
        write_json(cascade_fit, layout.cascade_fit)
        cascade_plot(cascade_fit, layout.report_file("cascade.png"))
    datasets = sorted(set(data.datasets))
    table = {
        name: {**_scores(data.labels, probs, data.ties),
               "per_dataset": {d: _scores(data.labels[data.datasets == d], probs[data.datasets == d], data.ties[data.datasets == d])["log_loss"]
                               for d in datasets}}
        for name, probs in predictions.items()
    }
    reliability_plot(data.labels, without_ties(predictions["ensemble (stacked)"], data.ties), without_ties(predictions["ensemble (final)"], data.ties),
                     layout.report_file("reliability.png"))
    for member in data.members:
        table[member]["swap_flip_share"] = swap_flip_share(read_table(layout.oof(member)))
    best_member = min(data.members, key=lambda m: table[m]["log_loss"])
    report = {
        "rows": len(data.ids), "datasets": {d: int((data.datasets == d).sum()) for d in datasets},
        "forced_choice": {d: int((~data.ties[data.datasets == d]).sum()) for d in datasets}, "table": table,
        "best_member": best_member,
        "ensemble_gain_vs_best_member": round(table[best_member]["log_loss"] - table["ensemble (final)"]["log_loss"], 4),
        "reliability_png": layout.report_file("reliability.png"),
        "leave_one_source_out": read_json(layout.stack_summary).get("leave_one_source_out") or None,
        "cascade": {k: v for k, v in cascade_fit.items() if k != "curve"} if cascade_fit else None,
        "style_reliance": _style_reliance(layout, data, predictions),
    }
    write_json(report, layout.report_file("report.json"))
    _write_markdown(report, datasets, layout.report_file("report.md"), cascade_markdown(cascade_fit) if cascade_fit else [])
    return report


HUMANS = "humans (labels)"


def _style_reliance(layout: RunLayout, data: StackData, predictions: dict[str, np.ndarray]) -> dict[str, Any]:
    """Style coefficients fitted from the human labels and from each member's and the ensemble's OOF
    predictions, on the same battles, side by side (prefscale/style.py)."""
    import pyarrow.compute as pc

    from prefscale.style import STYLE_FEATURES, answer_style, standardized, style_differences, style_reliance

    battles = read_table(layout.battles, columns=[schema.ID, schema.PROMPT, schema.RESPONSE_A, schema.RESPONSE_B])
    order = pc.index_in(pa.array(data.ids), battles.column(schema.ID)).to_numpy(zero_copy_only=False)
    battles = battles.take(order)
    covariates, kept, _ = standardized(style_differences(answer_style(battles.column(schema.RESPONSE_A).combine_chunks()),
                                                         answer_style(battles.column(schema.RESPONSE_B).combine_chunks())), list(STYLE_FEATURES))
    groups = pc.dictionary_encode(battles.column(schema.PROMPT).combine_chunks()).indices.to_numpy(zero_copy_only=False)
    verdicts = {HUMANS: data.labels.astype(np.float64), **{m: predictions[m] for m in data.members}, "ensemble (final)": predictions["ensemble (final)"]}
    return style_reliance(covariates, verdicts, groups, kept, HUMANS)


def _write_markdown(report: dict[str, Any], datasets: list[str], path: str, cascade: list[str]) -> None:
    lines = ["# OOF report (nested cross-validation for every ensemble row)", "",
             f"{report['rows']} battles; best member `{report['best_member']}`; ensemble gain {report['ensemble_gain_vs_best_member']}", "",
             "| model | log loss | accuracy | swap flips | " + " | ".join(datasets) + " |", "|---|---|---|---|" + "---|" * len(datasets)]
    for name, row in report["table"].items():
        flips = "" if row.get("swap_flip_share") is None else row["swap_flip_share"]
        lines.append(f"| {name} | {row['log_loss']} | {row['accuracy']} | {flips} | " + " | ".join(str(row["per_dataset"][d]) for d in datasets) + " |")
    lines += ["", "`class prior` predicts every battle at the balance of all rows, its own fold's labels included; "
              "`class prior (out of fold)` uses the other folds' balance, as every OOF prediction must; "
              "`source prior (out of fold)` uses the other folds' balance of the battle's own source: a model that does not beat it "
              "on a source has learned which source a battle comes from, not which answer people prefer.", "",
              "Forced-choice battles (protocol `none`: " + (", ".join(f"{d} {n}" for d, n in report["forced_choice"].items() if n) or "none") +
              ") are scored by P(winner | not a tie).", "",
              "`swap flips`: per member, the share of battles whose verdict from one order alone (the most likely of A, B, tie) changes "
              "when A and B are exchanged: its position bias. The predictions themselves are the mean over both orders (cheap members "
              "always, neural runs with `tta` on), so the bias is averaged out of them; a run scored in one order shows no share.", "",
              "![reliability](reliability.png)", "", *_transfer_markdown(report["leave_one_source_out"]), *_style_markdown(report["style_reliance"]),
              *cascade]
    write_bytes("\n".join(lines).encode(), path)


def _style_markdown(reliance: dict[str, Any] | None) -> list[str]:
    if not reliance:
        return []
    sets = reliance["sets"]
    features = list(next(iter(sets.values())))
    lines = ["## Style reliance", "",
             "How much a set of verdicts leans on style: Davidson's model with ties fitted on style covariates alone (per feature, A's value "
             "minus B's over their sum, scaled to unit spread: answer length in characters, markdown headers, list items, bold spans), "
             f"from the human labels and from each member's and the ensemble's OOF predictions, on the same {reliance['battles']} battles. "
             f"95% intervals from {reliance['bootstrap']} bootstrap resamples of the {reliance['groups']} prompts, shared by every row, so "
             "`x humans` (a coefficient over the humans' on the same resample) has an interval too. A member far above the humans on "
             "length has learned that longer answers win more than people showed it.", "",
             "| verdicts | " + " | ".join(f"{f} | {f} x humans" for f in features) + " |", "|---|" + "---|---|" * len(features)]
    for name, row in sets.items():
        cells = []
        for feature in features:
            c = row[feature]
            ratio = "" if c["ratio_to_reference"] is None else f"{c['ratio_to_reference']} ({c['ratio_low']}, {c['ratio_high']})"
            cells += [f"{c['coefficient']} ({c['low']}, {c['high']})", ratio]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _transfer_markdown(transfer: dict[str, Any] | None) -> list[str]:
    if not transfer:
        return []
    sources = list(transfer["per_source"])
    lines = ["## Leave one source out", "",
             "Each source predicted by models fitted without it (cheap members and their stack; neural runs are not refitted per source). "
             "This, not the OOF table, is the figure for data unlike the training data.", "",
             "| model | mean | " + " | ".join(f"{s} ({transfer['rows'][s]})" for s in sources) + " |", "|---|---|" + "---|" * len(sources)]
    for name, mean in transfer["mean"].items():
        lines.append(f"| {name} | {mean} | " + " | ".join(str(transfer["per_source"][s][name]) for s in sources) + " |")
    winner = transfer.get("winner_given_not_tie")
    if winner:
        lines += ["", "The same, scoring only P(winner | not a tie) on the battles not judged a tie (0.6931 is a coin flip): "
                  "whether the preference itself carries over, apart from the tie rate.", "",
                  "| model | mean | " + " | ".join(sources) + " |", "|---|---|" + "---|" * len(sources)]
        lines += [f"| {name} | {mean} | " + " | ".join(str(winner["per_source"][s][name]) for s in sources) + " |" for name, mean in winner["mean"].items()]
    if "unseen_weight" in transfer:
        lines += ["", "`ensemble, unseen-source mixture` is w x ensemble + (1 - w) x prior, each source's w chosen by leave-one-source-out "
                  "among the other sources (" + ", ".join(f"{s} {w}" for s, w in transfer["inner_weight"].items()) +
                  f"). Fitted on every source, w = {transfer['unseen_weight']}: the share of the cheap ensemble worth keeping on a source never seen."]
    return [*lines, ""]
