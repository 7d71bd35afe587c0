"""Style control: strengths that remain once answer length and markdown are accounted for.

Chatbot Arena's style control fits the Bradley-Terry model with style covariates beside the
model strengths; each strength is then what a model wins by substance, and the covariates'
coefficients say how much style alone moves a verdict. Here the model is Davidson's with ties
(``leaderboard.py``) and per battle the style difference enters the winners' log-odds:

    s_a = theta_a + f . beta / 2,   s_b = theta_b - f . beta / 2,   tie = log nu + (theta_a + theta_b) / 2

so a tie's rate does not depend on style. The covariates ``f`` are, for each feature, the
difference of A's and B's value over their sum (Arena's normalisation), divided by its standard
deviation over the battles: answer length (characters), markdown headers, list items and bold
spans. A feature with no variance is dropped and named. ``strengths=False`` fits beta alone (no
model names needed): how much a set of verdicts (human labels, or a member's predictions) leans
on style.

Battles enter one by one (a style difference is per battle, so battles cannot be summed per
pair as the plain fit does); a bootstrap over groups is a reweighting, warm-started at the fit.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.optimize import minimize

from prefscale.blas import one_blas_thread
from prefscale.leaderboard import PRIOR_PRECISION

# A line start in plain text, or inside a JSON-encoded list of turns (the battle schema's form).
_LINE = r'(?:^|\n|\\n|\[")'
STYLE_FEATURES = {
    "length": None,  # characters
    "headers": _LINE + r"#{1,6} ",
    "list_items": _LINE + r"[ \t]*(?:[-*+]|[0-9]+\.) ",
    "bold": r"\*\*[^*\n]+?\*\*",
}


def answer_style(texts: pa.Array) -> np.ndarray:
    """(answers, features) counts: characters, headers, list items and bold spans of each answer."""
    texts = pc.fill_null(texts.cast(pa.string()), "")
    columns = [pc.utf8_length(texts) if pattern is None else pc.count_substring_regex(texts, pattern) for pattern in STYLE_FEATURES.values()]
    return np.stack([np.asarray(c.to_numpy(zero_copy_only=False), dtype=np.float64) for c in columns], axis=1)


def style_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Arena's normalised difference per feature: (a - b) / (a + b), 0 where both are 0."""
    total = a + b
    return np.divide(a - b, total, out=np.zeros_like(total), where=total > 0)


