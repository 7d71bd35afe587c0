"""Which chatbot is better, by how much, how sure: Bradley-Terry strengths with ties from battles.

Davidson's model (1970): with strengths pi_i and a tie parameter nu,
    P(A wins) = pi_a / Z,  P(B wins) = pi_b / Z,  P(tie) = nu * sqrt(pi_a * pi_b) / Z,
    Z = pi_a + pi_b + nu * sqrt(pi_a * pi_b).
Ties are a third outcome with their own rate, not half a win each: a judge's (or a model's)
habit of calling ties then moves nu, not the ranking, and the fitted model predicts a tie share
like the one observed. It is fitted on expected outcomes: each battle contributes its predicted
probabilities (or its human label) as weights on the three outcomes, never an argmax.

Battles are summed per ordered model pair and per group (an instruction), so a fit costs the
same for 1.6M battles as for 1,600, and a bootstrap over groups is a reweighting of those sums.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from prefscale.blas import one_blas_thread

ELO_SCALE = 400 / np.log(10)  # strengths shown on the familiar Elo scale (1000 = the mean chatbot)
# A weak Gaussian prior on log-strengths (precision 0.1, about 0.1 pseudo-battles' weight): it
# pins the free overall level and keeps a model with a handful of battles (or only wins) finite;
# with thousands of battles per model it moves nothing.
PRIOR_PRECISION = 0.1


def pair_outcomes(first: np.ndarray, second: np.ndarray, outcomes: np.ndarray, players: int,
                  groups: np.ndarray | None = None, n_groups: int = 1) -> np.ndarray:
    """Outcome weights summed per (group, first, second): shape (groups, players, players, 3)."""
    groups = np.zeros(len(first), dtype=np.int64) if groups is None else groups
    sums = np.zeros((n_groups, players, players, 3))
    np.add.at(sums, (groups, first, second), outcomes)
    return sums


def _negative_log_likelihood(params: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Davidson's expected log-likelihood over (players, players, 3) weights, and its gradient."""
    players = weights.shape[0]
    theta, log_nu = params[:players], params[players]
    sa, sb = theta[:, None], theta[None, :]
    tie = log_nu + 0.5 * (sa + sb)
    top = np.maximum(np.maximum(sa, sb), tie)
    ea, eb, et = np.exp(sa - top), np.exp(sb - top), np.exp(tie - top)
    z = ea + eb + et
    pa, pb, pt = ea / z, eb / z, et / z
    wa, wb, wt = weights[..., 0], weights[..., 1], weights[..., 2]
    total = wa + wb + wt
    log_z = top + np.log(z)
    loglik = (wa * (sa - log_z) + wb * (sb - log_z) + wt * (tie - log_z)).sum()
    d_first = wa + 0.5 * wt - total * (pa + 0.5 * pt)  # d loglik / d theta of the first-listed player
    d_second = wb + 0.5 * wt - total * (pb + 0.5 * pt)
    grad_theta = d_first.sum(axis=1) + d_second.sum(axis=0)
    grad_nu = (wt - total * pt).sum()
    scale = max(total.sum(), 1.0)
    loss = (-loglik + 0.5 * PRIOR_PRECISION * (theta ** 2).sum()) / scale
    grad = np.concatenate([(-grad_theta + PRIOR_PRECISION * theta) / scale, [-grad_nu / scale]])
    return float(loss), grad


def fit_davidson(weights: np.ndarray, start: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(centred log-strengths, tie parameter nu) maximising the expected likelihood."""
    players = weights.shape[0]
    x0 = np.zeros(players + 1) if start is None else start
    result = minimize(_negative_log_likelihood, x0, args=(weights,), jac=True, method="L-BFGS-B")
    theta = result.x[:players]
    return theta - theta.mean(), float(np.exp(result.x[players]))


@one_blas_thread
def leaderboard(first: np.ndarray, second: np.ndarray, outcomes: np.ndarray, names: list[str], groups: np.ndarray,
                bootstrap: int = 200, seed: int = 0) -> dict:
    """Ratings with bootstrap intervals (groups resampled with replacement), the tie parameter,
    and the expected win-rate matrix (ties count half) as dicts and arrays."""
    group_ids, group_index = np.unique(groups, return_inverse=True)
    sums = pair_outcomes(first, second, outcomes, len(names), group_index, len(group_ids))
    pooled = sums.sum(axis=0)
    theta, nu = fit_davidson(pooled)
    rng = np.random.default_rng(seed)
    draws = np.empty((bootstrap, len(names)))
    start = np.concatenate([theta, [np.log(nu)]])
    for b in range(bootstrap):
        counts = np.bincount(rng.integers(0, len(group_ids), len(group_ids)), minlength=len(group_ids))
        draws[b] = fit_davidson(np.tensordot(counts, sums, axes=1), start)[0]
    both = pooled + pooled.transpose(1, 0, 2)[..., [1, 0, 2]]  # every battle from each side's view
    played = both.sum(axis=2)
    win_rate = np.where(played > 0, (both[..., 0] + 0.5 * both[..., 2]) / np.maximum(played, 1e-12), np.nan)
    low, high = (np.percentile(draws, q, axis=0) if bootstrap else theta for q in (2.5, 97.5))
    return {"names": names, "theta": theta, "low": low, "high": high, "nu": nu, "win_rate": win_rate, "battles": played.sum(axis=1),
            "bootstrap": bootstrap, "groups": len(group_ids)}
