"""Split a token budget between prompt, response A and response B.

Max-min fair ("water-filling"): a component shorter than its share keeps all its tokens and
the unused part flows to the others, instead of the naive fixed third that wastes it. Every
non-empty component gets at least one token whenever the budget allows.
"""

from __future__ import annotations

from collections.abc import Sequence


def allocate(lengths: Sequence[int], budget: int, weights: Sequence[float] | None = None) -> list[int]:
    """Tokens granted to each component; sum <= budget and grant <= length."""
    n = len(lengths)
    weights = list(weights) if weights is not None else [1.0] * n
    if len(weights) != n or any(w <= 0 for w in weights):
        raise ValueError("weights must be positive, one per component")
    grant = [0] * n
    remaining = max(budget, 0)
    active = [i for i in range(n) if lengths[i] > 0]
    while active and remaining > 0:
        total = sum(weights[i] for i in active)
        fits = [i for i in active if lengths[i] - grant[i] <= remaining * weights[i] / total]
        if fits:
            for i in fits:
                remaining -= lengths[i] - grant[i]
                grant[i] = lengths[i]
            active = [i for i in active if i not in fits]
            continue
        # Nobody is satisfied: split what is left by weight (largest remainder), at least 1 each.
        exact = [remaining * weights[i] / total for i in active]
        shares = [int(x) for x in exact]
        order = sorted(range(len(active)), key=lambda k: exact[k] - shares[k], reverse=True)
        for k in order[: remaining - sum(shares)]:
            shares[k] += 1
        for k in range(len(active)):
            while shares[k] == 0 and max(shares) > 1:
                shares[shares.index(max(shares))] -= 1
                shares[k] += 1
        for k, i in enumerate(active):
            grant[i] += shares[k]
        break
    return grant
