"""Stacking: blend search (Powell and Ray Tune), LR stacker, calibrators, nested CV, rules, report."""

import numpy as np
import pyarrow as pa
import pytest
from scipy.special import log_softmax

from prefscale.data import schema
from prefscale.data.schema import SWAP_ORDER
from prefscale.metrics import log_loss
from prefscale.stack.blend import blend_loss, powell_weights
from prefscale.stack.calibration import (
    CALIBRATORS,
    TemperatureCalibrator,
    choose_calibrator,
)
from prefscale.stack.data import StackData
from prefscale.stack.degenerate import DegenerateRules
from prefscale.stack.nested import nested_cv
from prefscale.stack.stackers import LogisticStacker


def synthetic(n: int = 3000, members: int = 3, seed: int = 0) -> StackData:
    """Members that see the true logits through different noise levels; labels drawn from the truth."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, 3)) * 1.5
    truth_probs = np.exp(log_softmax(truth, axis=1))
    labels = np.eye(3)[[rng.choice(3, p=p) for p in truth_probs]]
    logp = np.stack([log_softmax(truth + rng.normal(size=(n, 3)) * (0.5 + m), axis=1) for m in range(members)], axis=1)
    text = [schema.RESPONSE_A, schema.RESPONSE_B]
    battles = pa.table({schema.ID: np.arange(n), **{c: ['["x"]'] * n for c in text}})
    return StackData(np.arange(n), np.arange(n) % 5, labels, logp, [f"m{i}" for i in range(members)], np.full(n, "synthetic", dtype=object),
                     np.ones(n, dtype=bool), battles)


def test_powell_blend_beats_every_member_and_equal_weights():
    data = synthetic()
    weights = powell_weights(data.logp, data.labels)
    blended = blend_loss(weights, data.logp, data.labels)
    assert blended < min(log_loss(data.labels, np.exp(data.logp[:, m])) for m in range(3))
    assert blended <= blend_loss(np.full(3, 1 / 3), data.logp, data.labels)
    assert weights[0] > weights[2]  # the least noisy member gets the most weight


@pytest.mark.slow
def test_ray_tune_weight_search_comes_within_0_001_of_powell(ray_local):
    """At the config default of 250 trials; multivariate TPE lands within 1e-4 on four seeds, so 0.001 is not luck."""
    from prefscale.stack.tune_blend import tune_blend_weights

    data = synthetic()
    powell = blend_loss(powell_weights(data.logp, data.labels), data.logp, data.labels)
    tuned = tune_blend_weights(data.logp, data.labels, samples=250)
    assert tuned["log_loss"] - powell < 0.001


def test_logistic_stacker_is_swap_symmetric():
    data = synthetic()
    stacker = LogisticStacker().fit(data.logp[:2000], data.labels[:2000])
    probs = stacker.predict_proba(data.logp[2000:])
    np.testing.assert_allclose(stacker.predict_proba(data.logp[2000:][:, :, SWAP_ORDER]), probs[:, SWAP_ORDER], atol=1e-9)
    assert log_loss(data.labels[2000:], probs) < log_loss(data.labels[2000:], np.exp(data.logp[2000:, 0]))


@pytest.mark.parametrize("name", ["temperature", "vector", "dirichlet"])
def test_calibrators_repair_overconfidence_on_held_out_rows(name):
    data = synthetic(members=1)
    overconfident = np.exp(log_softmax(data.logp[:, 0] * 2.5, axis=1))
    calibrator = CALIBRATORS[name]().fit(overconfident[:2000], data.labels[:2000])
    assert log_loss(data.labels[2000:], calibrator.predict_proba(overconfident[2000:])) < log_loss(data.labels[2000:], overconfident[2000:]) - 0.05


def test_temperature_recovers_the_sharpening_factor():
    data = synthetic(members=1, n=6000)
    calibrated = np.exp(data.logp[:, 0])
    sharpened = np.exp(log_softmax(data.logp[:, 0] * 2.0, axis=1))
    t_cal = TemperatureCalibrator().fit(calibrated, data.labels).temperature_
    assert TemperatureCalibrator().fit(sharpened, data.labels).temperature_ == pytest.approx(2.0 * t_cal, rel=0.05)


def test_automatic_choice_never_scores_worse_than_no_calibration():
    data = synthetic(members=1)
    probs = np.exp(data.logp[:, 0])
    name, scores = choose_calibrator(probs, data.labels, data.folds, data.ties)
    assert scores[name] <= scores["none"] and set(scores) == set(CALIBRATORS)


def test_nested_cv_never_lets_a_fold_see_its_own_labels():
    data = synthetic()
    before = nested_cv(data, LogisticStacker, "auto", degenerate_rules=False)
    flipped = data.labels.copy()
    fold0 = data.folds == 0
    flipped[fold0] = flipped[fold0][:, [1, 2, 0]]
    after = nested_cv(StackData(data.ids, data.folds, flipped, data.logp, data.members, data.datasets, data.ties, data.battles), LogisticStacker, "auto", False)
    np.testing.assert_allclose(after.final[fold0], before.final[fold0])
    assert not np.allclose(after.final[~fold0], before.final[~fold0])


def test_degenerate_rules_are_fitted_on_data_and_stay_off_when_rare():
    cells = ['["same"]'] * 30 + ['["a"]'] * 30 + ['[""]'] * 3
    other = ['["same"]'] * 30 + ['["b"]'] * 30 + ['["b"]'] * 3
    battles = pa.table({schema.RESPONSE_A: cells, schema.RESPONSE_B: other})
    labels = np.eye(3)[[2] * 27 + [0] * 3 + [0] * 30 + [1] * 3]
    rules = DegenerateRules(min_count=10, smoothing=0.0).fit(battles, labels)
    assert rules.rules_["identical"] == pytest.approx([0.1, 0.0, 0.9])
    assert "a_empty" not in rules.rules_ and rules.counts_["a_empty"] == 3
    applied = rules.apply(battles, np.full((63, 3), 1 / 3))
    assert applied[0] == pytest.approx([0.1, 0.0, 0.9]) and applied[40] == pytest.approx([1 / 3] * 3)
    assert DegenerateRules(enabled=False).fit(battles, labels).rules_ == {}


def test_a_member_missing_battles_is_an_error_not_a_silent_drop(tmp_path):
    from prefscale.artifacts import oof_table
    from prefscale.errors import PrefscaleError
    from prefscale.io import write_table
    from prefscale.layout import RunLayout
    from prefscale.stack.data import load_stack_data

    ids = np.arange(10)
    battles = pa.table({schema.ID: ids, schema.FOLD: pa.array(ids % 2, pa.int8()), **{c: np.full(10, 1 / 3) for c in schema.LABEL_COLUMNS}})
    write_table(battles, tmp_path / "battles.parquet")
    write_table(oof_table(ids, ids % 2, "full", np.full((10, 3), 1 / 3)), tmp_path / "oof" / "full.parquet")
    write_table(oof_table(ids[:7], ids[:7] % 2, "part", np.full((7, 3), 1 / 3)), tmp_path / "oof" / "part.parquet")
    assert load_stack_data(RunLayout(str(tmp_path)), ["full"]).logp.shape == (10, 1, 3)
    with pytest.raises(PrefscaleError, match="lacks 3 of 10 battles"):
        load_stack_data(RunLayout(str(tmp_path)), ["full", "part"])


def test_out_of_fold_prior_never_uses_its_own_folds_labels():
    from prefscale.metrics import out_of_fold_prior

    labels = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    folds = np.array([0, 0, 1, 1])
    probs = out_of_fold_prior(labels, folds)
    assert np.allclose(probs[:2], [0, 0.5, 0.5]) and np.allclose(probs[2:], [1.0, 0, 0])


def test_per_source_stacker_learns_each_sources_ties_and_falls_back_to_pooled_weights():
    data = synthetic(n=4000)
    sources = np.where(np.arange(4000) % 2 == 0, "many_ties", "few_ties").astype(object)
    labels = data.labels.copy()
    rng = np.random.default_rng(3)
    retie = (sources == "many_ties") & (rng.random(4000) < 0.4)  # one source's judges say tie far more often
    labels[retie] = [0.0, 0.0, 1.0]
    train, test = np.arange(4000) < 3000, np.arange(4000) >= 3000
    ties = np.ones(4000, dtype=bool)
    pooled = LogisticStacker(per_source=False).fit(data.logp[train], labels[train], ties[train], sources[train])
    per_source = LogisticStacker().fit(data.logp[train], labels[train], ties[train], sources[train])
    for source in ("many_ties", "few_ties"):
        rows = test & (sources == source)
        assert log_loss(labels[rows], per_source.predict_proba(data.logp[rows], sources[rows])) < \
            log_loss(labels[rows], pooled.predict_proba(data.logp[rows], sources[rows])) - 0.01
    unseen = np.full(test.sum(), "new_source", dtype=object)
    np.testing.assert_allclose(per_source.predict_proba(data.logp[test], unseen), per_source.predict_proba(data.logp[test]))


def test_a_stacker_saved_before_per_source_stacking_still_predicts():
    data = synthetic(n=600)
    stacker = LogisticStacker(per_source=False).fit(data.logp, data.labels)
    expected = stacker.predict_proba(data.logp)
    del stacker.sources_  # what a run from before the attribute existed loads
    np.testing.assert_allclose(stacker.predict_proba(data.logp, data.datasets), expected)


def test_unseen_source_weight_keeps_an_ensemble_that_transfers_and_drops_one_that_does_not():
    """The mixture weight follows left-out sources: near 1 where the ensemble knows the winner on
    them, near 0 where it is confidently wrong as often as right (sources that disagree)."""
    from prefscale.stack.transfer import fit_unseen_weight, mix_with_prior

    rng = np.random.default_rng(0)
    prior = np.array([0.4, 0.4, 0.2])

    def source(informative: bool, n: int = 2000):
        labels = np.eye(3)[rng.choice(3, n, p=prior)]
        guess = labels.argmax(1) if informative else rng.choice(2, n)
        probs = np.full((n, 3), 0.05)
        probs[np.arange(n), guess] = 0.9
        return probs, prior, labels, np.ones(n, dtype=bool)

    assert fit_unseen_weight([source(True), source(True)]) > 0.9
    noisy = [source(False), source(False)]
    weight = fit_unseen_weight(noisy)
    assert weight < 0.1
    probs, _, labels, ties = noisy[0]
    assert log_loss(labels, mix_with_prior(probs, prior, weight), ties) < log_loss(labels, probs, ties) - 0.3


def test_stacker_fits_run_on_one_blas_thread_and_give_the_threads_back(monkeypatch):
    """The driver's small fits limit BLAS to one thread (prefscale/blas.py) only while they run,
    and the limited fit is the same model as the unlimited one, up to the optimiser's tolerance."""
    from threadpoolctl import threadpool_info

    import prefscale.protocol_models as protocol_models
    from prefscale.protocol_models import SoftmaxRegression

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    data = synthetic(n=1500)
    x, labels = data.logp.reshape(len(data.labels), -1), data.labels
    before, inside, minimize = blas_threads(), [], protocol_models.minimize

    def recording_minimize(*args, **kwargs):
        inside.extend(blas_threads())
        return minimize(*args, **kwargs)

    monkeypatch.setattr(protocol_models, "minimize", recording_minimize)
    limited = SoftmaxRegression().fit(x, labels)
    assert inside and set(inside) == {1}
    assert blas_threads() == before
    unlimited = SoftmaxRegression.fit.__wrapped__(SoftmaxRegression(), x, labels)
    assert np.abs(limited.predict_proba(x) - unlimited.predict_proba(x)).max() < 1e-2
