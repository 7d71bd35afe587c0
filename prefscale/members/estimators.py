"""Member estimators with a scikit-learn style API, symmetric under swapping A and B.

Each member trains on both orders of every battle (labels swapped with them) and predicts the
mean of the original and the un-swapped swapped prediction, so P(A wins | A, B) equals
P(B wins | B, A) exactly. Models fit the protocol likelihood (protocol_models.py), so
forced-choice battles train through P(winner | not a tie).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from scipy import sparse
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer

from prefscale.data import schema
from prefscale.members.features import battle_features, cell_turns, distinct_cells
from prefscale.protocol_models import SoftmaxRegression, fit_factored
from prefscale.score.tta import swap_flips, unswap_probs


class SwapSymmetricMember:
    """Base class: subclasses turn battles into (X, X_swapped) and fit a three-way model on them."""

    def __init__(self, **params: Any) -> None:
        self.params = params

    def encode(self, battles: pa.Table, fit: bool) -> tuple[Any, Any]:
        raise NotImplementedError

    def fit_model(self, x: Any, labels: np.ndarray, ties: np.ndarray) -> Any:
        raise NotImplementedError

    def fit(self, battles: pa.Table, labels: np.ndarray) -> SwapSymmetricMember:
        x, x_swapped = self.encode(battles, fit=True)
        both = sparse.vstack([x, x_swapped]).tocsr() if sparse.issparse(x) else np.vstack([x, x_swapped])
        ties = np.tile(schema.ties_allowed(battles), 2)
        self.estimator_ = self.fit_model(both, np.vstack([labels, labels[:, schema.SWAP_ORDER]]), ties)
        return self

    def predict_orders(self, battles: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """The single-order predictions on (A, B) and on (B, A), the latter mapped back to A/B."""
        x, x_swapped = self.encode(battles, fit=False)
        return self.estimator_.predict_proba(x), unswap_probs(self.estimator_.predict_proba(x_swapped))

    def predict_proba(self, battles: pa.Table) -> np.ndarray:
        direct, swapped = self.predict_orders(battles)
        return (direct + swapped) / 2


MAX_BINS = 255  # what HistGradientBoosting bins each feature into by default


def quantile_edges(x: np.ndarray, bins: int = MAX_BINS) -> list[np.ndarray]:
    """Per column, the bin thresholds HistGradientBoosting would choose without sample weights."""
    edges = []
    for column in x.T:
        finite = column[~np.isnan(column)]
        distinct = np.unique(finite)
        if len(distinct) <= bins:
            edges.append((distinct[:-1] + distinct[1:]) / 2)
        else:
            edges.append(np.unique(np.percentile(finite, np.linspace(0, 100, bins + 1)[1:-1], method="averaged_inverted_cdf")))
    return edges


def binned(x: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """Each value replaced by its bin's index (NaN stays NaN): at most ``MAX_BINS`` distinct values per column."""
    out = np.empty(x.shape, dtype=np.float32)
    for j, thresholds in enumerate(edges):
        out[:, j] = np.searchsorted(thresholds, x[:, j], side="left")
    out[np.isnan(x)] = np.nan
    return out


class FeatureMember(SwapSymmetricMember):
    """Gradient-boosted trees over length, structure, refusal and overlap features.

    Features are binned here, before the trees see them. Weighted rows (the protocol likelihood
    weighs each row by its label share) make scikit-learn 1.9 choose bin thresholds by weighted
    percentiles, one Python call per threshold and feature: 70% of a fit. These are the same
    unweighted thresholds, computed once."""

    DEFAULTS = {"learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 15, "l2_regularization": 1.0, "min_samples_leaf": 40}

    def encode(self, battles: pa.Table, fit: bool) -> tuple[np.ndarray, np.ndarray]:
        x, x_swapped = battle_features(battles)
        if fit:
            self.edges_ = quantile_edges(np.vstack([x, x_swapped]))
        if getattr(self, "edges_", None) is None:  # a member saved before binning moved here
            return x, x_swapped
        return binned(x, self.edges_), binned(x_swapped, self.edges_)

    def _trees(self) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(**{**self.DEFAULTS, **self.params}, random_state=0)

    def fit_model(self, x: np.ndarray, labels: np.ndarray, ties: np.ndarray) -> Any:
        return fit_factored(self._trees, x, labels, ties)  # trees take no custom loss: a tie model and a winner model


class TfidfMember(SwapSymmetricMember):
    """Logistic regression on TF-IDF(A) - TF-IDF(B), plus their cosine similarity for ties."""

    DEFAULTS = {"C": 0.1, "max_features": 20000, "ngram_max": 2, "min_df": 2}

    def _options(self) -> dict[str, Any]:
        return {**self.DEFAULTS, **self.params}

    def encode(self, battles: pa.Table, fit: bool) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        n = battles.num_rows
        codes, cells = distinct_cells(pa.chunked_array(battles.column(schema.RESPONSE_A).chunks + battles.column(schema.RESPONSE_B).chunks))
        texts = ["\n".join(cell_turns(c)) for c in cells]  # each distinct answer once
        if fit:
            options = self._options()
            self.vectorizer_ = TfidfVectorizer(sublinear_tf=True, max_features=options["max_features"], ngram_range=(1, options["ngram_max"]),
                                               min_df=options["min_df"], dtype=np.float32)
            self.vectorizer_.fit([texts[k] for k in codes])  # document frequencies count every battle's answers
        vectors = self.vectorizer_.transform(texts)
        a, b = vectors[codes[:n]], vectors[codes[n:]]
        cosine = sparse.csr_matrix(np.asarray(a.multiply(b).sum(axis=1), dtype=np.float32))
        return sparse.hstack([a - b, cosine]).tocsr(), sparse.hstack([b - a, cosine]).tocsr()

    def fit_model(self, x: sparse.csr_matrix, labels: np.ndarray, ties: np.ndarray) -> SoftmaxRegression:
        return SoftmaxRegression(C=self._options()["C"], max_iter=2000).fit(x, labels, ties)


MEMBER_KINDS: dict[str, type[SwapSymmetricMember]] = {"features": FeatureMember, "tfidf": TfidfMember}


def make_member(kind: str, params: dict[str, Any] | None = None) -> SwapSymmetricMember:
    return MEMBER_KINDS[kind](**(params or {}))


def fit_predict(kind: str, params: dict[str, Any], battles: pa.Table, train_rows: np.ndarray, test_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit on ``train_rows`` and predict ``test_rows``; the unit of work of one fold (or Tune
    trial). Returns the swap-averaged probabilities and where the two orders' verdicts flip."""
    labels = schema.label_matrix(battles)
    member = make_member(kind, params).fit(battles.take(train_rows), labels[train_rows])
    direct, swapped = member.predict_orders(battles.take(test_rows))
    return (direct + swapped) / 2, swap_flips(direct, swapped)
