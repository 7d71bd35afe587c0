"""Fit a cascade's thresholds on OOF predictions, and draw its log loss against compute.

One number sets the whole cascade: the share ``f`` of the battles reaching a stage that go on
to the next (the most uncertain ones). On OOF, ``f`` becomes one uncertainty threshold per
boundary; a run then routes new battles by those thresholds, or, under a compute budget
(``send_fraction``), sends each block's most uncertain share ``f``. The chosen ``f`` is the
smallest on a 1% grid whose OOF log loss is within ``tolerance`` of the last stage alone,
capped at ``max_sent``; when the cap binds first, the fit says the target was not met.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from prefscale.config import CascadeConfig
from prefscale.io import write_bytes
from prefscale.metrics import log_loss, without_ties

GRID = np.round(np.arange(0, 101) / 100, 2)


def uncertainty(probs: np.ndarray, kind: str) -> np.ndarray:
    """Larger is less sure: the entropy of a prediction, or one minus its top-two gap."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    if kind == "entropy":
        return -(p * np.log(p)).sum(axis=1)
    top_two = np.sort(p, axis=1)[:, -2:]
    return 1.0 - (top_two[:, 1] - top_two[:, 0])


def fraction_cut(u: np.ndarray, fraction: float) -> float:
    """The uncertainty at or above which the most uncertain share ``fraction`` of ``u`` lies
    (inf when that share rounds to no battle)."""
    k = int(round(fraction * len(u)))
    return float(np.sort(u)[::-1][k - 1]) if k > 0 else np.inf


def most_uncertain(u: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the most uncertain share ``fraction`` of ``u``: exactly round(fraction * len(u)) battles,
    ties broken by position, so a budget holds even where a stage gives many battles one uncertainty
    (a collapsed model: a cut at that value would send them all)."""
    mask = np.zeros(len(u), dtype=bool)
    mask[np.argsort(-u, kind="stable")[: int(round(fraction * len(u)))]] = True
    return mask


def route(stage_probs: list[np.ndarray], kind: str, fraction: float | None = None,
          thresholds: list[float | None] | None = None) -> tuple[np.ndarray, np.ndarray, list[float | None]]:
    """(final probabilities, index of the deciding stage, thresholds used) for battles routed by
    a share ``fraction`` at every boundary, or by fixed ``thresholds``."""
    n = len(stage_probs[0])
    final, decided = np.array(stage_probs[0], dtype=np.float64), np.zeros(n, dtype=np.int64)
    reached = np.ones(n, dtype=bool)
    used: list[float] = []
    for b in range(len(stage_probs) - 1):
        u = uncertainty(stage_probs[b], kind)
        if thresholds is not None:
            cut = np.inf if thresholds[b] is None else thresholds[b]
            sent = reached & (u >= cut) if np.isfinite(cut) else np.zeros(n, dtype=bool)
        else:
            cut = fraction_cut(u[reached], fraction)
            sent = np.zeros(n, dtype=bool)
            sent[np.flatnonzero(reached)[most_uncertain(u[reached], fraction)]] = True
        final[sent] = stage_probs[b + 1][sent]
        decided[sent] = b + 1
        reached = sent
        used.append(float(cut) if np.isfinite(cut) else None)  # None: nothing goes on
    return final, decided, used


def fit_cascade(stage_probs: dict[str, np.ndarray], labels: np.ndarray, ties: np.ndarray, settings: CascadeConfig) -> dict[str, Any]:
    """The log-loss-against-compute curve over the grid of shares, and the chosen setting."""
    probs = [without_ties(np.asarray(stage_probs[name], dtype=np.float64), ties) for name in settings.stages]
    alone = {name: round(log_loss(labels, p, ties), 5) for name, p in zip(settings.stages, probs, strict=True)}
    target = alone[settings.stages[-1]] + settings.tolerance
    curve = []
    for fraction in GRID:
        final, decided, thresholds = route(probs, settings.uncertainty, fraction=float(fraction))
        reached = [round(float((decided >= k).mean()), 4) for k in range(len(probs))]
        curve.append({"fraction": float(fraction), "log_loss": round(log_loss(labels, final, ties), 5), "reached": reached,
                      "thresholds": thresholds})
    allowed = [point for point in curve if point["fraction"] <= settings.max_sent]
    meeting = [point for point in allowed if point["log_loss"] <= target]
    chosen = meeting[0] if meeting else min(allowed, key=lambda point: point["log_loss"])
    return {
        "stages": list(settings.stages), "uncertainty": settings.uncertainty, "tolerance": settings.tolerance, "max_sent": settings.max_sent,
        "battles": int(len(labels)), "stage_alone_log_loss": alone, "target_log_loss": round(target, 5),
        "chosen": {**chosen, "met": bool(meeting), "sent_past_first": chosen["reached"][1]},
        "curve": curve,
    }


def cascade_plot(fit: dict[str, Any], path: str) -> None:
    """Log loss against the share sent past stage 1, each stage alone as a line, the choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    sent = [point["reached"][1] for point in fit["curve"]]
    axis.plot(sent, [point["log_loss"] for point in fit["curve"]], "-", label=" -> ".join(fit["stages"]))
    for name, value in fit["stage_alone_log_loss"].items():
        axis.axhline(value, linestyle=":", color="grey")
        axis.annotate(f"{name} alone", (1.0, value), ha="right", va="bottom", fontsize=8)
    chosen = fit["chosen"]
    axis.plot([chosen["sent_past_first"]], [chosen["log_loss"]], "o", color="black",
              label=f"chosen: {chosen['sent_past_first']:.0%} sent on, log loss {chosen['log_loss']:.4f}")
    axis.set(xlabel="share of battles sent past stage 1", ylabel="OOF log loss", title="cascade: log loss against compute")
    axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    plt.close(figure)
    write_bytes(png.getvalue(), path)


def cascade_markdown(fit: dict[str, Any]) -> list[str]:
    chosen = fit["chosen"]
    verdict = "within" if chosen["met"] else "NOT within"
    lines = ["## Uncertainty cascade", "",
             f"Stages {' -> '.join(f'`{s}`' for s in fit['stages'])}, routed by {fit['uncertainty']}. Chosen: send the most uncertain "
             f"{chosen['fraction']:.0%} at each boundary ({chosen['sent_past_first']:.1%} of battles past stage 1): OOF log loss "
             f"{chosen['log_loss']}, {verdict} {fit['tolerance']} of `{fit['stages'][-1]}` alone ({fit['stage_alone_log_loss'][fit['stages'][-1]]}).",
             "", "| share sent on | log loss | " + " | ".join(f"reach {s}" for s in fit["stages"]) + " |", "|---|---|" + "---|" * len(fit["stages"])]
    for point in fit["curve"]:
        if point["fraction"] in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0) or point is chosen or point["fraction"] == chosen["fraction"]:
            lines.append(f"| {point['fraction']:.0%} | {point['log_loss']} | " + " | ".join(f"{r:.1%}" for r in point["reached"]) + " |")
    return [*lines, "", "![cascade](cascade.png)", ""]
