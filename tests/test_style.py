"""Style control: on generated battles with known strengths and a known style effect, the style-
controlled Davidson fit recovers the strengths where the plain fit does not; with no style
effect the two agree. The likelihood's gradient is checked against finite differences."""

import numpy as np
import pyarrow as pa
import pytest
from scipy.optimize import check_grad

from prefscale.leaderboard import leaderboard
from prefscale.style import _negative_log_likelihood, answer_style, standardized, style_differences, style_fit

PLAYERS = 24


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def generated(beta: float, battles: int = 30_000, seed: int = 0):
    """Battles between PLAYERS chatbots whose verbosity is unrelated to their strength; a battle's
    verdict follows Davidson's model with ``beta`` times its standardized length difference."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 0.6, PLAYERS)
    verbosity = rng.normal(0, 1.0, PLAYERS)
    first = rng.integers(0, PLAYERS, battles)
    second = (first + rng.integers(1, PLAYERS, battles)) % PLAYERS
    length = np.exp(6 + 0.8 * verbosity[:, None] + 0.3 * rng.normal(size=(PLAYERS, battles)))
    lengths_a, lengths_b = length[first, np.arange(battles)], length[second, np.arange(battles)]
    covariates, kept, _ = standardized(style_differences(lengths_a, lengths_b)[:, None], ["length"])
    sa = theta[first] + 0.5 * beta * covariates[:, 0]
    sb = theta[second] - 0.5 * beta * covariates[:, 0]
    tie = np.log(0.4) + 0.5 * (theta[first] + theta[second])
    logits = np.stack([sa, sb, tie], axis=1)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    outcomes = np.eye(3)[[rng.choice(3, p=p) for p in probs]]
    groups = rng.integers(0, 400, battles)
    return theta, first, second, outcomes, covariates, groups


@pytest.mark.parametrize("beta", [1.0, 0.0], ids=["a style effect", "no style effect"])
def test_the_style_controlled_fit_recovers_strengths_the_plain_fit_misses(beta):
    theta, first, second, outcomes, covariates, groups = generated(beta)
    names = [f"m{k}" for k in range(PLAYERS)]
    plain = leaderboard(first, second, outcomes, names, groups, bootstrap=0)["theta"]
    styled = style_fit(first, second, outcomes, covariates, PLAYERS, groups, bootstrap=30)
    assert _spearman(styled["theta"], theta) >= 0.95
    assert styled["beta_low"][0] <= beta <= styled["beta_high"][0], styled
    if beta:
        assert _spearman(plain, theta) < 0.9  # the plain ranking is mostly "who writes more"
    else:
        assert _spearman(plain, styled["theta"]) >= 0.98  # nothing to control for: both agree


def test_style_alone_measures_how_much_verdicts_lean_on_length():
    _, first, second, outcomes, covariates, groups = generated(1.0, battles=10_000, seed=1)
    alone = style_fit(first, second, outcomes, covariates, PLAYERS, groups, bootstrap=20, strengths=False)
    assert 0.3 < alone["beta"][0] < 1.5 and alone["beta_low"][0] > 0  # strengths unknown, the length effect still shows


def test_the_gradient_matches_finite_differences():
    _, first, second, outcomes, covariates, _ = generated(0.5, battles=500, seed=2)
    covariates = np.concatenate([covariates, np.random.default_rng(3).normal(size=(500, 2))], axis=1)
    weights = np.random.default_rng(4).integers(0, 3, 500).astype(float)
    x = np.random.default_rng(5).normal(0, 0.3, PLAYERS + 3 + 1)
    fun = lambda p: _negative_log_likelihood(p, first, second, outcomes, covariates, weights, PLAYERS)[0]  # noqa: E731
    jac = lambda p: _negative_log_likelihood(p, first, second, outcomes, covariates, weights, PLAYERS)[1]  # noqa: E731
    assert check_grad(fun, jac, x) < 1e-5


def test_answer_features_and_their_edge_cases():
    texts = pa.array(['["# Title\\n- one\\n- two\\n**bold** text"]', "plain words", "", None, "1. first\n2. second\n## Head"])
    counts = answer_style(texts)
    assert counts[:, 0].tolist()[:3] == [len('["# Title\\n- one\\n- two\\n**bold** text"]'), 11, 0]
    assert counts[0, 1:].tolist() == [1, 2, 1] and counts[4, 1:].tolist() == [1, 2, 0] and counts[2].tolist() == counts[3].tolist() == [0, 0, 0, 0]
    differences = style_differences(counts[[0, 2]], counts[[1, 3]])  # empty answers on both sides: difference 0, not NaN
    assert np.isfinite(differences).all() and differences[1].tolist() == [0, 0, 0, 0]
    kept, names, dropped = standardized(np.stack([np.arange(6.0), np.zeros(6)], axis=1), ["length", "bold"])
    assert names == ["length"] and dropped == ["bold"] and kept.shape == (6, 1)


def test_a_member_that_leans_on_length_twice_as_hard_as_the_humans_shows_a_ratio_near_two():
    from prefscale.style import style_reliance

    _, first, second, outcomes, covariates, groups = generated(0.8, battles=8_000, seed=6)
    leaning = np.stack([0.5 * 1.6 * covariates[:, 0], -0.5 * 1.6 * covariates[:, 0], np.full(len(groups), np.log(0.4))], axis=1)
    member = np.exp(leaning) / np.exp(leaning).sum(axis=1, keepdims=True)  # probabilities with twice the humans' length effect
    found = style_reliance(covariates, {"humans": outcomes, "member": member}, groups, ["length"], "humans", bootstrap=30)["sets"]
    ratio = found["member"]["length"]
    assert found["humans"]["length"]["ratio_to_reference"] == 1.0
    assert 1.5 < ratio["ratio_to_reference"] < 2.7 and ratio["ratio_low"] > 1.0, ratio


def test_a_dumps_style_is_read_per_distinct_answer_and_equals_the_per_battle_count(tmp_path):
    """battle_style reads the answers dictionary-encoded (each distinct answer counted once, no
    readahead: the whole dump peaked at 0.6 GiB instead of 5.5); a null answer counts as empty."""
    import pyarrow.parquet as pq

    from prefscale.leaderboard_files import battle_style

    answers = ["short", "## Title\n- one\n- two **bold**", "a much longer plain answer " * 5, ""]
    rng = np.random.default_rng(0)
    a = [answers[i] for i in rng.integers(0, 4, 300)]
    b = [answers[i] for i in rng.integers(0, 4, 300)]
    b[7] = None
    table = pa.table({"response_a": a, "response_b": b})
    pq.write_table(table, tmp_path / "battles.parquet", row_group_size=64)
    expected = style_differences(answer_style(table.column("response_a").combine_chunks()), answer_style(table.column("response_b").combine_chunks()))
    np.testing.assert_array_equal(battle_style(str(tmp_path / "battles.parquet")), expected)
