"""The cascade's routing and its fit on OOF (the streaming job itself runs in test_pipeline.py)."""

import numpy as np
import pytest

from prefscale.cascade.fit import fit_cascade, most_uncertain, route, uncertainty
from prefscale.config import CascadeConfig
from prefscale.metrics import log_loss


def battles(n: int = 4000, hard_share: float = 0.2, seed: int = 0):
    """Labels, an expensive stage right on every battle, and a cheap one as sure on most but
    near-uniform on a ``hard_share`` of them."""
    rng = np.random.default_rng(seed)
    labels = np.eye(3)[rng.integers(0, 3, n)]
    expensive = 0.15 + 0.55 * labels
    cheap = expensive.copy()
    hard = rng.random(n) < hard_share
    noise = rng.uniform(-0.02, 0.02, (int(hard.sum()), 3))
    cheap[hard] = (1 / 3 + noise) / (1 / 3 + noise).sum(axis=1, keepdims=True)
    return labels, cheap, expensive, hard


@pytest.mark.parametrize("kind", ["entropy", "margin"])
def test_route_sends_the_most_uncertain_share_at_every_boundary_and_thresholds_replay_it(kind):
    rng = np.random.default_rng(1)
    stages = [rng.dirichlet([2, 2, 2], 5000) for _ in range(3)]
    final, decided, thresholds = route(stages, kind, fraction=0.2)
    assert np.isclose((decided >= 1).mean(), 0.2, atol=1e-3) and np.isclose((decided >= 2).mean(), 0.04, atol=1e-3)
    sent = decided >= 1
    assert uncertainty(stages[0][sent], kind).min() >= uncertainty(stages[0][~sent], kind).max()  # the least sure went on
    for k in range(3):
        np.testing.assert_array_equal(final[decided == k], stages[k][decided == k])
    replayed = route(stages, kind, thresholds=thresholds)
    np.testing.assert_array_equal(replayed[1], decided)
    assert (route(stages, kind, fraction=0.0)[1] == 0).all() and route(stages, kind, thresholds=[None, None])[2] == [None, None]


def test_a_budget_holds_when_a_stage_gives_every_battle_the_same_uncertainty():
    """A collapsed model (one prediction for all, as int8 made a tiny one-fold student): the share
    sent on is still the budget, not everything tied at the cut."""
    flat = np.full((100, 3), [0.4, 0.35, 0.25])
    _, decided, _ = route([flat, flat, flat], "entropy", fraction=0.3)
    assert np.bincount(decided, minlength=3).tolist() == [70, 21, 9]
    assert most_uncertain(np.array([0.2, 0.9, 0.9, 0.9, 0.1]), 0.4).tolist() == [False, True, True, False, False]


def test_fit_chooses_the_cheapest_share_within_tolerance_of_the_last_stage():
    labels, cheap, expensive, hard = battles()
    fit = fit_cascade({"cheap": cheap, "expensive": expensive}, labels, np.ones(len(labels), dtype=bool), CascadeConfig(stages=["cheap", "expensive"]))
    chosen = fit["chosen"]
    assert chosen["met"] and chosen["log_loss"] <= fit["stage_alone_log_loss"]["expensive"] + 0.005
    assert abs(chosen["sent_past_first"] - hard.mean()) < 0.02  # the hard battles, and hardly any others
    assert fit["stage_alone_log_loss"]["cheap"] > fit["stage_alone_log_loss"]["expensive"] + 0.1
    by_share = {point["fraction"]: point["log_loss"] for point in fit["curve"]}
    assert by_share[0.0] == fit["stage_alone_log_loss"]["cheap"] and by_share[1.0] == fit["stage_alone_log_loss"]["expensive"]
    final = route([cheap, expensive], "entropy", thresholds=chosen["thresholds"])[0]
    assert np.isclose(log_loss(labels, final), chosen["log_loss"], atol=1e-5)  # the thresholds reproduce the chosen point


def test_fit_says_when_the_cap_binds_before_the_tolerance_is_met():
    labels, cheap, expensive, hard = battles(hard_share=0.4)
    fit = fit_cascade({"cheap": cheap, "expensive": expensive}, labels, np.ones(len(labels), dtype=bool),
                      CascadeConfig(stages=["cheap", "expensive"], max_sent=0.25))
    assert not fit["chosen"]["met"] and fit["chosen"]["fraction"] <= 0.25
    assert fit["chosen"]["log_loss"] > fit["target_log_loss"]


def test_plan_keeps_a_members_probabilities_only_while_a_later_stage_reads_them():
    from prefscale.cascade.run import plan_stages
    from prefscale.config import load_config

    config = load_config("configs/local.yaml")
    config = config.model_copy(update={"cascade": config.cascade.model_copy(update={"stages": ["features", "cheap_ensemble", "student", "ensemble"]})})
    stacked = [*config.members, *config.train]
    plans = plan_stages(config, stacked, [0.5, 0.5, 0.5], None)
    assert [p.carried for p in plans] == [("features",), tuple(config.members), ("student",), ()]
    assert plans[-1].last and plans[-1].threshold is None and plans[1].members == tuple(config.members)