def standardized(differences: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Covariates scaled to unit standard deviation, the features kept, and those dropped (no variance)."""
    scale = differences.std(axis=0)
    kept = scale > 1e-9
    return differences[:, kept] / scale[kept], [n for n, k in zip(names, kept, strict=True) if k], \
        [n for n, k in zip(names, kept, strict=True) if not k]


def _negative_log_likelihood(params: np.ndarray, first: np.ndarray, second: np.ndarray, outcomes: np.ndarray, covariates: np.ndarray,
                             weights: np.ndarray, players: int) -> tuple[float, np.ndarray]:
    theta, beta, log_nu = params[:players], params[players:-1], params[-1]
    shift = 0.5 * covariates @ beta
    sa, sb = theta[first] + shift, theta[second] - shift
    tie = log_nu + 0.5 * (theta[first] + theta[second])
    top = np.maximum(np.maximum(sa, sb), tie)
    ea, eb, et = np.exp(sa - top), np.exp(sb - top), np.exp(tie - top)
    z = ea + eb + et
    w = outcomes * weights[:, None]
    wa, wb, wt = w[:, 0], w[:, 1], w[:, 2]
    total = wa + wb + wt
    log_z = top + np.log(z)
    loglik = (wa * (sa - log_z) + wb * (sb - log_z) + wt * (tie - log_z)).sum()
    pa_, pb_, pt = ea / z, eb / z, et / z
    ga = wa - total * pa_  # d loglik / d s_a (ties' share handled through the tie term below)
    gb = wb - total * pb_
    gt = wt - total * pt
    grad_theta = np.bincount(first, ga + 0.5 * gt, minlength=players) + np.bincount(second, gb + 0.5 * gt, minlength=players)
    grad_beta = covariates.T @ (0.5 * (ga - gb))
    scale = max(total.sum(), 1.0)
    loss = (-loglik + 0.5 * PRIOR_PRECISION * ((theta ** 2).sum() + (beta ** 2).sum())) / scale
    grad = np.concatenate([(-grad_theta + PRIOR_PRECISION * theta) / scale, (-grad_beta + PRIOR_PRECISION * beta) / scale, [-gt.sum() / scale]])
    return float(loss), grad


def fit_style(first: np.ndarray, second: np.ndarray, outcomes: np.ndarray, covariates: np.ndarray, players: int,
              weights: np.ndarray | None = None, start: np.ndarray | None = None, strengths: bool = True) -> np.ndarray:
    """[centred log-strengths (players), style coefficients, log nu]. ``strengths=False``: every
    player equal, beta alone (``players`` is then ignored)."""
    if not strengths:
        first = second = np.zeros(len(outcomes), dtype=np.int64)
        players = 1
    weights = np.ones(len(outcomes)) if weights is None else weights
    x0 = np.zeros(players + covariates.shape[1] + 1) if start is None else start
    result = minimize(_negative_log_likelihood, x0, args=(first, second, outcomes, covariates, weights, players), jac=True, method="L-BFGS-B")
    params = result.x.copy()
    params[:players] -= params[:players].mean()
    return params


@one_blas_thread
def style_fit(first: np.ndarray, second: np.ndarray, outcomes: np.ndarray, covariates: np.ndarray, players: int, groups: np.ndarray,
              bootstrap: int = 200, seed: int = 0, strengths: bool = True) -> dict:
    """The style-controlled fit with bootstrap intervals over groups: theta, beta and their 2.5/97.5 percentiles."""
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = int(group_index.max()) + 1 if len(group_index) else 0
    params = fit_style(first, second, outcomes, covariates, players, strengths=strengths)
    rng = np.random.default_rng(seed)
    draws = np.empty((bootstrap, len(params)))
    for b in range(bootstrap):
        counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(np.float64)
        draws[b] = fit_style(first, second, outcomes, covariates, players, counts[group_index], start=params, strengths=strengths)
    low, high = (np.percentile(draws, q, axis=0) if bootstrap else params for q in (2.5, 97.5))
    k = covariates.shape[1]
    p = len(params) - k - 1
    return {"theta": params[:p], "theta_low": low[:p], "theta_high": high[:p], "beta": params[p:p + k], "beta_low": low[p:p + k],
            "beta_high": high[p:p + k], "nu": float(np.exp(params[-1]))}


@one_blas_thread
def style_reliance(covariates: np.ndarray, verdicts: dict[str, np.ndarray], groups: np.ndarray, features: list[str], reference: str,
                   bootstrap: int = 100, seed: int = 0) -> dict:
    """How much each set of verdicts (human labels, a member's or the ensemble's OOF probabilities)
    leans on style: the style-only fit's coefficients, and each set's coefficient over the
    ``reference``'s (the humans'), with intervals from one bootstrap over groups shared by every set
    (so the ratio's interval is the spread of ratios of paired draws)."""
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = int(group_index.max()) + 1
    zeros = np.zeros(len(groups), dtype=np.int64)
    fits = {name: fit_style(zeros, zeros, outcomes, covariates, 1, strengths=False) for name, outcomes in verdicts.items()}
    k = covariates.shape[1]
    draws = {name: np.empty((bootstrap, k)) for name in verdicts}
    rng = np.random.default_rng(seed)
    for b in range(bootstrap):
        weights = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(np.float64)[group_index]
        for name, outcomes in verdicts.items():
            draws[name][b] = fit_style(zeros, zeros, outcomes, covariates, 1, weights, start=fits[name], strengths=False)[1:1 + k]
    found = {}
    for name in verdicts:
        beta = fits[name][1:1 + k]
        ratio = draws[name] / np.where(np.abs(draws[reference]) > 1e-9, draws[reference], np.nan)
        found[name] = {feature: {"coefficient": round(float(beta[j]), 4), "low": round(float(np.percentile(draws[name][:, j], 2.5)), 4),
                                 "high": round(float(np.percentile(draws[name][:, j], 97.5)), 4),
                                 "ratio_to_reference": round(float(beta[j] / fits[reference][1 + j]), 3) if abs(fits[reference][1 + j]) > 1e-9 else None,
                                 "ratio_low": round(float(np.nanpercentile(ratio[:, j], 2.5)), 3),
                                 "ratio_high": round(float(np.nanpercentile(ratio[:, j], 97.5)), 3)}
                       for j, feature in enumerate(features)}
    return {"reference": reference, "bootstrap": bootstrap, "groups": n_groups, "battles": len(groups), "sets": found}
