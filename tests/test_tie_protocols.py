"""Label protocols: forced-choice battles train and score through P(winner | not a tie)."""

import numpy as np
import pyarrow as pa
import pytest
from scipy.optimize import minimize
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression

from prefscale.config import ValidationConfig
from prefscale.data import schema
from prefscale.data.validate import Validator
from prefscale.metrics import class_prior, log_loss, out_of_fold_prior, without_ties
from prefscale.protocol_models import SoftmaxRegression, fit_factored


def mixed_labels(allowed: int = 600, forced: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Allowed battles at 40/30/30 (a/b/tie); forced-choice ones at 55/45, no ties."""
    rng = np.random.default_rng(seed)
    a = np.eye(3)[rng.choice(3, size=allowed, p=[0.4, 0.3, 0.3])]
    f = np.eye(3)[rng.choice(2, size=forced, p=[0.55, 0.45])]
    return np.vstack([a, f]), np.r_[np.ones(allowed, bool), np.zeros(forced, bool)]


def test_forced_choice_rows_score_the_winner_given_no_tie():
    probs = np.array([[0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])
    labels = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    ties = np.array([False, True])
    expected = -(np.log(0.2 / 0.4) + np.log(0.2)) / 2
    assert log_loss(labels, probs, ties) == pytest.approx(expected)
    assert without_ties(probs, ties)[0].tolist() == [0.5, 0.5, 0.0]
    assert log_loss(labels, probs) != pytest.approx(expected)  # the protocol changes the score


def test_class_prior_maximises_the_protocol_likelihood():
    labels, ties = mixed_labels()
    prior = class_prior(labels, ties)
    best = minimize(lambda z: log_loss(labels, np.broadcast_to(softmax(z), labels.shape), ties), np.zeros(3), method="Nelder-Mead",
                    options={"xatol": 1e-8, "fatol": 1e-12})
    np.testing.assert_allclose(prior, softmax(best.x), atol=2e-3)
    assert prior[2] == pytest.approx(labels[ties, 2].mean())  # ties from battles that allowed them only
    assert labels[:, 2].mean() == pytest.approx(prior[2] / 2)  # the pooled mean halves it
    folds = np.arange(len(labels)) % 4
    assert out_of_fold_prior(labels, folds, ties)[0, 2] == pytest.approx(labels[(folds != 0) & ties, 2].mean())


def test_factored_classifier_learns_ties_only_where_they_were_possible():
    labels, ties = mixed_labels()
    x = np.random.default_rng(1).normal(size=(len(labels), 2))  # uninformative features
    model = fit_factored(lambda: LogisticRegression(C=1.0), x, labels, ties)
    probs = model.predict_proba(x)
    assert probs[:, 2].mean() == pytest.approx(0.3, abs=0.04)
    pooled = fit_factored(lambda: LogisticRegression(C=1.0), x, labels, None).predict_proba(x)
    assert pooled[:, 2].mean() < 0.2
    assert log_loss(labels, probs, ties) < log_loss(labels, pooled, ties)


def test_softmax_regression_is_scikit_learns_on_tie_allowed_data_and_learns_ties_only_where_possible():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1200, 4))
    truth = softmax(x @ rng.normal(size=(4, 3)), axis=1)
    labels = np.eye(3)[[rng.choice(3, p=p) for p in truth]]
    ours = SoftmaxRegression(C=0.5).fit(x, labels).predict_proba(x)
    theirs = LogisticRegression(C=0.5, max_iter=2000).fit(x, labels.argmax(1)).predict_proba(x)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)

    mixed, ties = mixed_labels()
    noise = rng.normal(size=(len(mixed), 2))
    model = SoftmaxRegression().fit(noise, mixed, ties)
    assert model.predict_proba(noise)[:, 2].mean() == pytest.approx(0.3, abs=0.04)
    pooled = SoftmaxRegression().fit(noise, mixed)
    assert log_loss(mixed, model.predict_proba(noise), ties) < log_loss(mixed, pooled.predict_proba(noise), ties)


def test_neural_loss_ignores_the_tie_logit_on_forced_choice_rows():
    import torch

    from prefscale.train.losses import soft_cross_entropy

    logits = torch.tensor([[0.5, -0.2, 1.0], [0.1, 0.3, -0.4]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ties = torch.tensor([False, True])
    loss = soft_cross_entropy(logits, labels, ties)
    loss.backward()
    assert logits.grad[0, 2] == 0 and logits.grad[1, 2] != 0
    probs = torch.softmax(logits, -1).detach().numpy()
    assert float(loss.detach()) == pytest.approx(log_loss(labels.numpy(), probs, ties.numpy()), rel=1e-6)


def _battle(battle_id: int, source: str | None, label: tuple[int, int, int], ties: str | None = None) -> dict:
    row = {schema.ID: battle_id, schema.PROMPT: '["q"]', schema.RESPONSE_A: '["a"]', schema.RESPONSE_B: '["b"]',
           **dict(zip(schema.LABEL_COLUMNS, label, strict=True)), schema.SOURCE: source, schema.TIES: ties}
    return row


def test_validation_assigns_protocols_by_source_and_rejects_contradictions():
    rows = [_battle(1, "hh_rlhf_harmless_test", (1, 0, 0)), _battle(2, None, (0, 0, 1)), _battle(3, "hh_rlhf_harmless_test", (0, 0, 1)),
            _battle(4, "llmeval2", (0, 1, 0), ties="none"), _battle(5, "llmeval2", (0, 1, 0), ties="sometimes")]
    clean, rejects = Validator(ValidationConfig()).validate_batch(pa.RecordBatch.from_pylist(rows))
    assert dict(zip(clean.column(schema.ID).to_pylist(), clean.column(schema.TIES).to_pylist(), strict=True)) == {1: "none", 2: "allowed", 4: "none"}
    assert dict(zip(rejects.column(schema.ID).to_pylist(), rejects.column(schema.REJECT_REASON).to_pylist(), strict=True)) == {
        3: "tie_in_forced_choice", 5: "bad_ties"}
    assert schema.ties_allowed(clean).tolist() == [False, True, False]
    stated = Validator(ValidationConfig(ties={}, default_ties="none")).validate_batch(pa.RecordBatch.from_pylist(rows[1:2]))[1]
    assert stated.column(schema.REJECT_REASON).to_pylist() == ["tie_in_forced_choice"]  # `predict --ties none` on a tie label
